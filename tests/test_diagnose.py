"""Doctor flags the seeds' problems and stays silent on healthy runs: synthetic logs, then real runs."""

import json

import pytest
from conftest import run_cli

from bertfit.config import Config
from bertfit.report.diagnose import diagnose as diagnose_run
from bertfit.runfiles import DataProfile, RunMetrics, parse_event

# Fields a log line always has that no rule reads: given here so that the tests' lines are whole lines.
UNREAD = {
    "train": {"epoch": 0.0, "lr": 2e-5, "train_seconds": 0.0},
    "bad_step": {"grad_norm": "nan"},
    "diverged": {"bad_steps": 3},
}


def diagnose(events, profile, summary, recipe):
    """The rules read the run's resolved recipe and its files, checked against their schemas; these tests give the
    fields that matter."""
    return diagnose_run(
        [parse_event({**UNREAD.get(e["event"], {}), **e}) for e in events],
        DataProfile.model_validate({"task": "classification", **profile}) if profile is not None else None,
        RunMetrics.model_validate(summary),
        Config(**recipe),
    )


def evals(rows, **extra):
    return [
        {
            "event": "eval",
            "step": step,
            "epoch": step / 1563,
            "train_loss": train,
            "metrics": {"loss": val, "accuracy": acc},
            **extra,
        }
        for step, train, val, acc in rows
    ]


def ids(findings):
    return [f.id for f in findings]


BINARY = {"task": "classification", "label_names": ["neg", "pos"], "lr": 2e-5}
TRIPLE = {"task": "classification", "label_names": ["negative", "neutral", "positive"], "lr": 2e-5}
BIG_PROFILE = {"splits": {"validation": {"rows": 25000, "majority_rate": 0.5}, "train": {"majority_rate": 0.5}}}


def test_imdb_seed_overfitting_is_named_with_best_step():
    # bert-base-uncased-ft-imdb: validation loss 0.1783 at step 2250 rose to 0.2556 at step 6000.
    rows = [
        (750, 0.3012, 0.2102, 0.9290),
        (1500, 0.2101, 0.1854, 0.9380),
        (2250, 0.1850, 0.1783, 0.9420),
        (3000, 0.1203, 0.1945, 0.9431),
        (3750, 0.0951, 0.2103, 0.9440),
        (4500, 0.0612, 0.2287, 0.9445),
        (5250, 0.0402, 0.2412, 0.9450),
        (6000, 0.0251, 0.2556, 0.9450),
    ]
    summary = {
        "kept_step": 6000,
        "best_step": 5250,
        "metric_for_best": "accuracy",
        "train": {"train_seconds": 3000, "padding_ratio": 0.1},
    }
    findings = diagnose(evals(rows), BIG_PROFILE, summary, BINARY)
    assert ids(findings) == ["overfitting"]
    assert "0.1783 at step 2250 → 0.2556 at step 6000 (+43%)" in findings[0].evidence
    assert "not the best by accuracy" in findings[0].evidence and "early_stopping" in findings[0].advice


def test_tweet_seed_learning_rate_too_high():
    # Horovod_Tweet_Sentiment_1K_4eps: Adam lr 3e-4; validation accuracy 0.52-0.54 on 3 classes after 4 epochs.
    rows = [
        (32, 1.0921, 1.0502, 0.5200),
        (64, 1.0872, 1.0455, 0.5300),
        (96, 1.0856, 1.0431, 0.5400),
        (128, 1.0849, 1.0440, 0.5300),
    ]
    recipe = {"task": "classification", "label_names": ["negative", "neutral", "positive"], "lr": 3e-4}
    profile = {"splits": {"validation": {"rows": 2000, "majority_rate": 0.52}, "train": {"majority_rate": 0.48}}}
    summary = {"metric_for_best": "accuracy", "train": {"train_seconds": 60, "padding_ratio": 0.1}}
    findings = diagnose(evals(rows), profile, summary, recipe)
    assert ids(findings) == ["lr_too_high"] and findings[0].severity == "error"
    assert "ln(3) = 1.0986" in findings[0].evidence and "from 0.0003 to 2e-5–5e-5" in findings[0].advice


