"""`bertfit inspect`: the data profile of a dataset as it is, before any training."""

from __future__ import annotations

from dataclasses import dataclass

from bertfit import models, tasks
from bertfit.data import sources
from bertfit.runfiles import DataProfile
from bertfit.tasks import build_task
from bertfit.tasks.profile import cached_profile

# Token lengths of a larger split come from a seeded sample of this many rows: tokenizing ten million rows takes
# four minutes on two cores, and percentiles and the truncated share of a million rows are as good as exact.
LENGTH_SAMPLE = 1_000_000


@dataclass
class Inspection:
    dataset: str
    files: list[str]
    tokenizer: str
    profile: DataProfile

    def dump(self) -> dict:
        return {"dataset": self.dataset, "files": self.files, "tokenizer": self.tokenizer, **self.profile.dump()}


def inspect_source(
    source: str,
    model: str,
    max_length: int,
    task: str = "auto",
    text_columns: list[str] | None = None,
    label_column: str | None = None,
    label_columns: list[str] | None = None,
    delimiter: str = "|",
) -> Inspection:
    """Profile a dataset as it is (no split carved off): every split, against `train` when there is one."""
    splits = sources.load_splits(source)
    reference = "train" if "train" in splits.frames else next(iter(splits.frames))
    spec = tasks.detect(
        splits,
        reference,
        task,
        text_columns,
        label_column,
        None,
        strict=False,
        label_columns=label_columns,
        delimiter=delimiter,
    )
    splits = tasks.normalise(splits, spec)
    tokenizer = models.load_tokenizer(models.resolve_model(model))
    encoder = build_task(tasks.kind_of(task, spec), spec.text_columns, spec.label_column, spec.label_names, max_length)
    # Empty texts are counted by the profile rather than refused, so they are read as "".
    frames = {
        name: frame.fillna({c: "" for c in spec.text_columns if frame[c].isna().any()})
        for name, frame in splits.frames.items()
    }
    lengths = {
        name: encoder.encode_cached(sources.subsample(frame, LENGTH_SAMPLE, seed=0), tokenizer, True).full_lengths
        for name, frame in frames.items()
    }
    return Inspection(splits.name, splits.files, model, cached_profile(frames, encoder, spec, lengths, max_length))
