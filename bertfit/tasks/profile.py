"""The data profile, as a task sees its data: sizes, label balance, lengths and truncation, empties, duplicates and
leakage, tag repairs."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from bertfit.data.schema import DataSpec
from bertfit.errors import BertfitError
from bertfit.files import atomic_write, to_json
from bertfit.runfiles import DataProfile, Leak, SplitProfile, Tokens
from bertfit.tasks import TASKS
from bertfit.tasks.base import Task
from bertfit.tasks.features import cache_dir, frame_fingerprint

PERCENTILES = (50, 90, 95, 99)
SUBSTANTIVE_WORDS = 5  # a shared text this long or longer is a copied example, not a common phrase
# A run of anything but Python's Unicode \w, in RE2's terms (Arrow's regex engine, whose own \w is ASCII-only):
# punctuation and spacing together, so one pass replaces both.
_NOT_WORDS = r"[^\p{L}\p{N}_]+"


# Rows profiled at a time: each chunk's texts exist as Python strings only while they are hashed.
PROFILE_CHUNK = 250_000


def _normalise(values):
    """What a near-duplicate shares: case, punctuation and spacing removed (and IMDB's <br /> tags). In Arrow, a
    column at a time: a million texts in about a second."""
    import pyarrow.compute as pc

    values = pc.utf8_lower(pc.replace_substring(values, "<br />", " "))
    return pc.utf8_trim(pc.replace_substring_regex(values, _NOT_WORDS, " "), " ")


def _arrow(texts: pd.Series):
    import pyarrow as pa

    values = pa.array(texts.astype(str), type=pa.large_string())  # no copy when the column is Arrow already
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def normalise_texts(texts: pd.Series) -> pd.Series:
    return pd.Series(_normalise(_arrow(texts)).to_pandas(), index=texts.index, dtype="str")


def _row_hashes(values) -> np.ndarray:
    """64-bit hashes of Arrow strings: set membership over millions of texts without Python string sets. Python's
    own string hash (SipHash, salted per process, which is all one profile needs): 13x faster than pandas' hash."""
    texts = values.to_numpy(zero_copy_only=False)
    return np.fromiter(map(hash, texts), dtype=np.int64, count=len(texts))


@dataclass
class TextSummary:
    """What the profile needs of a split's texts, a few bytes per row: built a chunk at a time, so that ten
    million texts are never all held as Python strings (or as a normalised copy)."""

    empty: int
    exact: np.ndarray  # row hashes of the texts
    normalised: np.ndarray  # and of the normalised texts
    substantive: np.ndarray  # the normalised text has SUBSTANTIVE_WORDS words or more

    @classmethod
    def of(cls, frame: pd.DataFrame, task: Task) -> TextSummary:
        import pyarrow.compute as pc

        empty, exact, normalised, substantive = 0, [], [], []
        for at in range(0, max(1, len(frame)), PROFILE_CHUNK):
            texts = _arrow(task.profile_texts(frame.iloc[at : at + PROFILE_CHUNK]))
            empty += pc.sum(pc.equal(pc.utf8_trim_whitespace(texts), "")).as_py() or 0
            normal = _normalise(texts)
            exact.append(_row_hashes(texts))
            normalised.append(_row_hashes(normal))
            words = pc.add(pc.count_substring(normal, " "), 1)
            substantive.append(pc.greater_equal(words, SUBSTANTIVE_WORDS).to_numpy(zero_copy_only=False))
        return cls(empty, np.concatenate(exact), np.concatenate(normalised), np.concatenate(substantive))


def _duplicates(hashes: np.ndarray) -> int:
    return len(hashes) - len(pd.unique(hashes))  # a hash table, not a sort: 18x faster than np.unique here


def length_stats(full_lengths: np.ndarray, max_length: int, rows: int | None = None) -> dict:
    """Token counts before truncation; from a sample when `rows` (the split's size) is larger than the sample, with
    the truncated count scaled to the split and the sample size recorded."""
    counts, edges = np.histogram(full_lengths, bins=min(50, max(1, len(np.unique(full_lengths)))))
    share = float((full_lengths > max_length).mean())
    stats = {
        "percentiles": {f"p{p}": int(np.percentile(full_lengths, p)) for p in PERCENTILES},
        "mean": float(full_lengths.mean()),
        "max": int(full_lengths.max()),
        "max_length": max_length,
        "truncated": int((full_lengths > max_length).sum()),
        "truncated_share": share,
        "histogram": {"counts": counts.tolist(), "edges": [float(e) for e in edges]},
    }
    if rows is not None and rows > len(full_lengths):
        stats.update(sampled=len(full_lengths), truncated=round(share * rows))
    return stats


def profile(
    frames: dict[str, pd.DataFrame],
    task: Task,
    spec: DataSpec,
    full_lengths: dict[str, np.ndarray] | None = None,
    max_length: int = 512,
) -> DataProfile:
    """Per split, and across splits (leakage). `full_lengths` are token counts before truncation."""
    texts = {name: TextSummary.of(frame, task) for name, frame in frames.items()}
    result: dict = {"task": task.kind, "splits": {}, "leakage": {}}
    for name, frame in frames.items():
        split: dict = {"rows": len(frame)}
        summary = texts[name]
        split["empty_texts"] = summary.empty
        split["duplicates"] = _duplicates(summary.exact)
        split["normalised_duplicates"] = _duplicates(summary.normalised)
        split["labelled"] = task.label_column in frame.columns
        if split["labelled"]:
            split.update(task.label_profile(frame, summary.exact))
            if name != "train" and "train" in result["splits"]:
                split.update(task.compare_to_train(result["splits"]["train"], SplitProfile(**split)))
        if full_lengths is not None and name in full_lengths:
            split["tokens"] = length_stats(np.asarray(full_lengths[name]), max_length, len(frame))
            if task.truncation == "windows":  # long texts are read whole, as windows, not cut
                split["tokens"]["windowed"] = split["tokens"]["truncated"]
        result["splits"][name] = SplitProfile(**split)
    if "train" in frames:
        train = texts["train"]
        for name, summary in texts.items():
            if name == "train":
                continue
            exact = int(np.isin(summary.exact, train.exact).sum())
            shared = np.isin(summary.normalised, train.normalised)
            # Short lines recur in any corpus (CoNLL's datelines and scores, SST's "good"): they are counted, but
            # only texts of some length are evidence of copied examples.
            substantive = int((shared & summary.substantive).sum())
            rows = max(1, len(frames[name]))
            result["leakage"][name] = Leak(
                exact=exact,
                normalised=int(shared.sum()),
                share=int(shared.sum()) / rows,
                substantive=substantive,
                substantive_share=substantive / rows,
            )
    if spec.tag_scheme is not None:
        result["tag_scheme"] = spec.tag_scheme
        result["repaired_tags"] = spec.repaired_tags
    return DataProfile(**result)


# Part of the profile cache key: profiles computed by an older definition are never read.
PROFILE_FORMAT = 3


def cached_profile(
    frames: dict[str, pd.DataFrame],
    task: Task,
    spec: DataSpec,
    full_lengths: dict[str, np.ndarray],
    max_length: int,
) -> DataProfile:
    """`profile`, read back when the same data, lengths and settings were profiled before (a rerun, a resume,
    `inspect` then `train`): ten million rows take half a minute to profile and two seconds to fingerprint."""
    digest = hashlib.sha256(to_json([PROFILE_FORMAT, task.kind, task.settings(), asdict(spec), max_length]).encode())
    for name, frame in frames.items():
        columns = [c for c in (*task.text_columns, task.label_column) if c in frame.columns]
        digest.update(name.encode() + frame_fingerprint(frame, columns))
        if name in full_lengths:
            digest.update(np.ascontiguousarray(full_lengths[name]).tobytes())
    path = cache_dir().parent / "profiles" / f"{digest.hexdigest()[:24]}.json"
    with contextlib.suppress(OSError, ValueError):  # a damaged entry (or one of another schema) is profiled again
        return DataProfile.model_validate_json(path.read_bytes())
    result = profile(frames, task, spec, full_lengths, max_length)
    with contextlib.suppress(OSError, BertfitError):  # a read-only or full cache only costs the next profile
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, to_json(result.dump()))
    return result


