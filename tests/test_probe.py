"""The frozen-probe baseline: what the pretrained encoder already knows, beside every fine-tuned model."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLES, run_cli, sample_run_args

from bertfit import models
from bertfit.config import Config
from bertfit.report.diagnose import diagnose
from bertfit.runfiles import DataProfile, RunMetrics, parse_event


def test_the_pooling_is_the_one_the_encoder_was_trained_with(tiny_bert):
    # sentence-transformers: modules.json says so, and that all-MiniLM-L6-v2 ends in a Normalize module
    assert models.pooling(models.resolve_model("minilm")) == models.Pooling("mean", normalize=True)
    assert models.pooling(tiny_bert) == models.pooling("no/such-model") == models.Pooling("cls", normalize=False)


@pytest.mark.slow
def test_the_probe_on_minilm_knows_sentiment_before_any_training(minilm_tokenizer):
    """A logistic regression on minilm's mean-pooled embeddings of 180 SST-2 sentences is far above chance on the
    rest: the baseline a fine-tuned model has to beat."""
    import torch

    from bertfit.engine.probe import embed, frozen_probe
    from bertfit.tasks import build_task

    frame = pd.read_csv(SAMPLES / "sst2_200.csv")
    task = build_task("classification", ["sentence"], "label", ["0", "1"], 64)
    path = models.resolve_model("minilm")
    model = models.load_model(path, task.auto_model, task.head_config())
    features = {
        "train": task.encode(frame.iloc[:150], minilm_tokenizer),
        "validation": task.encode(frame.iloc[150:], minilm_tokenizer),
    }
    device, pad = torch.device("cpu"), minilm_tokenizer.pad_token_id
    pooling = models.pooling(path)
    probe = frozen_probe(model, task, features, device, "fp32", pad, pooling, 42)
    assert probe.metrics.metric("accuracy") > 0.65 and (probe.train_rows, probe.validation_rows) == (150, 50)
    # Pooled per example in the order asked, whatever order the batches ran in.
    some = np.array([3, 0, 7])
    assert np.allclose(
        embed(model, task, features["train"], some, device, "fp32", pad, pooling)[1],
        embed(model, task, features["train"], np.array([0]), device, "fp32", pad, pooling)[0],
        atol=1e-5,
    )
    # Unit length, as sentence-transformers' encode() gives them (the model's Normalize module).
    assert np.allclose(
        np.linalg.norm(embed(model, task, features["train"], some, device, "fp32", pad, pooling), axis=1), 1
    )


def _run(best: float, probe: float, lr: float = 3e-4, steps: int = 500, rows: int = 1000):
    evals = [
        {"event": "eval", "step": steps, "epoch": 4.0, "train_loss": 0.3, "metrics": {"loss": 0.69, "accuracy": best}}
    ]
    summary = {
        "kept_step": steps,
        "best_step": steps,
        "best_metric": best,
        "metric_for_best": "accuracy",
        "train": {"train_seconds": 100.0, "padding_ratio": 0.1},
        "probe": {
            "metrics": {"accuracy": probe},
            "train_rows": rows,
            "validation_rows": 2000,
            "pooling": "mean",
            "estimator": "LogisticRegression",
            "fit_seconds": 3.0,
        },
    }
    profile = {"task": "classification", "splits": {"train": {"rows": rows, "majority_rate": 0.4}}}
    cfg = Config(task="classification", label_names=["negative", "neutral", "positive"], lr=lr, warmup_ratio=0.0)
    return diagnose(
        [parse_event(e) for e in evals], DataProfile.model_validate(profile), RunMetrics.model_validate(summary), cfg
    )


def test_the_doctor_says_when_fine_tuning_does_not_beat_the_frozen_encoder():
    # Seed 003 as bertfit ran it: 1,000 tweets, lr 3e-4, 4 epochs; test accuracy 0.581 against the probe's 0.590.
    (finding,) = [f for f in _run(best=0.581, probe=0.590) if f.id == "below_probe"]
    assert "validation accuracy is 0.5810" in finding.evidence and "scores 0.5900" in finding.evidence
    assert "lower the learning rate (now 0.0003" in finding.advice and "mean-pool" in finding.advice
    assert "below_probe" not in {f.id for f in _run(best=0.74, probe=0.70)}


def test_a_run_reports_its_probe_and_no_probe_turns_it_off(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    code, printed, stderr = run_cli(sample_run_args(tiny_bert, out, "--max-steps", 2), capsys)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["probe"]["estimator"] == "LogisticRegression" and "accuracy" in metrics["probe"]["metrics"]
    assert "loss" not in metrics["probe"]["metrics"]  # only what the probe measured
    assert "Frozen probe" in (out / "results.md").read_text() and "Frozen probe" in (out / "README.md").read_text()
    assert "frozen probe: accuracy" in printed
    assert [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()][:2] == [
        "start",
        "probe",
    ]
    off = tmp_path / "off"
    code, _, stderr = run_cli(sample_run_args(tiny_bert, off, "--max-steps", 2, "--no-probe"), capsys)
    assert code == 0, stderr
    assert "probe" not in json.loads((off / "metrics.json").read_text())
    assert "Frozen probe" not in (off / "README.md").read_text()


def test_runs_of_one_model_on_one_data_set_in_a_process_fit_the_probe_once(tiny_bert, tmp_path, capsys, monkeypatch):
    """A sweep's trials (one process, one model, one data set, other hyperparameters) share the probe; another
    seed draws other examples for it, so it is fitted again."""
    from bertfit.engine import probe

    monkeypatch.setattr(probe, "_FITTED", {})  # what the process's earlier tests fitted
    embedded = []
    real_embed = probe.embed
    monkeypatch.setattr(probe, "embed", lambda *args: embedded.append(1) or real_embed(*args))
    quick = ("--method", "finetune", "--max-steps", 2, "--set", "find_mislabeled=false")
    scores = []
    for number, options in enumerate([("--lr", "1e-4"), ("--lr", "3e-4"), ("--seed", 7)]):
        out = tmp_path / f"trial{number}"
        code, _, err = run_cli(sample_run_args(tiny_bert, out, *quick, *options), capsys)
        assert code == 0, err
        scores.append(json.loads((out / "metrics.json").read_text())["probe"]["metrics"])
        assert len(embedded) == (2 if number < 2 else 4)  # train and validation, embedded once per seed
    assert scores[0] == scores[1]