def test_healthy_run_has_no_findings():
    rows = [(125, 0.4398, 0.4242, 0.8085), (250, 0.3107, 0.3473, 0.8429)]
    events = [
        {"event": "train", "step": s, "loss": loss} for s, loss in ((50, 0.62), (100, 0.45), (150, 0.38), (200, 0.33))
    ]
    events += evals(rows, train_accuracy=0.86)
    profile = {
        "splits": {
            "validation": {"rows": 872, "majority_rate": 0.509},
            "train": {"majority_rate": 0.56, "imbalance_ratio": 1.26},
        },
        "leakage": {
            "validation": {"exact": 0, "normalised": 2, "share": 0.002, "substantive": 0, "substantive_share": 0.0}
        },
    }
    summary = {
        "metric_for_best": "accuracy",
        "kept_step": 250,
        "best_step": 250,
        "validation": {"confusion_matrix": [[350, 78], [59, 385]]},
        "train": {"train_seconds": 58, "padding_ratio": 0.04},
    }
    assert diagnose(events, profile, summary, {**BINARY, "lr": 5e-5}) == []


def test_data_and_speed_findings():
    profile = {
        "splits": {
            "train": {
                "imbalance_ratio": 9.0,
                "labels": {"neg": 900, "pos": 100},
                "rows": 1000,
                "tokens": {
                    "truncated_share": 0.15,
                    "truncated": 3000,
                    "max_length": 512,
                    "max": 2700,
                    "mean": 300.0,
                    "percentiles": {"p95": 900},
                    "histogram": {"counts": [], "edges": []},
                },
            },
            "validation": {"rows": 5000},
        },
        "leakage": {
            "validation": {"exact": 40, "normalised": 60, "share": 0.012, "substantive": 50, "substantive_share": 0.01}
        },
    }
    summary = {
        "validation": {"confusion_matrix": [[480, 20], [400, 100]]},
        "train": {"train_seconds": 10, "padding_ratio": 0.45},
    }
    events = evals([(10, 0.3, 0.4, 0.58)]) + [{"event": "bad_step", "step": 3}]
    events[0]["metrics"]["runtime"] = 30.0
    found = {f.id: f for f in diagnose(events, profile, summary, BINARY)}
    assert set(found) == {"non_finite", "imbalance", "leakage", "truncation", "slow"}
    assert "recall of 'pos' is 0.20" in found["imbalance"].evidence
    assert "head+tail" in found["truncation"].advice
    assert "45% of the tokens computed are padding" in found["slow"].evidence


def test_collapse_in_a_short_run_says_train_longer_not_change_the_lr():
    # The review's 8-step run: collapse and underfitting together said 'lower the lr' and 'raise it'.
    summary = {
        "metric_for_best": "accuracy",
        "kept_step": 8,
        "validation": {"confusion_matrix": [[50, 0], [48, 2]]},
        "train": {"train_seconds": 10},
    }
    profile = {"splits": {"validation": {"rows": 100, "majority_rate": 0.5}, "train": {"majority_rate": 0.5}}}
    rows = [(4, 0.69, 0.69, 0.50), (8, 0.68, 0.69, 0.52)]
    found = diagnose(evals(rows, train_accuracy=0.6), profile, summary, BINARY)
    assert ids(found) == ["too_short", "collapse"]
    advice = " ".join(f.advice for f in found)
    assert "more steps" in advice and "lower the learning rate" not in advice and "raise" not in advice


def test_metric_noise_only_when_the_kept_checkpoint_beat_the_last_within_noise():
    profile = {"splits": {"validation": {"rows": 872, "majority_rate": 0.5}, "train": {"majority_rate": 0.5}}}
    rows = [(100, 0.4, 0.35, 0.861), (200, 0.3, 0.33, 0.872), (300, 0.25, 0.34, 0.870)]
    kept_best = {"metric_for_best": "accuracy", "kept_step": 200, "validation": {}, "train": {}}
    assert "metric_noise" in ids(diagnose(evals(rows), profile, kept_best, {**BINARY, "lr": 5e-5}))
    kept_last = {**kept_best, "kept_step": 300}  # no choice was made on noise: nothing to say
    assert "metric_noise" not in ids(diagnose(evals(rows), profile, kept_last, {**BINARY, "lr": 5e-5}))
    clear_win = [(100, 0.4, 0.35, 0.80), (200, 0.3, 0.33, 0.872), (300, 0.25, 0.40, 0.83)]
    assert "metric_noise" not in ids(diagnose(evals(clear_win), profile, kept_best, {**BINARY, "lr": 5e-5}))


