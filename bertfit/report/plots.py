"""Plots of a run, drawn from its own records: losses, metrics with the best checkpoint, errors, lengths."""

from __future__ import annotations

import io

from bertfit.config import Config
from bertfit.records import METRIC_TITLES
from bertfit.runfiles import DataProfile, Events, RunMetrics, Train
from bertfit.tasks import task_for


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "font.size": 10})
    return plt


def draw_all(events: Events, summary: RunMetrics, profile: DataProfile | None, cfg: Config) -> dict[str, bytes]:
    """The plots as PNG files, by their paths relative to the run folder (plots/NAME.png)."""
    plt = _pyplot()
    evals = events.evals
    drawn = {}
    for name, draw in (
        ("loss", _loss),
        ("metrics", _metrics),
        ("confusion", _confusion),
        ("entities", _entities),
        ("lengths", _lengths),
    ):
        figure = draw(plt, events, evals, summary, profile or DataProfile(task=cfg.task, splits={}), cfg)
        if figure is not None:
            figure.tight_layout()
            png = io.BytesIO()
            figure.savefig(png, format="png")
            plt.close(figure)
            drawn[f"plots/{name}.png"] = png.getvalue()
    return drawn


def _loss(plt, events, evals, summary, profile, cfg):
    train = [(e.step, e.loss) for e in events.of(Train)]
    if not train:
        train = [(e.step, e.train_loss) for e in evals if e.train_loss is not None]
    if not train and not evals:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    if train:
        axis.plot(*zip(*train), label="training loss", color="tab:blue", marker="." if len(train) < 30 else None)
    if evals:
        axis.plot(
            [e.step for e in evals],
            [e.metrics.loss for e in evals],
            label="validation loss",
            color="tab:orange",
            marker="o",
        )
    kept = summary.kept_step
    if kept is not None:
        axis.axvline(kept, color="grey", linestyle="--", label=f"kept weights (step {kept})")
    axis.set(
        xlabel="optimizer step",
        ylabel=f"loss (mean per {task_for(cfg).loss_unit})",
        title="Training and validation loss",
    )
    axis.legend()
    return figure


def _metrics(plt, events, evals, summary, profile, cfg):
    if not evals:
        return None
    names = [k for k in evals[0].metrics.named() if k != "mse"]
    if not names:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    steps = [e.step for e in evals]
    for name in names:
        values = [e.metrics.metric(name) for e in evals]
        axis.plot(
            steps, [float("nan") if v is None else v for v in values], marker="o", label=METRIC_TITLES.get(name, name)
        )
    best = summary.best_step
    if best is not None:
        axis.axvline(best, color="grey", linestyle="--", label=f"best checkpoint (step {best})")
    axis.set(xlabel="optimizer step", ylabel="score (0–1)", title="Validation metrics")
    axis.legend(fontsize=8)
    return figure


def _confusion(plt, events, evals, summary, profile, cfg):
    matrix = summary.validation.confusion_matrix if summary.validation else None
    if not matrix:
        return None
    names = cfg.label_names or [str(i) for i in range(len(matrix))]
    size = max(3.5, 0.7 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.grid(False)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axis.text(j, i, f"{count:,}", ha="center", va="center", color="white" if count > peak / 2 else "black")
    axis.set(xlabel="predicted label", ylabel="true label", title="Confusion matrix (validation, kept weights)")
    figure.colorbar(image, ax=axis, label="examples")
    return figure


def _entities(plt, events, evals, summary, profile, cfg):
    per_type = summary.validation.per_type if summary.validation else None
    if not per_type:
        return None
    names = sorted(per_type)
    figure, axis = plt.subplots(figsize=(max(5, 1.2 * len(names) + 2), 4))
    bars = axis.bar(names, [per_type[n].f1 for n in names], color="tab:green")
    for bar, name in zip(bars, names):
        axis.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            f"{per_type[name].f1:.3f}\nn={per_type[name].support:,}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axis.set(
        ylim=(0, 1.15), xlabel="entity type", ylabel="F1 (entity level, seqeval)", title="Validation F1 per entity type"
    )
    return figure


def _lengths(plt, events, evals, summary, profile, cfg):
    tokens = profile.split("train").tokens
    if tokens is None:
        return None
    counts, edges = tokens.histogram.counts, tokens.histogram.edges
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.stairs(counts, edges, fill=True, alpha=0.6, label="training examples")
    axis.axvline(
        tokens.max_length,
        color="red",
        linestyle="--",
        label=f"max_length {tokens.max_length} ({tokens.truncated_share:.1%} truncated)",
    )
    axis.set(xlabel="tokens per example (before truncation)", ylabel="examples", title="Token lengths")
    axis.legend()
    return figure
