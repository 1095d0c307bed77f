"""A run's records as text: the metric vocabulary, the results table, markdown.

Shared by the engine, which writes the records, and the reports, which read them; it knows neither. The records
themselves, typed, are in `runfiles`."""

from __future__ import annotations

from bertfit.runfiles import Eval, ProbeResult

# Fields that measure time rather than results: they differ between otherwise identical runs.
TIMING_FIELDS = {"time", "runtime", "samples_per_second", "tokens_per_second", "train_seconds", "eval_seconds"}


METRIC_TITLES = {
    "accuracy": "Accuracy",
    "f1": "F1",
    "precision": "Precision",
    "recall": "Recall",
    "f1_macro": "Macro F1",
    "recall_macro": "Macro Recall",
    "precision_macro": "Macro Precision",
    "matthews": "Matthews Correlation",
    "pearson": "Pearson",
    "spearman": "Spearman",
    "mse": "Mse",
}


def table_columns(evals: list[Eval]) -> list[str]:
    metrics = list(evals[0].metrics.named()) if evals else []
    return ["Training Loss", "Epoch", "Step", "Validation Loss"] + [METRIC_TITLES.get(m, m) for m in metrics]


def _number(value: float | None) -> str:
    return "nan" if value is None else f"{value:.4f}"


def table_rows(evals: list[Eval]) -> list[list[str]]:
    return [
        [
            "No log" if record.train_loss is None else f"{record.train_loss:.4f}",
            f"{record.epoch:.2f}",
            str(record.step),
            _number(record.metrics.loss),
        ]
        + [_number(v) for v in record.metrics.named().values()]
        for record in evals
    ]


def table_lines(evals: list[Eval]) -> tuple[str, list[str]]:
    columns = table_columns(evals)
    widths = [max(len(c), 8) for c in columns]
    header = " | ".join(c.rjust(w) for c, w in zip(columns, widths))
    return header, [" | ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table_rows(evals)]


def inline(text: object) -> str:
    """Text from the data (a label, a column name) as one markdown line: a newline or a table bar in a label
    would end the line or the cell it stands in."""
    return str(text).replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r").replace("|", "\\|")


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(inline, columns)) + " |", "|" + "|".join(":-----:" for _ in columns) + "|"]
    lines += ["| " + " | ".join(map(inline, row)) + " |" for row in rows]
    return "\n".join(lines)


def pooled(probe: ProbeResult) -> str:
    return f"{probe.pooling}-pooled{' (unit-length)' if probe.normalized else ''}"


def probe_line(probe: ProbeResult) -> str:
    """The frozen-probe baseline in one sentence, for results.md, the card and the console."""
    scores = ", ".join(f"{METRIC_TITLES.get(k, k)} {v:.4f}" for k, v in probe.metrics.named().items() if v is not None)
    return (
        f"Frozen probe (the baseline fine-tuning must beat): {scores}; a {probe.estimator} on the pretrained "
        f"encoder's {pooled(probe)} embeddings of {probe.train_rows:,} training examples, scored on "
        f"{probe.validation_rows:,} validation examples"
    )
