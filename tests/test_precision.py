"""bf16 on the CPUs that do it fast: chosen by `precision: auto` only there, as accurate as fp32, resumable."""

import json

import pytest
import torch
from conftest import SAMPLES, run_cli, sample_run_args

from bertfit.engine import device, evaluation


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")]
)
def test_auto_picks_bf16_on_cpu_only_where_the_cpu_has_it(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert device.resolve_precision("auto", cpu) == expected
    assert device.resolve_precision("fp32", cpu) == "fp32"  # forced fp32 stays fp32
    assert device.resolve_precision("bf16", cpu) == "bf16"


def test_bf16_and_fp32_losses_agree_on_a_fixed_batch(tiny_bert_no_dropout, minilm_tokenizer):
    import pandas as pd

    from bertfit.models import load_model
    from bertfit.tasks import build_task

    frame = pd.read_csv(SAMPLES / "sst2_200.csv").head(32)
    task = build_task("classification", ["sentence"], "label", ["0", "1"], 64, "head", ())
    features = task.encode(frame, minilm_tokenizer)
    batch = task.collate(features, list(range(32)), minilm_tokenizer.pad_token_id)
    labels = batch.pop("labels")
    torch.manual_seed(0)
    model = load_model(tiny_bert_no_dropout, task.auto_model, task.head_config()).eval()
    losses = {}
    for precision in ("fp32", "bf16"):
        with device.autocast(torch.device("cpu"), precision):
            logits = model(**batch).logits
        losses[precision] = task.loss_sum(logits, labels).item() / len(labels)
        assert logits.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)
    assert next(model.parameters()).dtype == torch.float32  # fp32 master weights


@pytest.mark.slow  # training subprocesses
def test_a_bf16_cpu_run_resumes_bit_exactly(tiny_bert, tmp_path):
    from conftest import assert_resumes_bit_exactly, recipe_args

    whole = assert_resumes_bit_exactly(lambda out: recipe_args(tiny_bert, out) + ["--precision", "bf16"], tmp_path)
    assert "precision: bf16" in (whole / "recipe.yaml").read_text()
    assert "mixed_precision_training: Native AMP (bf16" in (whole / "README.md").read_text()


def test_predict_and_eval_use_the_runs_precision(tiny_bert, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = sample_run_args(
        tiny_bert,
        out,
        "--batch-size",
        32,
        "--max-steps",
        2,
        "--precision",
        "bf16",
    )
    assert run_cli(args, capsys)[0] == 0
    seen = []
    real = device.autocast

    def spy(where, precision):
        seen.append(precision)
        return real(where, precision)

    monkeypatch.setattr(evaluation, "autocast", spy)  # the one evaluation path, used by eval and predict
    code, stdout, _ = run_cli(["eval", out, "--data", SAMPLES / "sst2_200.csv", "--split", "train"], capsys)
    assert code == 0 and 0 <= json.loads(stdout)["accuracy"] <= 1 and seen and set(seen) == {"bf16"}
    seen.clear()
    code, stdout, _ = run_cli(["predict", out, "--text", "a fine film"], capsys)
    assert code == 0 and json.loads(stdout)["label"] in ("0", "1") and set(seen) == {"bf16"}
    seen.clear()
    code, _, _ = run_cli(["predict", out, "--text", "a fine film", "--precision", "fp32"], capsys)
    assert code == 0 and set(seen) == {"fp32"}  # asked for: scored in fp32 beside the bf16 default
