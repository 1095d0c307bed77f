"""The troubleshooting advice of fine-tuning posts, computed from the run: each finding with evidence and advice.

Inputs are the run's own records (log events, data profile, final metrics, recipe), so `bertfit doctor RUN`
gives the same answer later as `bertfit train` gave at the end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from bertfit.config import Config
from bertfit.tasks import task_for

# Thresholds, named so the card can cite them.
OVERFIT_RISE = 0.20  # validation loss this far above its minimum ...
CHANCE_SHARE = 0.85  # training loss at or above this share of ln(C) means 'not learning'
NEAR_MAJORITY = 0.02  # validation accuracy within this of the majority rate
COLLAPSE_SHARE = 0.95  # one class taking this share of predictions
HIGH_LR, LOW_LR = 1e-4, 5e-6
FLAT_LOSS = 0.05  # training loss moved less than 5% from first to last window
UNDERFIT_ACCURACY = 0.75
IMBALANCE_RATIO, LOW_RECALL = 3.0, 0.5
LEAKAGE_SHARE = 0.005
TRUNCATION_SHARE = 0.05
PADDING_SHARE = 0.30
SMALL_EVAL = 2000
FP16_SCALER_SKIPS = 5  # skipped fp16 steps tolerated (or 1% of steps) as loss-scale calibration
LOW_MFU = 0.05


@dataclass
class Finding:
    id: str
    severity: str  # "error", "warning" or "info"
    title: str
    evidence: str
    advice: str


def _series(evals: list[dict], key: str) -> list[tuple[int, float]]:
    return [(e["step"], e["metrics"][key]) for e in evals if isinstance(e["metrics"].get(key), (int, float))]


def _train_losses(events: list[dict]) -> list[tuple[int, float]]:
    """A non-finite loss is written to log.jsonl as null; it is read back as NaN."""
    points = [(e["step"], _number(e["loss"])) for e in events if e["event"] == "train"]
    evals = [(e["step"], e["train_loss"]) for e in events if e["event"] == "eval" and e.get("train_loss") is not None]
    return points if len(points) >= len(evals) else evals


def _number(value: float | None) -> float:
    return float("nan") if value is None else value


def _smoothed(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Moving average over a fifth of the windows: single small windows are too noisy to judge a trend."""
    width = max(1, len(points) // 5)
    return [
        (points[i][0], sum(v for _, v in points[i + 1 - width : i + 1]) / width) for i in range(width - 1, len(points))
    ]


def diagnose(events: list[dict], profile: dict | None, summary: dict | None, cfg: Config) -> list[Finding]:
    """`cfg` is the run's resolved recipe. A problem two rules see is reported once, by the first."""
    evals = [e for e in events if e["event"] == "eval"]
    task = task_for(cfg)
    findings: list[Finding] = []
    for rule in (
        _non_finite,
        _overfitting,
        _not_learning,
        _collapse,
        _learning_rate_too_low,
        _underfitting,
        _metric_noise,
        _imbalance,
        _leakage,
        _truncation,
        _slow,
    ):
        found = rule(events, evals, profile or {}, summary or {}, cfg, task)
        if found and found.id not in {f.id for f in findings}:
            findings.append(found)
    return findings


def as_dicts(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]


# ---------------------------------------------------------------- training dynamics


def _non_finite(events, evals, profile, summary, cfg, task) -> Finding | None:
    bad = [e for e in events if e["event"] == "bad_step"]
    losses = [v for _, v in _train_losses(events)] + [v for _, v in _series(evals, "loss")]
    finite_losses = all(math.isfinite(v) for v in losses)
    if not bad and finite_losses:
        return None
    diverged = any(e["event"] == "diverged" for e in events)
    # fp16's GradScaler skips a step each time it lowers the loss scale, mostly early on: a few skips are how it
    # calibrates, not a fault.
    steps = max((e["step"] for e in events if e["event"] in ("train", "eval")), default=0)
    if cfg.precision == "fp16" and not diverged and finite_losses and len(bad) <= max(FP16_SCALER_SKIPS, 0.01 * steps):
        return None
    first = bad[0]["step"] if bad else None
    return Finding(
        "non_finite",
        "error",
        "NaN/inf appeared in training",
        f"{len(bad)} step(s) with non-finite loss or gradients"
        + (f", first at step {first}" if first else "")
        + ("; the run stopped" if diverged else "; those updates were skipped"),
        f"lower the learning rate (now {cfg.lr:g}), keep gradient clipping on, and prefer bf16 or fp32 over fp16",
    )


def _overfitting(events, evals, profile, summary, cfg, task) -> Finding | None:
    losses = _series(evals, "loss")
    if len(losses) < 3:
        return None
    best_step, best = min(losses, key=lambda p: p[1])
    last_step, last = losses[-1]
    if last < best * (1 + OVERFIT_RISE) or last_step == best_step:
        return None
    train = _train_losses(events)
    at_best = [v for s, v in train if s <= best_step]
    after = [v for s, v in train if s > best_step]
    if not at_best or not after or after[-1] >= at_best[-1]:
        return None  # training loss rose too: that is instability, not overfitting
    kept = summary.get("kept_step")
    metric = summary.get("metric_for_best", "the chosen metric")
    kept_text = (
        f"the kept checkpoint (step {kept}) is the best by {metric}"
        if kept == summary.get("best_step") and kept is not None
        else f"the kept weights are from step {kept}, not the best by {metric}"
    )
    return Finding(
        "overfitting",
        "warning",
        "Overfitting: validation loss rose while training loss kept falling",
        f"validation loss {best:.4f} at step {best_step} → {last:.4f} at step {last_step} "
        f"(+{last / best - 1:.0%}); training loss {at_best[-1]:.4f} → {after[-1]:.4f}; {kept_text}",
        "stop earlier (early_stopping: 2-3 evaluations, keep_best: true), train fewer epochs, or add "
        "weight decay (0.01) / more data",
    )


def _not_learning(events, evals, profile, summary, cfg, task) -> Finding | None:
    chance = task.chance_loss()
    train = _train_losses(events)
    if chance is None or not train or not evals:
        return None
    classes = len(cfg.label_names)
    train = _smoothed(train)
    final_loss = train[-1][1]
    majority = profile.get("splits", {}).get("validation", {}).get("majority_rate")
    accuracies = [v for _, v in _series(evals, "accuracy")]
    near_chance = final_loss >= CHANCE_SHARE * chance
    near_majority = majority is not None and accuracies and max(accuracies) <= majority + NEAR_MAJORITY
    rising = len(train) >= 3 and train[-1][1] > 1.5 * min(v for _, v in train) and train[-1][1] > 0.5 * chance
    if not (near_chance or near_majority or rising):
        return None
    lr = cfg.lr
    evidence = f"training loss {final_loss:.4f} at step {train[-1][0]} vs ln({classes}) = {chance:.4f} (chance)"
    if accuracies:
        evidence += f"; validation accuracy {min(accuracies):.4f}–{max(accuracies):.4f}"
    if majority is not None:
        evidence += f" vs majority-class rate {majority:.4f}"
    if rising:
        evidence += f"; training loss rose from a minimum of {min(v for _, v in train):.4f}"
    if lr >= HIGH_LR:
        return Finding(
            "lr_too_high",
            "error",
            "Not learning: the learning rate is too high",
            evidence,
            f"lr {lr:g} is above the 1e-5–1e-4 range that fine-tuning pretrained encoders tolerates; "
            "use 2e-5 to 5e-5 with a linear schedule and 6-10% warmup",
        )
    if lr <= LOW_LR:
        return Finding(
            "lr_too_low",
            "warning",
            "Not learning: the learning rate is too low",
            evidence,
            f"lr {lr:g} barely moves the weights; use 2e-5 to 5e-5",
        )
    return Finding(
        "not_learning",
        "warning",
        "Not learning: the model stays at chance",
        evidence,
        "check that labels match texts (inspect), try lr 2e-5–5e-5 with warmup, and train longer",
    )


def _collapse(events, evals, profile, summary, cfg, task) -> Finding | None:
    matrix = summary.get("validation", {}).get("confusion_matrix")
    names = cfg.label_names or []
    if not matrix or len(matrix) < 2:
        return None
    predicted = [sum(row[j] for row in matrix) for j in range(len(matrix))]
    total = sum(predicted)
    top = max(range(len(predicted)), key=predicted.__getitem__)
    true_share = sum(matrix[top]) / total if total else 0
    if not total or predicted[top] / total < COLLAPSE_SHARE or true_share >= 0.8:
        return None
    return Finding(
        "collapse",
        "error",
        "Collapse to one class",
        f"{predicted[top] / total:.1%} of validation predictions are '{names[top] if top < len(names) else top}'"
        f", which is {true_share:.1%} of the true labels",
        "lower the learning rate, check class balance (inspect) and consider class weights or resampling",
    )


def _learning_rate_too_low(events, evals, profile, summary, cfg, task) -> Finding | None:
    train = _smoothed(_train_losses(events))
    if len(train) < 3 or cfg.lr > LOW_LR * 4:
        return None
    first, last = train[0][1], train[-1][1]
    if first <= 0 or (first - last) / first >= FLAT_LOSS:
        return None
    return Finding(
        "lr_too_low",
        "warning",
        "Learning rate too low: the training loss barely moves",
        f"training loss {first:.4f} → {last:.4f} ({(first - last) / first:.1%}) over {train[-1][0]} steps "
        f"at lr {cfg.lr:g}",
        "raise the learning rate to 2e-5–5e-5",
    )


def _underfitting(events, evals, profile, summary, cfg, task) -> Finding | None:
    with_accuracy = [e for e in evals if e.get("train_accuracy") is not None]
    if not with_accuracy:
        return None
    final = with_accuracy[-1]["train_accuracy"]
    accuracies = _series(evals, "accuracy")
    still_improving = len(accuracies) >= 2 and accuracies[-1][1] >= max(v for _, v in accuracies)
    majority = profile.get("splits", {}).get("train", {}).get("majority_rate", 0)
    if final >= UNDERFIT_ACCURACY or final <= majority + NEAR_MAJORITY or not still_improving:
        return None  # at chance is 'not learning', reported by its own rule
    return Finding(
        "underfitting",
        "warning",
        "Underfitting: training accuracy is still low at the end",
        f"training accuracy {final:.4f} over the last evaluation window; validation accuracy was still "
        f"improving at the last evaluation ({accuracies[-1][1]:.4f} at step {accuracies[-1][0]})",
        "train longer (more epochs or max_steps), or raise the learning rate within 2e-5–1e-4",
    )


def _metric_noise(events, evals, profile, summary, cfg, task) -> Finding | None:
    metric = summary.get("metric_for_best", "accuracy")
    values = _series(evals, metric)
    n = profile.get("splits", {}).get("validation", {}).get("rows")
    if metric not in ("accuracy",) or len(values) < 2 or not n or n >= SMALL_EVAL:
        return None
    ranked = sorted((v for _, v in values), reverse=True)
    best, runner_up = ranked[0], ranked[1]
    half_width = 1.96 * math.sqrt(max(best * (1 - best), 1e-12) / n)
    if best - runner_up >= half_width:
        return None
    return Finding(
        "metric_noise",
        "info",
        "Validation set too small to rank these checkpoints",
        f"{metric} {best:.4f} ± {half_width:.4f} (95% binomial interval, n = {n}); the best beat the "
        f"runner-up by {best - runner_up:.4f}",
        "treat differences below the interval as noise: evaluate on a larger split, or compare several seeds",
    )


# ---------------------------------------------------------------- data


def _imbalance(events, evals, profile, summary, cfg, task) -> Finding | None:
    train = profile.get("splits", {}).get("train", {})
    matrix = summary.get("validation", {}).get("confusion_matrix")
    names = cfg.label_names or []
    if train.get("imbalance_ratio", 1) < IMBALANCE_RATIO or not matrix:
        return None
    recalls = [row[i] / sum(row) if sum(row) else 1.0 for i, row in enumerate(matrix)]
    worst = min(range(len(recalls)), key=recalls.__getitem__)
    if recalls[worst] >= LOW_RECALL:
        return None
    return Finding(
        "imbalance",
        "warning",
        "Class imbalance with low minority recall",
        f"training labels {train.get('labels')} (ratio {train['imbalance_ratio']:.1f}); validation recall of "
        f"'{names[worst] if worst < len(names) else worst}' is {recalls[worst]:.2f}",
        "resample or weight the classes, and choose the checkpoint by macro F1 (metric_for_best: f1_macro)",
    )


def _leakage(events, evals, profile, summary, cfg, task) -> Finding | None:
    leaks = {k: v for k, v in profile.get("leakage", {}).items() if v["share"] >= LEAKAGE_SHARE}
    if not leaks:
        return None
    parts = [f"{v['normalised']:,} of {k} ({v['share']:.1%}; {v['exact']:,} exact)" for k, v in leaks.items()]
    return Finding(
        "leakage",
        "warning",
        "Evaluation examples also appear in training",
        "texts duplicated from train: " + "; ".join(parts),
        "deduplicate across splits (`bertfit inspect` lists them) before trusting the scores",
    )


def _truncation(events, evals, profile, summary, cfg, task) -> Finding | None:
    tokens = profile.get("splits", {}).get("train", {}).get("tokens")
    if not tokens or tokens["truncated_share"] < TRUNCATION_SHARE:
        return None
    longer = tokens["max_length"] < 512
    advice = (
        f"raise max_length (now {tokens['max_length']}, p95 is {tokens['percentiles']['p95']})"
        if longer
        else "keep the start and end of long texts with --truncation head+tail (Sun et al. 2019)"
    )
    if cfg.truncation == "head+tail" and not longer:
        return None
    return Finding(
        "truncation",
        "warning",
        "Heavy truncation",
        f"{tokens['truncated_share']:.1%} of training examples are longer than {tokens['max_length']} tokens "
        f"(p95 {tokens['percentiles']['p95']}, max {tokens['max']})",
        advice,
    )


# ---------------------------------------------------------------- speed


def _slow(events, evals, profile, summary, cfg, task) -> Finding | None:
    train = summary.get("train", {})
    if not train.get("train_seconds"):
        return None
    reasons, advice = [], []
    if train.get("padding_ratio", 0) > PADDING_SHARE:
        reasons.append(f"{train['padding_ratio']:.0%} of the tokens computed are padding")
        if cfg.padding != "bucket":
            advice.append("use --padding bucket (length-grouped batches)")
        elif cfg.compile:
            advice.append("compiled runs pad to a grid of lengths; for very short texts try --no-compile")
        else:
            advice.append("lengths vary widely inside batches: lower max_length or use a larger dataset per bucket")
    eval_seconds = sum(e["metrics"].get("runtime", 0) for e in evals)
    if eval_seconds > train["train_seconds"]:
        reasons.append(f"evaluation took {eval_seconds:.0f} s against {train['train_seconds']:.0f} s of training")
        advice.append("evaluate less often (eval_every) or on a subset (max_eval_samples), with a larger eval batch")
    mfu = train.get("mfu")
    if mfu is not None and mfu < LOW_MFU:
        reasons.append(f"model FLOP utilisation is {mfu:.1%} of the GPU's peak")
        advice.append("use bf16, a larger batch, --padding bucket and torch.compile")
    if not reasons:
        return None
    return Finding("slow", "warning", "Slow training", "; ".join(reasons), "; ".join(advice))