def test_advice_never_repeats_the_recipe():
    rows = [
        (750, 0.3, 0.21, 0.929),
        (1500, 0.21, 0.185, 0.938),
        (2250, 0.18, 0.178, 0.942),
        (3000, 0.12, 0.195, 0.943),
        (3750, 0.09, 0.23, 0.944),
    ]
    summary = {"kept_step": 2250, "best_step": 2250, "metric_for_best": "accuracy", "train": {}}
    set_already = {**BINARY, "early_stopping": 3, "keep_best": True, "weight_decay": 0.01, "epochs": 3}
    advice = diagnose(evals(rows), BIG_PROFILE, summary, set_already)[0].advice
    assert "early_stopping" not in advice and "keep_best" not in advice and "weight_decay" not in advice
    assert "fewer epochs (now 3)" in advice
    bare = diagnose(evals(rows), BIG_PROFILE, summary, {**BINARY, "keep_best": False})[0].advice
    assert "early_stopping" in bare and "keep_best: true" in bare and "weight_decay 0.01" in bare


@pytest.mark.parametrize("lr", [2e-5, 3e-5, 5e-5])
def test_the_usual_learning_rates_are_never_called_too_low_or_too_high(lr):
    # A long flat run at chance with a usual lr: not an lr problem, whatever else it is.
    train = [{"event": "train", "step": s, "loss": 0.6931} for s in range(50, 1050, 50)]
    rows = [(500, 0.6931, 0.6931, 0.5), (1000, 0.6931, 0.6931, 0.5)]
    profile = {"splits": {"validation": {"rows": 872, "majority_rate": 0.5}, "train": {"majority_rate": 0.5}}}
    found = diagnose(train + evals(rows), profile, {}, {**BINARY, "lr": lr})
    assert ids(found) == ["not_learning"] and f"lr {lr:g} is in the usual range" in found[0].evidence


def test_small_data_memorised():
    # The tweet seed's failure: 64 tweets, training accuracy 0.98, validation 0.48.
    profile = {"splits": {"train": {"rows": 64, "majority_rate": 0.4}, "validation": {"rows": 2000}}}
    rows = [(8, 0.5, 1.05, 0.45), (16, 0.1, 1.2, 0.48)]
    found = diagnose(evals(rows, train_accuracy=0.98), profile, {"train": {}}, {**TRIPLE, "lr": 5e-5})
    small = next(f for f in found if f.id == "small_data")
    assert small.severity == "warning" and "64 training examples" in small.evidence and "0.98" in small.evidence
    healthy = {"splits": {"train": {"rows": 64}, "validation": {"rows": 2000}}}
    assert "small_data" not in ids(diagnose(evals(rows, train_accuracy=0.55), healthy, {"train": {}}, TRIPLE))


def test_failed_token_run_is_named_and_a_good_one_is_not():
    # The review's CoNLL run with the expression recipe: P 0.016, R 0.002, F1 0.003 after 400 sentences.
    token = {"task": "token", "label_names": ["O", "B-PER", "I-PER"], "lr": 2e-5, "epochs": 1}
    failed = {
        "validation": {
            "precision": 0.016,
            "recall": 0.002,
            "f1": 0.003,
            "per_type": {"PER": {"precision": 0.02, "recall": 0.001, "f1": 0.002, "support": 1842}},
        },
        "train": {},
    }
    profile = {"splits": {"train": {"rows": 400}}}
    found = diagnose(evals([(25, 1.2, 1.1, 0.8), (50, 0.9, 0.95, 0.83)]), profile, failed, token)
    low = next(f for f in found if f.id == "low_f1")
    assert low.severity == "error" and "F1 0.003" in low.evidence and "PER F1 0.00" in low.evidence
    assert "train longer (now 50 steps" in low.advice and "add labelled examples (400 now)" in low.advice
    good = {"validation": {"precision": 0.88, "recall": 0.9, "f1": 0.89}, "train": {}}
    assert diagnose(evals([(1000, 0.1, 0.12, 0.98)]), {"splits": {"train": {"rows": 14041}}}, good, token) == []


