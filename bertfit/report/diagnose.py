"""The troubleshooting advice of fine-tuning posts, computed from the run: each finding with evidence and advice.

Inputs are the run's own records (log events, data profile, final metrics, recipe), so `bertfit doctor RUN`
gives the same answer later as `bertfit train` gave at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bertfit.config import SETFIT_AUTO_ROWS, Config
from bertfit.records import pooled
from bertfit.runfiles import BadStep, DataProfile, Diverged, Eval, Events, Finding, RunMetrics, Scores, Train
from bertfit.tasks import LOWER_IS_BETTER, task_for

# Thresholds, named so the card can cite them.
OVERFIT_RISE = 0.20  # validation loss this far above its minimum ...
CHANCE_SHARE = 0.85  # training loss at or above this share of ln(C) means 'not learning'
NEAR_MAJORITY = 0.02  # validation accuracy within this of the majority rate
COLLAPSE_SHARE = 0.95  # one class taking this share of predictions


@dataclass(frozen=True)
class LearningRates:
    """Outside low..high a learning rate is rarely right; `good` is what recipes use (up to `good_high`)."""

    low: float
    high: float
    good: str
    tolerated: str
    good_high: float


# Full fine-tuning of a pretrained encoder (the seeds' recipes and fine-tuning posts), and LoRA, whose adapters start
# at zero and take rates about ten times higher (the LoRA paper's GLUE runs: 2e-4 to 5e-4).
FULL_LR = LearningRates(1e-5, 1e-4, "2e-5–5e-5", "1e-5–1e-4", 5e-5)
LORA_LR = LearningRates(5e-5, 3e-3, "2e-4–1e-3", "5e-5–3e-3", 1e-3)


def rates(cfg) -> LearningRates:
    return LORA_LR if cfg.lora else FULL_LR


SHORT_RUN = 100  # optimizer steps: fewer are too few to judge a learning rate by
FLAT_LOSS = 0.05  # training loss moved less than 5% from first to last window
UNDERFIT_ACCURACY = 0.75
SMALL_TRAIN, MEMORISED_GAP = 2000, 0.20  # training examples; training minus validation accuracy
LOW_F1 = 0.5  # entity (or positive-class) F1 below this is a failed run
IMBALANCE_RATIO, LOW_RECALL = 3.0, 0.5
LEAKAGE_SHARE, LEAKAGE_WARNING = 0.005, 0.05  # shared with train: worth knowing; worth distrusting the scores
TRUNCATION_SHARE = 0.05
PADDING_SHARE = 0.30
SLOW_EVAL_SECONDS = 60  # evaluation shorter than this is never worth a warning, however short the training
SMALL_EVAL = 2000
FP16_SCALER_SKIPS = 5  # skipped fp16 steps tolerated (or 1% of steps) as loss-scale calibration
LOW_MFU = 0.05


def _series(evals: list[Eval], key: str) -> list[tuple[int, float]]:
    return [(e.step, value) for e in evals if (value := e.metrics.metric(key)) is not None]


def _train_losses(events: Events) -> list[tuple[int, float]]:
    """A non-finite loss is written to log.jsonl as null; it is read back as NaN."""
    points = [(e.step, _number(e.loss)) for e in events.of(Train)]
    evals = [(e.step, e.train_loss) for e in events.evals if e.train_loss is not None]
    return points if len(points) >= len(evals) else evals


def _number(value: float | None) -> float:
    return float("nan") if value is None else value


def _smoothed(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Moving average over a fifth of the windows: single small windows are too noisy to judge a trend."""
    width = max(1, len(points) // 5)
    return [
        (points[i][0], sum(v for _, v in points[i + 1 - width : i + 1]) / width) for i in range(width - 1, len(points))
    ]


# A finding that explains another makes it redundant (and its advice could contradict): collapse to one class or a
# model at chance is not also 'underfitting' or 'low F1'.
SUPERSEDED_BY = {
    "underfitting": {"collapse", "lr_too_high", "lr_too_low", "not_learning", "too_short"},
    "low_f1": {"collapse", "lr_too_high", "lr_too_low", "not_learning", "non_finite"},
    "collapse": {"lr_too_high", "non_finite"},
    "not_learning": {"imbalance"},  # stuck at the majority class of imbalanced data: the imbalance is the cause
    "below_probe": {"collapse", "lr_too_high", "non_finite", "too_short"},  # the more specific cause, said once
}


def diagnose(events: list, profile: DataProfile | None, summary: RunMetrics | None, cfg: Config) -> list[Finding]:
    """`cfg` is the run's resolved recipe; `summary` is None before the run finished (or when it diverged). A
    problem two rules see is reported once, by the first."""
    events = Events(events)
    evals = events.evals
    task = task_for(cfg)
    profile = profile or DataProfile(task=task.kind, splits={})
    summary = summary or RunMetrics()
    findings: list[Finding] = []
    for rule in (
        _non_finite,
        _below_probe,
        _not_learning,
        _learning_rate_too_low,
        _collapse,
        _overfitting,
        _memorised_small_data,
        _underfitting,
        _low_f1,
        _metric_noise,
        _mislabeled,
        _corrected,
        _imbalance,
        _rare_classes,
        _unpredicted_labels,
        _leakage,
        _truncation,
        _slow,
    ):
        if cfg.method == "setfit" and rule in READ_FINE_TUNING:
            continue
        found = rule(events, evals, profile, summary, cfg, task)
        if found and found.id not in {f.id for f in findings}:
            findings.append(found)
    seen = {f.id for f in findings}
    return [f for f in findings if not SUPERSEDED_BY.get(f.id, set()) & seen]


def _steps(events: Events) -> int:
    return events.last_step()


def _kept(summary: RunMetrics) -> Scores:
    """The kept weights' validation scores (none known before the run finished)."""
    return summary.validation or Scores()


def _stop_earlier(cfg: Config) -> str:
    """What would stop a run at its best, leaving out what the recipe already does."""
    advice = []
    if not cfg.early_stopping:
        advice.append("early_stopping: 2-3 evaluations")
    if not cfg.keep_best:
        advice.append("keep_best: true")
    advice.append(f"fewer epochs (now {cfg.epochs:g})" if not cfg.max_steps else f"fewer steps (now {cfg.max_steps})")
    if not cfg.weight_decay:
        advice.append("weight_decay 0.01")
    return ", ".join(advice)


# ---------------------------------------------------------------- training dynamics


def _non_finite(events, evals, profile, summary, cfg, task) -> Finding | None:
    bad = events.of(BadStep)
    losses = [v for _, v in _train_losses(events)] + [v for _, v in _series(evals, "loss")]
    finite_losses = all(math.isfinite(v) for v in losses)
    if not bad and finite_losses:
        return None
    diverged = bool(events.of(Diverged))
    # fp16's GradScaler skips a step each time it lowers the loss scale, mostly early on: a few skips are how it
    # calibrates, not a fault.
    if (
        cfg.precision == "fp16"
        and not diverged
        and finite_losses
        and len(bad) <= max(FP16_SCALER_SKIPS, 0.01 * _steps(events))
    ):
        return None
    first = bad[0].step if bad else None
    advice = [
        f"lower the learning rate (now {cfg.lr:g}; {rates(cfg).good} is usual)"
        if cfg.lr > 5e-5
        else f"lower the learning rate below {cfg.lr:g} or add warmup"
    ]
    if not cfg.clip_norm:
        advice.append("turn gradient clipping on (clip_norm 1.0)")
    if cfg.precision == "fp16":
        advice.append("use bf16 or fp32 instead of fp16")
    return Finding(
        id="non_finite",
        severity="error",
        title="NaN/inf appeared in training",
        evidence=f"{len(bad)} step(s) with non-finite loss or gradients"
        + (f", first at step {first}" if first else "")
        + ("; the run stopped" if diverged else "; those updates were skipped"),
        advice=", ".join(advice),
    )


def _below_probe(events, evals, profile, summary, cfg, task) -> Finding | None:
    """Seed 003: fine-tuning that ends no better than a linear model on the frozen encoder's embeddings has lost
    what the encoder knew. The advice names the causes the run shows."""
    probe, metric, kept = summary.probe, summary.metric_for_best, summary.best_metric
    base = probe.metrics.metric(metric) if probe is not None and metric else None
    if base is None or kept is None or (kept > base if metric not in LOWER_IS_BETTER else kept < base):
        return None
    rows = profile.split("train").rows or probe.train_rows
    if cfg.method == "setfit":
        pairs = events.start.pairs if events.start is not None else None
        advice = [
            f"train on more pairs (setfit_pairs, now {pairs or 'the default'}), or keep the probe itself until "
            "there are more examples"
        ]
    else:
        advice = _fine_tuning_advice(cfg, task, probe, rows, _steps(events))
    return Finding(
        id="below_probe",
        severity="warning",
        title="Training does not beat the frozen encoder",
        evidence=(
            f"the kept model's validation {metric} is {kept:.4f}; a {probe.estimator} on the pretrained encoder's "
            f"{pooled(probe)} embeddings of {probe.train_rows:,} training examples scores {base:.4f}"
        ),
        advice=", ".join(advice) or "check the labels (`bertfit inspect`) and the recipe against a recipe that worked",
    )


def _fine_tuning_advice(cfg: Config, task, probe, rows: int, steps: int) -> list[str]:
    """Why fine-tuning fell below the probe, from the causes the recipe and the run show."""
    advice = []
    if task.few_shot and rows <= SETFIT_AUTO_ROWS:
        advice.append(f"with {rows:,} examples, use method setfit (SetFit's few-shot recipe; method auto picks it)")
    if cfg.lr > rates(cfg).good_high:
        advice.append(
            f"lower the learning rate (now {cfg.lr:g}; {rates(cfg).good} is usual, and {rows:,} examples give few "
            "steps to recover from a large one)"
        )
    if steps < SHORT_RUN:
        advice.append(f"train for more steps (now {steps}): a few hundred whatever the data size (Mosbach et al. 2021)")
    if not (cfg.warmup_ratio or cfg.warmup_steps):
        advice.append("add warmup (warmup_ratio 0.1)")
    if probe.pooling == "mean":
        advice.append(
            "this encoder was trained to mean-pool its tokens, and the classification head reads its untrained [CLS] "
            "pooler: expect it to need more steps than the probe"
        )
    if rows < SMALL_TRAIN:
        advice.append(f"with {rows:,} examples, the probe itself is a model to prefer until there are more")
    return advice


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
    kept = summary.kept_step
    metric = summary.metric_for_best or "the chosen metric"
    kept_text = (
        f"the kept checkpoint (step {kept}) is the best by {metric}"
        if kept == summary.best_step and kept is not None
        else f"the kept weights are from step {kept}, not the best by {metric}"
    )
    return Finding(
        id="overfitting",
        severity="warning",
        title="Overfitting: validation loss rose while training loss kept falling",
        evidence=(
            f"validation loss {best:.4f} at step {best_step} → {last:.4f} at step {last_step} "
            f"(+{last / best - 1:.0%}); training loss {at_best[-1]:.4f} → {after[-1]:.4f}; {kept_text}"
        ),
        advice=f"stop earlier ({_stop_earlier(cfg)}), or add training data",
    )


def _not_learning(events, evals, profile, summary, cfg, task) -> Finding | None:
    chance = task.chance_loss()
    train = _train_losses(events)
    if chance is None or not train or not evals:
        return None
    classes = len(cfg.label_names)
    train = _smoothed(train)
    final_loss = train[-1][1]
    majority = profile.split("validation").majority_rate
    accuracies = [v for _, v in _series(evals, "accuracy")]
    near_chance = final_loss >= CHANCE_SHARE * chance
    near_majority = majority is not None and accuracies and max(accuracies) <= majority + NEAR_MAJORITY
    rising = len(train) >= 3 and train[-1][1] > 1.5 * min(v for _, v in train) and train[-1][1] > 0.5 * chance
    if not (near_chance or near_majority or rising):
        return None
    steps, lr = _steps(events), cfg.lr
    evidence = f"training loss {final_loss:.4f} at step {train[-1][0]} vs ln({classes}) = {chance:.4f} (chance)"
    if accuracies:
        evidence += f"; validation accuracy {min(accuracies):.4f}–{max(accuracies):.4f}"
    if majority is not None:
        evidence += f" vs majority-class rate {majority:.4f}"
    if rising:
        evidence += f"; training loss rose from a minimum of {min(v for _, v in train):.4f}"
    if lr >= rates(cfg).high:
        return Finding(
            id="lr_too_high",
            severity="error",
            title="Not learning: the learning rate is too high",
            evidence=f"{evidence}; lr {lr:g}",
            advice=(
                f"lower the learning rate from {lr:g} to {rates(cfg).good} "
                f"({'LoRA' if cfg.lora else 'pretrained encoders'} tolerate {rates(cfg).tolerated}), with a "
                "linear schedule" + ("" if cfg.warmup_ratio or cfg.warmup_steps else " and 6-10% warmup")
            ),
        )
    if lr < rates(cfg).low and steps >= SHORT_RUN:
        return Finding(
            id="lr_too_low",
            severity="warning",
            title="Not learning: the learning rate is too low",
            evidence=f"{evidence}; lr {lr:g} over {steps} steps",
            advice=f"raise the learning rate from {lr:g} to {rates(cfg).good}",
        )
    if steps < SHORT_RUN:
        return Finding(
            id="too_short",
            severity="warning",
            title="Not learning yet: the run is too short to judge",
            evidence=f"{evidence}; only {steps} optimizer steps",
            advice=(
                f"train for more steps (a few hundred at least; now {steps}) before changing the learning rate (now "
                f"{lr:g})"
            ),
        )
    advice = ["check that labels match texts (`bertfit inspect`)"]
    if not (cfg.warmup_ratio or cfg.warmup_steps):
        advice.append("add warmup (warmup_ratio 0.06)")
    advice.append(f"train longer than {steps} steps")
    return Finding(
        id="not_learning",
        severity="warning",
        title="Not learning: the model stays at chance",
        evidence=f"{evidence}; lr {lr:g} is in the usual range",
        advice=", ".join(advice),
    )


def _collapse(events, evals, profile, summary, cfg, task) -> Finding | None:
    matrix = _kept(summary).confusion_matrix
    names = cfg.label_names or []
    if not matrix or len(matrix) < 2:
        return None
    predicted = [sum(row[j] for row in matrix) for j in range(len(matrix))]
    total = sum(predicted)
    top = max(range(len(predicted)), key=predicted.__getitem__)
    true_share = sum(matrix[top]) / total if total else 0
    if not total or predicted[top] / total < COLLAPSE_SHARE or true_share >= 0.8:
        return None
    steps = _steps(events)
    imbalance = profile.split("train").imbalance_ratio or 1
    if cfg.lr >= rates(cfg).high:
        advice = f"lower the learning rate from {cfg.lr:g} to {rates(cfg).good}"
    elif steps < SHORT_RUN:
        advice = f"train for more steps (now {steps}): early in training a model often predicts one class"
    elif imbalance >= IMBALANCE_RATIO:
        advice = f"the training labels are imbalanced ({imbalance:.1f}:1): {_imbalance_remedy(cfg)}"
    else:
        advice = "check that labels match texts (`bertfit inspect`) and that the labels are not shuffled"
    return Finding(
        id="collapse",
        severity="error",
        title="Collapse to one class",
        evidence=(
            f"{predicted[top] / total:.1%} of validation predictions are '{names[top] if top < len(names) else top}'"
            f", which is {true_share:.1%} of the true labels"
        ),
        advice=advice,
    )


def _learning_rate_too_low(events, evals, profile, summary, cfg, task) -> Finding | None:
    train = _smoothed(_train_losses(events))
    if len(train) < 3 or cfg.lr >= rates(cfg).low or _steps(events) < SHORT_RUN:
        return None
    first, last = train[0][1], train[-1][1]
    if first <= 0 or (first - last) / first >= FLAT_LOSS:
        return None
    return Finding(
        id="lr_too_low",
        severity="warning",
        title="Learning rate too low: the training loss barely moves",
        evidence=(
            f"training loss {first:.4f} → {last:.4f} ({(first - last) / first:.1%}) over {train[-1][0]} steps "
            f"at lr {cfg.lr:g}"
        ),
        advice=f"raise the learning rate from {cfg.lr:g} to {rates(cfg).good}",
    )


def _underfitting(events, evals, profile, summary, cfg, task) -> Finding | None:
    with_accuracy = [e for e in evals if e.train_accuracy is not None]
    if not with_accuracy:
        return None
    final = with_accuracy[-1].train_accuracy
    accuracies = _series(evals, "accuracy")
    still_improving = len(accuracies) >= 2 and accuracies[-1][1] >= max(v for _, v in accuracies)
    majority = profile.split("train").majority_rate or 0
    if final >= UNDERFIT_ACCURACY or final <= majority + NEAR_MAJORITY or not still_improving:
        return None  # at chance is 'not learning', reported by its own rule
    steps = _steps(events)
    advice = [f"train longer (now {steps} steps" + (f", {cfg.epochs:g} epochs)" if not cfg.max_steps else ")")]
    if cfg.lr < 2e-5:
        advice.append(f"raise the learning rate from {cfg.lr:g} to {rates(cfg).good}")
    return Finding(
        id="underfitting",
        severity="warning",
        title="Underfitting: training accuracy is still low at the end",
        evidence=(
            f"training accuracy {final:.4f} over the last evaluation window; validation accuracy was still "
            f"improving at the last evaluation ({accuracies[-1][1]:.4f} at step {accuracies[-1][0]})"
        ),
        advice=", ".join(advice),
    )


def _metric_noise(events, evals, profile, summary, cfg, task) -> Finding | None:
    """Only when keeping the best checkpoint chose other weights than the last, on a gain within the noise."""
    metric = summary.metric_for_best or "accuracy"
    values = dict(_series(evals, metric))
    n = profile.split("validation").rows
    kept, last = summary.kept_step, max(values, default=None)
    if metric != "accuracy" or not n or n >= SMALL_EVAL or kept is None or kept == last or last is None:
        return None
    best, final = values.get(kept), values[last]
    if best is None:
        return None
    half_width = 1.96 * math.sqrt(max(best * (1 - best), 1e-12) / n)
    if best - final >= half_width:
        return None
    return Finding(
        id="metric_noise",
        severity="info",
        title="The kept checkpoint won on noise",
        evidence=(
            f"step {kept} was kept for {metric} {best:.4f} against {final:.4f} at the last step {last}, a gain within "
            f"± {half_width:.4f} (95% binomial interval, n = {n})"
        ),
        advice="treat the two as equal: evaluate on a larger split, or compare several seeds, before preferring either",
    )


def _memorised_small_data(events, evals, profile, summary, cfg, task) -> Finding | None:
    rows = profile.split("train").rows
    last = next((e for e in reversed(evals) if e.train_accuracy is not None), None)
    accuracy = last.metrics.metric("accuracy") if last is not None else None
    if not rows or rows >= SMALL_TRAIN or accuracy is None:
        return None
    gap = last.train_accuracy - accuracy
    if gap < MEMORISED_GAP:
        return None
    return Finding(
        id="small_data",
        severity="warning",
        title="Too little training data: the model memorises it",
        evidence=(
            f"{rows:,} training examples; training accuracy {last.train_accuracy:.4f} vs validation accuracy "
            f"{accuracy:.4f} at step {last.step} (gap {gap:.2f})"
        ),
        advice="add labelled examples (the main fix; validation is far below training), and meanwhile "
        + _stop_earlier(cfg),
    )


def _low_f1(events, evals, profile, summary, cfg, task) -> Finding | None:
    """The expression seed's 'low precision/recall': entity F1 (or the positive class's F1) far below usable."""
    kept = _kept(summary)
    precision, recall, f1 = (kept.metric(name) for name in ("precision", "recall", "f1"))
    if precision is None or recall is None or f1 is None or f1 >= LOW_F1:
        return None
    steps = _steps(events)
    evidence = f"validation precision {precision:.3f}, recall {recall:.3f}, F1 {f1:.3f}"
    if kept.per_type:
        worst = sorted(kept.per_type.items(), key=lambda item: item[1].f1)[:3]
        evidence += "; weakest types " + ", ".join(f"{k} F1 {v.f1:.2f} (n={v.support})" for k, v in worst)
    advice = []
    if steps < 10 * SHORT_RUN:
        advice.append(f"train longer (now {steps} steps; the expression seed trains 5 epochs)")
    if cfg.lr >= rates(cfg).high:
        advice.append(f"lower the learning rate from {cfg.lr:g} to {rates(cfg).good}")
    elif cfg.lr < rates(cfg).low:
        advice.append(f"raise the learning rate from {cfg.lr:g} to {rates(cfg).good}")
    rows = profile.split("train").rows
    if rows and rows < SMALL_TRAIN:
        advice.append(f"add labelled examples ({rows:,} now)")
    if profile.repaired_tags:
        advice.append(f"check the tags: {profile.repaired_tags:,} entity-initial I- tags needed repair")
    if not advice:
        advice.append("check the labels (`bertfit inspect`) and add examples of the weakest types")
    return Finding(
        id="low_f1",
        severity="error" if f1 < LOW_F1 / 5 else "warning",
        title="Low precision and recall",
        evidence=evidence,
        advice=", ".join(advice),
    )


# ---------------------------------------------------------------- data


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _corrected(events, evals, profile, summary, cfg, task) -> Finding | None:
    """A run retrained with a review's corrections, against the run reviewed: did fixing the labels pay?"""
    start = events.start
    corrections = start.corrections if start is not None else None
    metric, kept = summary.metric_for_best, summary.best_metric
    if corrections is None or corrections.parent_scores is None or kept is None or not metric:
        return None
    before = corrections.parent_scores.metric(metric)
    if before is None:
        return None
    better = kept < before if metric in LOWER_IS_BETTER else kept > before
    same_yardstick = not (corrections.validation_relabelled or corrections.validation_dropped)
    evidence = (
        f"trained with {corrections.relabelled:,} training labels corrected and {corrections.dropped:,} examples "
        f"dropped (review of {corrections.parent}): validation {metric} {kept:.4f}, against {before:.4f} for the "
        f"run reviewed ({kept - before:+.4f})"
    )
    if not same_yardstick:
        evidence += (
            f"; {corrections.validation_relabelled:,} validation labels were corrected and "
            f"{corrections.validation_dropped:,} dropped too, so the two scores are on different labels"
        )
    if better or not same_yardstick:
        return Finding(
            id="corrected",
            severity="info",
            title="Retrained with reviewed labels",
            evidence=evidence,
            advice="review the next suggestions (`bertfit review` on this run) while the list still finds errors",
        )
    return Finding(
        id="corrected",
        severity="warning",
        title="The reviewed labels did not help",
        evidence=evidence,
        advice=(
            f"check the decisions in {corrections.source} (accepting suggestions unread relabels hard but correct "
            "examples too), or compare the seeds' spread (`bertfit sweep`) before trusting a small difference"
        ),
    )


def _mislabeled(events, evals, profile, summary, cfg, task) -> Finding | None:
    found = summary.mislabeled
    if found is None or not found.flagged:
        return None
    shown = "; ".join(
        f"'{_shorten(text)}' labelled {label}, looks {suggested} (margin {e.margin:.2f})"
        for e in found.lowest[:3]
        for text, label, suggested in [task.shown_review(e.text, e.label, e.suspected, e.words)]
    )
    return Finding(
        id="mislabeled",
        severity="info",
        title="Training examples whose label the model keeps contradicting",
        evidence=(
            f"{found.flagged:,} of {found.examined:,} training examples ({found.flagged / found.examined:.1%}) "
            f"look mislabeled ({found.method}); the most contradicted: {shown}"
        ),
        advice=(
            f"review them with `bertfit review {cfg.output}` (the likeliest to be wrong first, in the order named "
            "above): accept the suggested label, keep or drop each, then train again with "
            f"--corrections {cfg.output}/review/decisions.jsonl"
        ),
    )


def _imbalance(events, evals, profile, summary, cfg, task) -> Finding | None:
    train = profile.split("train")
    matrix = _kept(summary).confusion_matrix
    names = cfg.label_names or []
    if (train.imbalance_ratio or 1) < IMBALANCE_RATIO or not matrix:
        return None
    recalls = [row[i] / sum(row) if sum(row) else 1.0 for i, row in enumerate(matrix)]
    worst = min(range(len(recalls)), key=recalls.__getitem__)
    if recalls[worst] >= LOW_RECALL:
        return None
    balanced = "f1_macro" if len(names) > 2 else "f1"
    advice = _imbalance_remedy(cfg)
    if cfg.metric_for_best != balanced:
        advice += f", and choose the checkpoint by {balanced} (metric_for_best: {balanced})"
    return Finding(
        id="imbalance",
        severity="warning",
        title="Class imbalance with low minority recall",
        evidence=(
            f"training labels {train.labels} (ratio {train.imbalance_ratio:.1f}); validation recall of "
            f"'{names[worst] if worst < len(names) else worst}' is {recalls[worst]:.2f}"
        ),
        advice=advice,
    )


def _rare_classes(events, evals, profile, summary, cfg, task) -> Finding | None:
    """Seed 003's 'validate your dataset': a class with a handful of examples is noise to learn and to score."""
    rare = {name: profile.splits[name].rare_classes or {} for name in ("train", "validation") if name in profile.splits}
    if not any(rare.values()):
        return None
    parts = [
        f"{name}: " + ", ".join(f"'{label}' {count}" for label, count in classes.items())
        for name, classes in rare.items()
        if classes
    ]
    learn, measure = bool(rare.get("train")), bool(rare.get("validation"))
    what = "to learn or to validate" if learn and measure else "to learn" if learn else "to validate"
    return Finding(
        id="rare_classes",
        severity="warning",
        title=f"Classes too rare {what}",
        evidence="examples per class under 5 in " + "; ".join(parts),
        advice="collect more examples of these classes, merge each into a related class, or drop its rows; "
        + (
            "a score on one or two validation examples is noise"
            if measure
            else "until then the model cannot learn them"
        ),
    )


def _unpredicted_labels(events, evals, profile, summary, cfg, task) -> Finding | None:
    """Multi-label: labels the kept model never gets right on validation, usually the rare ones."""
    kept = _kept(summary)
    per_label = kept.per_label or {}
    missed = [name for name, v in per_label.items() if v.support and v.f1 == 0]
    if not missed:
        return None
    counts = profile.split("train").labels or {}
    shown = ", ".join(f"{name} ({counts.get(name, 0):,} in train)" for name in missed[:8])
    evidence = (
        f"{len(missed)} of {len(per_label)} labels have validation F1 0: {shown}"
        + (", ..." if len(missed) > 8 else "")
        + f"; micro-F1 {kept.metric('micro_f1'):.3f}, macro-F1 {kept.metric('macro_f1'):.3f}"
    )
    steps = _steps(events)
    advice = []
    if len(missed) > len(per_label) / 2 and steps < 10 * SHORT_RUN:
        advice.append(
            f"train longer (now {steps} steps): the rare labels' outputs start to move only after the common ones"
        )
    if cfg.lr < rates(cfg).high / 2:
        advice.append(f"try a higher learning rate (now {cfg.lr:g}; multi-label heads often want 5e-5 to 1e-4)")
    if cfg.threshold != "per_label":
        advice.append("choose a threshold per label on validation (threshold: per_label)")
    rare = profile.split("train").rare_labels or []
    advice.append(f"add examples of the rare labels ({', '.join(rare[:6])})" if rare else "add examples of them")
    return Finding(
        id="unpredicted_labels",
        severity="error" if len(missed) > len(per_label) / 2 else "warning",
        title="Labels the model never predicts",
        evidence=evidence,
        advice=", ".join(advice),
    )


def _imbalance_remedy(cfg) -> str:
    """What to do about imbalance, given whether the loss was already weighted by class."""
    if cfg.class_weights is None:
        return "weight the loss by class (class_weights: balanced) or oversample the rare classes"
    weights = ", ".join(f"{w:g}" for w in cfg.class_weights) if isinstance(cfg.class_weights, list) else "balanced"
    return f"class weights were on ({weights}): raise the rare classes' weights further or oversample them"


def _leakage(events, evals, profile, summary, cfg, task) -> Finding | None:
    leaks = {k: v for k, v in profile.leakage.items() if v.substantive_share >= LEAKAGE_SHARE}
    if not leaks:
        return None
    parts = [
        f"{v.substantive:,} of {k} ({v.substantive_share:.1%}) of 5 words or more; {v.normalised:,} in all, "
        f"{v.exact:,} exact"
        for k, v in leaks.items()
    ]
    worst = max(v.substantive_share for v in leaks.values())
    # A shared example can at most be scored right by memory: the share bounds how much the metrics are inflated.
    return Finding(
        id="leakage",
        severity="warning" if worst >= LEAKAGE_WARNING else "info",
        title="Evaluation examples also appear in training",
        evidence="texts duplicated from train: "
        + "; ".join(parts)
        + f"; at most {worst:.1%} of a split's score can come "
        "from memory",
        advice="deduplicate across splits (`bertfit inspect` lists them)"
        + (" before trusting the scores" if worst >= LEAKAGE_WARNING else " to report clean scores"),
    )


def _truncation(events, evals, profile, summary, cfg, task) -> Finding | None:
    tokens = profile.split("train").tokens
    if tokens is None or tokens.truncated_share < TRUNCATION_SHARE or tokens.windowed is not None:
        return None
    longer = tokens.max_length < 512
    advice = (
        f"raise max_length (now {tokens.max_length}, p95 is {tokens.percentiles['p95']})"
        if longer
        else "keep the start and end of long texts with --truncation head+tail (Sun et al. 2019), or read them "
        "whole as overlapping windows (--truncation windows)"
    )
    if cfg.truncation == "head+tail" and not longer:
        return None
    return Finding(
        id="truncation",
        severity="warning",
        title="Heavy truncation",
        evidence=(
            f"{tokens.truncated_share:.1%} of training examples are longer than {tokens.max_length} tokens "
            f"(p95 {tokens.percentiles['p95']}, max {tokens.max})"
        ),
        advice=advice,
    )


# ---------------------------------------------------------------- speed


def _slow(events, evals, profile, summary, cfg, task) -> Finding | None:
    train = summary.train
    if not train.train_seconds:
        return None
    reasons, advice = [], []
    if (train.padding_ratio or 0) > PADDING_SHARE:
        reasons.append(f"{train.padding_ratio:.0%} of the tokens computed are padding")
        if cfg.padding != "bucket":
            advice.append("use --padding bucket (length-grouped batches)")
        elif cfg.compile:
            advice.append("compiled runs pad to a grid of lengths; for very short texts try --no-compile")
        else:
            advice.append("lengths vary widely inside batches: lower max_length or use a larger dataset per bucket")
    eval_seconds = sum(e.metrics.runtime or 0 for e in evals)
    if eval_seconds > max(train.train_seconds, SLOW_EVAL_SECONDS):
        reasons.append(f"evaluation took {eval_seconds:.0f} s against {train.train_seconds:.0f} s of training")
        advice.append("evaluate less often (eval_every) or on a subset (max_eval_samples), with a larger eval batch")
    mfu = train.mfu
    if mfu is not None and mfu < LOW_MFU:
        reasons.append(f"model FLOP utilisation is {mfu:.1%} of the GPU's peak")
        advice.append("use bf16, a larger batch, --padding bucket and torch.compile")
    if not reasons:
        return None
    return Finding(
        id="slow", severity="warning", title="Slow training", evidence="; ".join(reasons), advice="; ".join(advice)
    )


# Rules that read a fine-tuning run's dynamics (its learning rate, its loss over epochs, its evaluations, its
# length-bucketed batches): `method: setfit` has none of these (one pass over random pairs, one evaluation).
READ_FINE_TUNING = (
    _not_learning,
    _learning_rate_too_low,
    _collapse,
    _overfitting,
    _memorised_small_data,
    _underfitting,
    _metric_noise,
    _slow,
)
