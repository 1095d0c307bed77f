"""The data profile, as a task sees its data: sizes, label balance, lengths and truncation, empties, duplicates and
leakage, tag repairs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bertfit.data.schema import DataSpec
from bertfit.tasks.base import Task

PERCENTILES = (50, 90, 95, 99)
SUBSTANTIVE_WORDS = 5  # a shared text this long or longer is a copied example, not a common phrase
# Python's Unicode \w and \s in RE2's terms (Arrow's regex engine, whose own \w and \s are ASCII-only).
_SPACE = r"\s\p{Z}\x{85}\x{0b}\x{1c}-\x{1f}"
_NOT_WORD = rf"[^\p{{L}}\p{{N}}_{_SPACE}]"


def normalise_texts(texts: pd.Series) -> pd.Series:
    """What a near-duplicate shares: case, punctuation and spacing removed (and IMDB's <br /> tags). In Arrow, a
    column at a time: a million texts in about a second."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = pa.array(texts.astype(str).to_numpy(dtype=object), type=pa.string())
    values = pc.utf8_lower(pc.replace_substring(values, "<br />", " "))
    values = pc.replace_substring_regex(values, _NOT_WORD, " ")
    values = pc.utf8_trim(pc.replace_substring_regex(values, f"[{_SPACE}]+", " "), " ")
    return pd.Series(values.to_numpy(zero_copy_only=False), index=texts.index, dtype="str")


def _row_hashes(texts: pd.Series) -> np.ndarray:
    """64-bit hashes: set membership over millions of texts without Python string sets."""
    return pd.util.hash_pandas_object(texts, index=False).to_numpy()


def length_stats(full_lengths: np.ndarray, max_length: int) -> dict:
    counts, edges = np.histogram(full_lengths, bins=min(50, max(1, len(np.unique(full_lengths)))))
    return {
        "percentiles": {f"p{p}": int(np.percentile(full_lengths, p)) for p in PERCENTILES},
        "mean": float(full_lengths.mean()),
        "max": int(full_lengths.max()),
        "max_length": max_length,
        "truncated": int((full_lengths > max_length).sum()),
        "truncated_share": float((full_lengths > max_length).mean()),
        "histogram": {"counts": counts.tolist(), "edges": [float(e) for e in edges]},
    }


def profile(
    frames: dict[str, pd.DataFrame],
    task: Task,
    spec: DataSpec,
    full_lengths: dict[str, np.ndarray] | None = None,
    max_length: int = 512,
) -> dict:
    """Per split, and across splits (leakage). `full_lengths` are token counts before truncation."""
    texts = {name: task.profile_texts(frame) for name, frame in frames.items()}
    normalised = {name: normalise_texts(series) for name, series in texts.items()}
    result: dict = {"task": spec.task, "splits": {}, "leakage": {}}
    train_labels: set = set()
    for name, frame in frames.items():
        split: dict = {"rows": len(frame)}
        series = texts[name]
        split["empty_texts"] = int(series.str.strip().eq("").sum())
        split["duplicates"] = int(series.duplicated().sum())
        split["normalised_duplicates"] = int(normalised[name].duplicated().sum())
        if task.label_column in frame.columns:
            split.update(task.label_profile(frame, series))
        if "labels" in split:
            if name == "train":
                train_labels = set(split["labels"])
            elif train_labels:
                split["labels_not_in_train"] = sorted(set(split["labels"]) - train_labels)
        if full_lengths is not None and name in full_lengths:
            split["tokens"] = length_stats(np.asarray(full_lengths[name]), max_length)
        result["splits"][name] = split
    if "train" in frames:
        train_exact, train_normal = _row_hashes(texts["train"]), _row_hashes(normalised["train"])
        for name in frames:
            if name == "train":
                continue
            exact = int(np.isin(_row_hashes(texts[name]), train_exact).sum())
            shared = pd.Series(np.isin(_row_hashes(normalised[name]), train_normal), index=normalised[name].index)
            # Short lines recur in any corpus (CoNLL's datelines and scores, SST's "good"): they are counted, but
            # only texts of some length are evidence of copied examples.
            substantive = int((shared & (normalised[name].str.count(" ") + 1 >= SUBSTANTIVE_WORDS)).sum())
            rows = max(1, len(frames[name]))
            result["leakage"][name] = {
                "exact": exact,
                "normalised": int(shared.sum()),
                "share": int(shared.sum()) / rows,
                "substantive": substantive,
                "substantive_share": substantive / rows,
            }
    if spec.tag_scheme is not None:
        result["tag_scheme"] = spec.tag_scheme
        result["repaired_tags"] = spec.repaired_tags
    return result


def summary_lines(report: dict) -> list[str]:
    """One line per split, for the log and the card."""
    lines = []
    for name, split in report["splits"].items():
        parts = [f"{name}: {split['rows']:,} rows"]
        if "labels" in split:
            parts.append(
                "labels "
                + ", ".join(f"{k} {v:,}" for k, v in split["labels"].items())
                + f" (imbalance {split['imbalance_ratio']:.2f})"
            )
        if "entity_counts" in split:
            parts.append("entities " + ", ".join(f"{k} {v:,}" for k, v in sorted(split["entity_counts"].items())))
        if "tokens" in split:
            tokens = split["tokens"]
            parts.append(
                f"tokens p50 {tokens['percentiles']['p50']}, p95 {tokens['percentiles']['p95']}, "
                f"max {tokens['max']}; {tokens['truncated_share']:.1%} truncated at {tokens['max_length']}"
            )
        if split["duplicates"]:
            parts.append(f"{split['duplicates']:,} duplicates")
        if split["empty_texts"]:
            parts.append(f"{split['empty_texts']:,} empty texts")
        if split.get("conflicting_pairs"):
            parts.append(f"{split['conflicting_pairs']:,} identical pairs with different labels")
        if split.get("labels_not_in_train"):
            parts.append(f"labels not in train: {', '.join(split['labels_not_in_train'])}")
        lines.append("; ".join(parts))
    for name, leak in report["leakage"].items():
        if leak["normalised"]:
            lines.append(
                f"leakage: {leak['exact']:,} exact and {leak['normalised']:,} normalised duplicates of "
                f"train in {name} ({leak['share']:.1%})"
            )
    if report.get("repaired_tags"):
        lines.append(
            f"tag scheme {report['tag_scheme']}: {report['repaired_tags']:,} entity-initial I- tags repaired to B-"
        )
    elif report.get("tag_scheme"):
        lines.append(f"tag scheme: {report['tag_scheme']}")
    return lines