@pytest.mark.slow
def test_real_runs_lr_too_high_flagged_and_healthy_silent(tmp_path, capsys):
    common = ["train", "--model", "minilm", "--data", "sst2", "--batch-size", 16, "--max-length", 64]
    code, stdout, stderr = run_cli(
        common
        + [
            "--output",
            tmp_path / "hot",
            "--lr",
            "1e-2",
            "--max-train-samples",
            480,
            "--max-steps",
            30,
            "--eval-every",
            15,
            "--no-probe",  # what is checked is the divergence the doctor names
        ],
        capsys,
    )
    assert code == 0, stderr
    hot = {f["id"] for f in json.loads((tmp_path / "hot" / "diagnosis.json").read_text())["findings"]}
    assert hot & {"lr_too_high", "collapse"}, hot
    assert "Not learning" in stdout or "Collapse" in stdout
    code, _, stderr = run_cli(
        common + ["--output", tmp_path / "ok", "--lr", "1e-4", "--max-train-samples", 1920, "--epochs", 1], capsys
    )
    assert code == 0, stderr
    found = json.loads((tmp_path / "ok" / "diagnosis.json").read_text())["findings"]
    assert [f for f in found if f["severity"] != "info"] == []  # information (e.g. mislabeled examples) may remain
    code, printed, _ = run_cli(["doctor", tmp_path / "ok"], capsys)
    assert code == 0 and "no problems found" in printed
    card = (tmp_path / "ok" / "README.md").read_text()
    assert "## Diagnosis" in card and "No problems found" in card and "![loss](plots/loss.png)" in card
    for plot in ("loss", "metrics", "confusion", "lengths"):
        assert (tmp_path / "ok" / "plots" / f"{plot}.png").stat().st_size > 5000


def test_fp16_loss_scale_calibration_is_not_a_fault():
    rows = [(500, 0.40, 0.38, 0.84), (1000, 0.31, 0.33, 0.86)]
    calibration = [{"event": "bad_step", "step": s} for s in (1, 2, 3)]
    fp16 = {**BINARY, "precision": "fp16"}
    assert "non_finite" not in ids(diagnose(evals(rows) + calibration, None, {}, fp16))
    assert "non_finite" in ids(diagnose(evals(rows) + calibration, None, {}, {**BINARY, "precision": "bf16"}))
    many = [{"event": "bad_step", "step": s} for s in range(100, 130)]
    assert "non_finite" in ids(diagnose(evals(rows) + many, None, {}, fp16))
    diverged = calibration + [{"event": "diverged", "step": 3}]
    assert "non_finite" in ids(diagnose(evals(rows) + diverged, None, {}, fp16))


def test_one_problem_is_reported_once():
    # At lr 1e-6 the loss sits at chance and barely moves: two rules see it, the report names it once.
    train = [{"event": "train", "step": s, "loss": 0.6931 - s * 1e-6} for s in range(10, 210, 10)]
    rows = [(100, 0.6931, 0.6930, 0.5), (200, 0.6930, 0.6930, 0.5)]
    profile = {"splits": {"validation": {"rows": 872, "majority_rate": 0.5}, "train": {"majority_rate": 0.5}}}
    found = ids(diagnose(train + evals(rows), profile, {}, {**BINARY, "lr": 1e-6}))
    assert found.count("lr_too_low") == 1


def test_underfitting_says_train_longer_and_raises_only_a_low_lr():
    profile = {"splits": {"train": {"rows": 20000, "majority_rate": 0.5}, "validation": {"rows": 5000}}}
    rows = [(200, 0.62, 0.6, 0.64), (400, 0.58, 0.57, 0.68)]
    found = diagnose(evals(rows, train_accuracy=0.66), profile, {"train": {}}, {**BINARY, "lr": 5e-5, "epochs": 1})
    under = next(f for f in found if f.id == "underfitting")
    assert "train longer (now 400 steps, 1 epochs)" in under.advice and "raise" not in under.advice
    low_lr = diagnose(evals(rows, train_accuracy=0.66), profile, {"train": {}}, {**BINARY, "lr": 1.5e-5})
    assert "raise the learning rate from 1.5e-05" in next(f for f in low_lr if f.id == "underfitting").advice
    fitted = diagnose(evals(rows, train_accuracy=0.9), profile, {"train": {}}, {**BINARY, "lr": 5e-5})
    assert "underfitting" not in ids(fitted)


