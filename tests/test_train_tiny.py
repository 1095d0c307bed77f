"""End-to-end runs of the real loop on tiny random BERTs: outputs, determinism, equivalences, user errors."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLES, run_cli, sample_run_args

from bertfit.engine.device import resolve_precision
from bertfit.records import TIMING_FIELDS


def tiny_args(model, out, *extra, data=SAMPLES / "sst2_200.csv"):
    return sample_run_args(
        model,
        out,
        "--batch-size",
        16,
        "--max-steps",
        6,
        "--eval-every",
        3,
        "--lr",
        "1e-3",
        *extra,
        data=data,
    )


def log_without_timings(path: Path) -> list[dict]:
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMING_FIELDS and not k.endswith("_seconds")}
        return value

    return [strip(json.loads(line)) for line in path.read_text().splitlines()]


def test_run_folder_is_complete_and_pipeline_ready(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(tiny_args(tiny_bert, out, "--label-names", "negative,positive"), capsys)
    assert code == 0, stderr
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.json",
        "log.jsonl",
        "recipe.yaml",
        "README.md",
        "results.md",
    ):
        assert (out / name).is_file(), name
    assert "Training Loss |    Epoch |     Step | Validation Loss | Accuracy" in stdout
    recipe = (out / "recipe.yaml").read_text()
    assert (
        "task: classification" in recipe
        and "- sentence" in recipe
        and f"precision: {resolve_precision('auto', torch.device('cpu'))}" in recipe
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["validation"]) >= {"loss", "accuracy", "f1", "precision", "recall"}
    assert metrics["best_step"] in (3, 6) and metrics["train"]["samples_per_second"] > 0
    card = (out / "README.md").read_text()
    assert "optimizer: Adam with betas=(0.9,0.999) and epsilon=1e-08" in card
    assert "lr_scheduler_type: linear" in card and "| Training Loss | Epoch | Step | Validation Loss |" in card
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events.count("eval") == 2 and events[-1] == "end"

    from transformers import pipeline

    classify = pipeline("text-classification", model=str(out))
    assert classify("a fine film")[0]["label"] in ("negative", "positive")
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}


def test_cpu_runs_are_deterministic(tiny_bert, tmp_path, capsys):
    for name in ("a", "b"):
        assert run_cli(tiny_args(tiny_bert, tmp_path / name), capsys)[0] == 0
    first, second = (log_without_timings(tmp_path / n / "log.jsonl") for n in ("a", "b"))
    assert first == second
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_gradient_accumulation_equals_the_larger_batch(tiny_bert_no_dropout, tmp_path, capsys):
    # fp32: the two runs' weights differ in the last bits (another summation order), which bf16 autocast can round
    # to different bf16 values; the equivalence itself is exact arithmetic's, up to float32 rounding.
    base = ["--max-steps", 4, "--eval-every", 2, "--padding", "dynamic", "--precision", "fp32"]
    big = ["train", "--model", tiny_bert_no_dropout, "--data", SAMPLES / "sst2_200.csv", "--lr", "1e-3", *base]
    assert run_cli(big + ["--output", tmp_path / "big", "--batch-size", 16], capsys)[0] == 0
    assert run_cli(big + ["--output", tmp_path / "acc", "--batch-size", 4, "--grad-accum", 4], capsys)[0] == 0
    big_log, acc_log = (log_without_timings(tmp_path / n / "log.jsonl") for n in ("big", "acc"))
    big_evals = [e for e in big_log if e["event"] == "eval"]
    acc_evals = [e for e in acc_log if e["event"] == "eval"]
    for a, b in zip(big_evals, acc_evals):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], rel=1e-5)


def test_best_checkpoint_is_kept_and_early_stopping_stops(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_args(tiny_bert, out, "--early-stopping", 1, "--metric-for-best", "loss", "--lr", "5e-2")
    code, _, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"event": "eval"' in line]
    losses = {e["step"]: e["metrics"]["loss"] for e in evals}
    best_step = min(losses, key=losses.get)  # loss: lower is better
    assert metrics["best_step"] == best_step and metrics["best_metric"] == losses[best_step]
    assert metrics["kept_step"] == best_step and metrics["validation"]["loss"] == losses[best_step]
    last_step = max(losses)
    assert metrics["stop_reason"] == ("early_stopping" if last_step > best_step else None)
    assert (out / "checkpoints" / f"step-{metrics['best_step']:08d}").is_dir()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--precision", "fp16"], "precision fp16 needs a CUDA GPU (no GPU found); use --precision fp32 or bf16"),
        (["--eval-every", 500], "eval_every 500 is larger than the whole run (6 steps)"),
        (["--text-column", "review"], "column 'review' not found in"),
        (["--max-length", 4096], "max_length 4096 is longer than the model accepts (512)"),
        (["--class-weights", "1,2,3"], "class_weights has 3 weights but there are 2 classes (0, 1)"),
        (["--class-weights", "0,1"], "invalid value for 'class_weights': needs one positive weight per class"),
    ],
)
def test_user_errors_are_one_line_exit_2_and_write_nothing(tiny_bert, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    code, _, stderr = run_cli(tiny_args(tiny_bert, out, *extra), capsys)
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_output_folder_not_empty_needs_overwrite_and_overwrite_never_takes_a_users_file(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, stderr = run_cli(tiny_args(tiny_bert, out), capsys)
    assert code == 2 and "is not empty; choose an empty or new folder" in stderr
    code, _, stderr = run_cli(tiny_args(tiny_bert, out, "--overwrite"), capsys)
    assert code == 2 and "holds files bertfit did not write (keep.txt)" in stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert run_cli(tiny_args(tiny_bert, out), capsys)[0] == 0
    code, _, stderr = run_cli(tiny_args(tiny_bert, out), capsys)
    assert code == 2 and "is not empty; pass --overwrite to replace the run in it, or --resume" in stderr
    assert run_cli(tiny_args(tiny_bert, out, "--overwrite"), capsys)[0] == 0


def test_balanced_class_weights_are_resolved_saved_and_shown(tiny_bert, tmp_path, capsys):
    import yaml
    from sklearn.utils.class_weight import compute_class_weight

    from bertfit.data import sources

    out = tmp_path / "run"
    code, _, stderr = run_cli(tiny_args(tiny_bert, out, "--class-weights", "balanced"), capsys)
    assert code == 0, stderr
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    train = sources.load_splits(str(SAMPLES / "sst2_200.csv")).frames["train"]
    carved = sources.choose_splits(
        sources.Splits("sst2_200", {"train": train}, {"train": "f"}), "train", None, None, 42, 0.1, "label"
    )[0].frames["train"]
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=carved["label"].to_numpy())
    assert recipe["class_weights"] == pytest.approx(expected.tolist(), rel=1e-5)
    card = (out / "README.md").read_text()
    assert "- class_weights: 0 " in card and "### Per class (validation)" in card


def test_gradient_checkpointing_recomputes_layers_and_trains_the_same(
    tiny_bert_no_dropout, tmp_path, capsys, monkeypatch
):
    import transformers.modeling_utils as modeling

    calls = []
    checkpoint = modeling.checkpoint
    monkeypatch.setattr(modeling, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    base = ["--max-steps", 4, "--eval-every", 2, "--precision", "fp32", "--batch-size", 8]
    plain, saver = tmp_path / "plain", tmp_path / "checkpointed"
    assert run_cli(sample_run_args(tiny_bert_no_dropout, plain, *base), capsys)[0] == 0
    assert not calls
    assert run_cli(sample_run_args(tiny_bert_no_dropout, saver, *base, "--gradient-checkpointing"), capsys)[0] == 0
    assert "gradient_checkpointing: true" in (saver / "recipe.yaml").read_text()
    assert len(calls) >= 2 * 4  # every layer of every training step
    evals = [
        [e for e in log_without_timings(folder / "log.jsonl") if e["event"] == "eval"] for folder in (plain, saver)
    ]
    for a, b in zip(*evals, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], rel=1e-5)
    assert "- gradient_checkpointing: true" in (saver / "README.md").read_text()


def test_a_device_that_is_not_there_is_one_line(tiny_bert, tmp_path, capsys):
    code, _, stderr = run_cli(tiny_args(tiny_bert, tmp_path / "run", "--device", "cuda"), capsys)
    assert code == 2 and "device 'cuda' is not available on this machine (found: cpu)" in stderr
    assert not (tmp_path / "run").exists()


def test_training_steps_run_in_training_mode_and_evaluation_in_eval_mode(tiny_bert, tmp_path, capsys, monkeypatch):
    """from_pretrained hands back a model in eval mode; training must switch dropout on, evaluation off."""
    from bertfit import models

    modes = []
    load = models.load_model

    def spied(*args, **kwargs):
        model = load(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, _: modes.append((torch.is_grad_enabled(), module.training)))
        return model

    monkeypatch.setattr(models, "load_model", spied)
    assert run_cli(tiny_args(tiny_bert, tmp_path / "run"), capsys)[0] == 0
    training = {mode for grad, mode in modes if grad}
    evaluating = {mode for grad, mode in modes if not grad}
    assert training == {True} and evaluating == {False}


def test_a_model_that_takes_more_than_512_tokens_gets_its_own_maximum(tmp_path, capsys):
    """ModernBERT takes 8,192 positions: bertfit lets it read 1,024 tokens of an IMDB review; BERT stops at 512."""
    import yaml
    from conftest import make_tiny_modernbert

    model = make_tiny_modernbert(tmp_path / "tiny-modernbert")
    out = tmp_path / "run"
    args = ["--max-steps", 2, "--eval-every", 2, "--batch-size", 4, "--max-length", 1024]
    code, _, stderr = run_cli(sample_run_args(model, out, *args, data=SAMPLES / "imdb_100.jsonl"), capsys)
    assert code == 0, stderr
    assert yaml.safe_load((out / "recipe.yaml").read_text())["max_length"] == 1024
    tokens = json.loads((out / "data_profile.json").read_text())["splits"]["train"]["tokens"]
    assert tokens["max"] > 512 and tokens["max_length"] == 1024


def start_event(out: Path) -> dict:
    return json.loads((out / "log.jsonl").read_text().splitlines()[0])


def test_settings_that_cannot_mean_what_they_say_are_replaced_and_said(tiny_bert, tmp_path, capsys):
    """A window stride as long as the window would advance one token at a time; a batch larger than the data is
    the data: the run uses what it can, records it, and says so in the log and the card."""
    out = tmp_path / "run"
    args = sample_run_args(
        tiny_bert, out, "--max-steps", 2, "--truncation", "windows", "--max-length", 32, "--batch-size", 1_000_000_000
    )
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    notes = start_event(out)["notes"]
    recipe = (out / "recipe.yaml").read_text()
    assert "stride 32 is not less than the 30 tokens a window holds at max_length 32" in notes[-2]
    assert "windows overlap by 15 tokens instead" in notes[-2] and "stride: 15" in recipe
    rows = start_event(out)["examples"]["train"]
    assert f"batch_size 1,000,000,000 is larger than the {rows} training examples" in notes[-1]
    assert f"batch_size: {rows}" in recipe and start_event(out)["effective_batch_size"] == rows
    card = (out / "README.md").read_text()
    assert "effective batch" not in card or "1000000000" not in card
    assert "windows overlap by 15 tokens instead" in card


def test_the_start_line_says_what_will_be_scored_and_max_test_samples_caps_it(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(f"sentence {i} is fine,{i % 2}\n" for i in range(60))
    for split in ("train", "validation", "test"):
        (data / f"{split}.csv").write_text("sentence,label\n" + rows)
    code, stdout, stderr = run_cli(
        sample_run_args(tiny_bert, out, "--max-steps", 2, "--max-test-samples", 25, data=data), capsys
    )
    assert code == 0, stderr
    assert (
        "at the end, scoring 25 test examples (25 features) of split 'test' (cap it with max_test_samples, or "
        "skip it with test_split: none)"
    ) in stdout
    assert start_event(out)["examples"]["test"] == 25
    code, stdout, _ = run_cli(
        sample_run_args(tiny_bert, tmp_path / "none", "--max-steps", 2, "--set", "test_split=none", data=data), capsys
    )
    assert (
        code == 0 and "scoring" not in stdout and "test" not in json.loads((tmp_path / "none/metrics.json").read_text())
    )


def test_a_label_with_a_newline_keeps_the_card_whole_and_rare_classes_are_named(tiny_bert, tmp_path, capsys):
    rows = [{"text": f"sentence number {i} here", "label": ["good\nday", "bad | day"][i % 2]} for i in range(40)]
    rows.append({"text": "the odd one", "label": "rare"})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    code, _, stderr = run_cli(
        sample_run_args(tiny_bert, out, "--max-steps", 2, "--task", "classification", data=data), capsys
    )
    assert code == 0, stderr
    card = (out / "README.md").read_text()
    assert "good\\nday" in card and "bad \\| day" in card
    assert not [line for line in card.splitlines() if line.startswith("day")]  # no label broke a line
    tables, block = [], []
    for line in [*card.splitlines(), ""]:
        if line.startswith("|"):
            block.append(len(re.findall(r"(?<!\\)\|", line)))  # cell borders; an escaped bar is text
        elif block:
            tables, block = [*tables, block], []
    assert tables and all(len(set(table)) == 1 for table in tables), tables  # every row as wide as its header
    findings = {f["id"]: f for f in json.loads((out / "diagnosis.json").read_text())["findings"]}
    assert "rare_classes" in findings and "'rare' 1" in findings["rare_classes"]["evidence"]
    profile = json.loads((out / "data_profile.json").read_text())
    assert 1 in [split["rare_classes"].get("rare") for split in profile["splits"].values()]
