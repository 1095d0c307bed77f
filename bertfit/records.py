"""A run's records as files: the metric vocabulary, the results table, and reading a run folder back.

Shared by the engine, which writes the records, and the reports, which read them; it knows neither."""

from __future__ import annotations

import json
from pathlib import Path

from bertfit.config import Config, build_config
from bertfit.errors import BertfitError, first_line

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


def scalar_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in TIMING_FIELDS}


def table_columns(evals: list[dict]) -> list[str]:
    metrics = [k for k in scalar_metrics(evals[0]["metrics"]) if k != "loss"] if evals else []
    return ["Training Loss", "Epoch", "Step", "Validation Loss"] + [METRIC_TITLES.get(m, m) for m in metrics]


def table_rows(evals: list[dict]) -> list[list[str]]:
    rows = []
    for record in evals:
        metrics = scalar_metrics(record["metrics"])
        loss = record.get("train_loss")
        rows.append(
            [
                "No log" if loss is None else f"{loss:.4f}",
                f"{record['epoch']:.2f}",
                str(record["step"]),
                f"{metrics['loss']:.4f}",
            ]
            + [f"{v:.4f}" for k, v in metrics.items() if k != "loss"]
        )
    return rows


def table_lines(evals: list[dict]) -> tuple[str, list[str]]:
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


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise BertfitError(
            f"'{path}' is damaged ({first_line(err, 120)}); rerun the training, or restore the file from a copy"
        ) from None


def read_events(path: Path) -> list[dict]:
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "event" not in record:
            raise BertfitError(
                f"{path}:{number}: not a bertfit log line; remove the line (bertfit writes one JSON object per event)"
            )
        events.append(record)
    return events


def read_run(folder: Path) -> tuple[Config, list[dict], dict, dict | None]:
    """The resolved recipe, the log's events, metrics.json and the data profile (None when absent)."""
    needed = [folder / n for n in ("recipe.yaml", "log.jsonl", "metrics.json")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise BertfitError(f"'{folder}' is not a finished bertfit run (missing {', '.join(missing)})")
    cfg = build_config(str(needed[0]))
    events = read_events(needed[1])
    summary = read_json(needed[2])
    if not isinstance(summary, dict) or not all(isinstance(summary.get(k), dict) for k in ("train", "validation")):
        raise BertfitError(f"'{needed[2]}' is not a bertfit metrics file; rerun the training")
    profile_path = folder / "data_profile.json"
    profile = read_json(profile_path) if profile_path.is_file() else None
    return cfg, events, summary, profile
