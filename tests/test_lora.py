"""LoRA through peft: few trainable parameters, a merged model folder that transformers loads without peft, the
adapter alone on request, and an exact resume."""

import json

import pytest
import torch
from conftest import assert_resumes_bit_exactly, recipe_args, run_cli, sample_run_args
from safetensors.torch import load_file


def lora_args(model, out, *extra):
    return sample_run_args(
        model, out, "--lora", "--max-steps", 6, "--eval-every", 3, "--lr", "1e-3", "--batch-size", 8, *extra
    )


def test_lora_trains_adapters_and_head_only_and_saves_a_plain_model(tiny_bert, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, pipeline

    out = tmp_path / "run"
    code, _, stderr = run_cli(lora_args(tiny_bert, out, "--lora-rank", 4, "--precision", "fp32"), capsys)
    assert code == 0, stderr
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    # tiny BERT: 2 layers × query and value × (A: 32×4 + B: 4×32), plus the classifier (32×2 + 2)
    assert start["trainable_parameters"] == 2 * 2 * (32 * 4 + 4 * 32) + 32 * 2 + 2
    saved = load_file(out / "model.safetensors")
    assert not any("lora" in key for key in saved) and "classifier.weight" in saved  # merged: a plain model
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(saved[query], base.state_dict()[query])  # the adapter's update is in the weights
    key = "bert.encoder.layer.0.attention.self.key.weight"
    assert torch.equal(saved[key], base.state_dict()[key])  # layers LoRA did not adapt are the base model's
    card = (out / "README.md").read_text()
    assert "- lora: rank 4, alpha 16" in card and "- trainable_parameters: 1,090 of" in card
    texts = ["a gripping, funny film", "dull and far too long"]
    code, stdout, _ = run_cli(["predict", out, "--text", texts[0], "--text", texts[1]], capsys)
    ours = [json.loads(line) for line in stdout.strip().splitlines()]
    theirs = pipeline("text-classification", model=str(out))(texts)
    assert [o["label"] for o in ours] == [t["label"] for t in theirs]
    assert [o["score"] for o in ours] == pytest.approx([t["score"] for t in theirs], abs=1e-5)


def test_lora_can_save_the_adapter_alone_and_predicts_as_the_merged_model(tiny_bert, tmp_path, capsys):
    from peft import PeftConfig

    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    assert run_cli(lora_args(tiny_bert, adapter, "--lora-save", "adapter", "--precision", "fp32"), capsys)[0] == 0
    assert run_cli(lora_args(tiny_bert, merged, "--precision", "fp32"), capsys)[0] == 0
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    assert PeftConfig.from_pretrained(str(adapter)).base_model_name_or_path == tiny_bert
    assert "holds the LoRA adapter alone" in (adapter / "README.md").read_text()
    predictions = []
    for out in (adapter, merged):
        code, stdout, stderr = run_cli(["predict", out, "--text", "a gripping film", "--text", "dull"], capsys)
        assert code == 0, stderr
        predictions.append([json.loads(line) for line in stdout.strip().splitlines()])
    assert [p["label"] for p in predictions[0]] == [p["label"] for p in predictions[1]]
    assert [p["score"] for p in predictions[0]] == pytest.approx([p["score"] for p in predictions[1]], abs=1e-5)


def test_lora_targets_that_match_nothing_are_one_line(tiny_bert, tmp_path, capsys):
    code, _, stderr = run_cli(lora_args(tiny_bert, tmp_path / "run", "--lora-targets", "nothing_here"), capsys)
    assert code == 2 and "LoRA cannot adapt this bert model" in stderr and "--lora-targets" in stderr
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.slow  # training subprocesses
def test_a_lora_run_resumes_bit_exactly(tiny_bert, tmp_path):
    assert_resumes_bit_exactly(lambda out: recipe_args(tiny_bert, out) + ["--lora"], tmp_path)