def test_lr_too_low_needs_a_low_lr_and_a_flat_loss_over_a_real_run():
    train = [{"event": "train", "step": s, "loss": 0.69 - s * 1e-6} for s in range(10, 310, 10)]
    rows = [(150, 0.69, 0.66, 0.62), (300, 0.69, 0.65, 0.64)]
    profile = {"splits": {"validation": {"rows": 872, "majority_rate": 0.5}, "train": {"majority_rate": 0.5}}}
    assert "lr_too_low" in ids(diagnose(train + evals(rows), profile, {}, {**BINARY, "lr": 1e-7}))
    assert "lr_too_low" not in ids(diagnose(train + evals(rows), profile, {}, {**BINARY, "lr": 2e-5}))
    falling = [{"event": "train", "step": s, "loss": 0.69 - s * 1e-3} for s in range(10, 310, 10)]
    assert "lr_too_low" not in ids(diagnose(falling + evals(rows), profile, {}, {**BINARY, "lr": 1e-7}))


def test_mislabeled_is_information_with_examples():
    summary = {
        "train": {},
        "mislabeled": {
            "method": "area under the margin",
            "examined": 4000,
            "flagged": 180,
            "lowest": [
                {
                    "row": 7,
                    "text": "a masterpiece",
                    "label": "negative",
                    "suspected": "positive",
                    "margin": -3.1,
                    "seen": 3,
                }
            ],
        },
    }
    found = next(f for f in diagnose(evals([(100, 0.3, 0.3, 0.9)]), None, summary, BINARY) if f.id == "mislabeled")
    assert (
        found.severity == "info"
        and "180 of 4,000" in found.evidence
        and "'a masterpiece' labelled negative" in (found.evidence)
    )
    assert "mislabeled" not in ids(diagnose(evals([(100, 0.3, 0.3, 0.9)]), None, {"train": {}}, BINARY))


@pytest.mark.parametrize("share, severity", [(0.023, "info"), (0.33, "warning")])
def test_leakage_is_a_warning_only_when_it_can_move_the_scores(share, severity):
    # CoNLL-2003 shares 2.3% of its validation sentences (headlines, table headers) with train; a copied split more.
    leak = {"exact": 0, "normalised": 0, "share": share, "substantive": 1, "substantive_share": share}
    profile = {"splits": {}, "leakage": {"validation": leak}}
    found = next(f for f in diagnose([], profile, {"train": {}}, BINARY) if f.id == "leakage")
    assert found.severity == severity and f"at most {share:.1%}" in found.evidence


START = {
    "event": "start",
    "parameters": 1,
    "task": "classification",
    "dataset": "d",
    "model": "m",
    "examples": {"train": 4000},
    "features": {"train": 4000},
    "steps": 750,
    "steps_per_epoch": 250,
    "effective_batch_size": 16,
    "world_size": 1,
    "device": "cpu",
    "hardware": "CPU",
    "precision": "fp32",
}


@pytest.mark.parametrize(
    "kept, validation_relabelled, severity",
    [(0.85, 0, "info"), (0.81, 0, "warning"), (0.81, 3, "info")],
)
def test_a_run_retrained_with_corrections_is_compared_with_the_run_reviewed(kept, validation_relabelled, severity):
    corrections = {
        "source": "parent/review/decisions.jsonl",
        "relabelled": 200,
        "dropped": 5,
        "reviewed": 260,
        "validation_relabelled": validation_relabelled,
        "parent": "parent",
        "parent_scores": {"accuracy": 0.83},
    }
    summary = {"train": {}, "metric_for_best": "accuracy", "best_metric": kept}
    events = [{**START, "corrections": corrections}, *evals([(750, 0.3, 0.3, kept)])]
    found = next(f for f in diagnose(events, None, summary, BINARY) if f.id == "corrected")
    assert found.severity == severity and "200 training labels corrected" in found.evidence
    assert f"{kept:.4f}, against 0.8300" in found.evidence
    assert ("different labels" in found.evidence) == bool(validation_relabelled)
    assert "corrected" not in ids(diagnose([START, *evals([(750, 0.3, 0.3, kept)])], None, summary, BINARY))