def summary_lines(report: DataProfile) -> list[str]:
    """One line per split, for the log and the card: its size, what its task kind says of its labels, lengths,
    duplicates and empties; then leakage and the tag scheme."""
    kind = TASKS[report.task]
    lines = []
    for name, split in report.splits.items():
        parts = [f"{name}: {split.rows:,} rows", *(kind.profile_parts(split) if split.labelled else [])]
        if split.tokens is not None:
            parts.append(token_line(split.tokens))
        if split.duplicates:
            parts.append(f"{split.duplicates:,} duplicates")
        if split.empty_texts:
            parts.append(f"{split.empty_texts:,} empty texts")
        lines.append("; ".join(parts))
    return lines + notes_lines(report, with_splits=False)


def token_line(tokens: Tokens) -> str:
    return (
        f"tokens p50 {tokens.percentiles['p50']}, p95 {tokens.percentiles['p95']}, "
        f"max {tokens.max}; {tokens.truncated_share:.1%} "
        + ("split into windows of" if tokens.windowed is not None else "truncated at")
        + f" {tokens.max_length}"
        + (f" (from a sample of {tokens.sampled:,} rows)" if tokens.sampled is not None else "")
    )


def notes_lines(report: DataProfile, with_splits: bool = True) -> list[str]:
    """Lines about problems across the splits (leakage, the tag scheme) and, `with_splits`, each kind's notes on
    a split's labels: what `bertfit inspect` prints beside its table."""
    lines = []
    if with_splits:
        kind = TASKS[report.task]
        for name, split in report.splits.items():
            lines += kind.profile_notes(name, split) if split.labelled else []
    for name, leak in report.leakage.items():
        if leak.normalised:
            lines.append(
                f"leakage: {leak.exact:,} exact and {leak.normalised:,} normalised duplicates of "
                f"train in {name} ({leak.share:.1%})"
            )
    if report.repaired_tags:
        lines.append(f"tag scheme {report.tag_scheme}: {report.repaired_tags:,} entity-initial I- tags repaired to B-")
    elif report.tag_scheme:
        lines.append(f"tag scheme: {report.tag_scheme}")
    return lines
