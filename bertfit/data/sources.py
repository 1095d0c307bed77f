"""Where a dataset's splits come from: a file, a folder of split files, the BERTFIT_DATA_DIR mirror, or the hub;
and which split trains, which validates, which tests."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bertfit.data.readers import READERS, read_file
from bertfit.errors import BertfitError
from bertfit.runfiles import Corrections

SPLIT_NAMES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev", "testa"),
    "test": ("test", "testb"),
}

# `gold_label`: GLUE's MNLI/SNLI files, whose `label1`..`label5` are the annotators' votes.
LABEL_COLUMNS = ("label", "labels", "gold_label", "sentiment", "target", "score", "class", "category")


# Hub ids resolve to mirror folders under BERTFIT_DATA_DIR by these names before the hub is tried.
MIRROR_ALIASES = {
    "glue/sst2": "sst2",
    "tweet_eval/sentiment": "tweet_sentiment",
    "glue/cola": "cola",
    "glue/mrpc": "mrpc",
    "glue/rte": "rte",
    "glue/stsb": "stsb",
    "stanfordnlp/imdb": "imdb",
    "eriktks/conll2003": "conll2003",
    "glue/mnli": "mnli",
    "nyu-mll/glue/sst2": "sst2",
}


# What each mirror folder is on the Hub (id, config), for model cards.
HUB_DATASETS = {
    **{name: ("nyu-mll/glue", name) for name in ("sst2", "cola", "mrpc", "rte", "stsb", "mnli", "qnli", "qqp")},
    "imdb": ("stanfordnlp/imdb", None),
    "tweet_sentiment": ("cardiffnlp/tweet_eval", "sentiment"),
    "conll2003": ("eriktks/conll2003", None),
    "go_emotions": ("google-research-datasets/go_emotions", "simplified"),
}
# Datasets whose hub id is `name/config` rather than `owner/name`, and short names whose hub home moved.
HUB_CONFIG_DATASETS = {"glue": "nyu-mll/glue", "tweet_eval": "cardiffnlp/tweet_eval", "super_glue": "super_glue"}


HUB_NAMES = {"imdb": "stanfordnlp/imdb", "conll2003": "eriktks/conll2003", "sst2": "stanfordnlp/sst2"}


# Label names of well-known datasets whose mirrors store integer labels only (the hub's ClassLabel names).
KNOWN_LABEL_NAMES = {
    "sst2": ["negative", "positive"],
    "imdb": ["neg", "pos"],
    "cola": ["unacceptable", "acceptable"],
    "tweet_sentiment": ["negative", "neutral", "positive"],
    "mrpc": ["not_equivalent", "equivalent"],
    "rte": ["entailment", "not_entailment"],
    "mnli": ["entailment", "neutral", "contradiction"],
}


@dataclass
class Splits:
    """The raw splits of one dataset, with where each came from (for error messages and the card)."""

    name: str
    frames: dict[str, pd.DataFrame]
    files: dict[str, str]
    label_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    corrections: Corrections | None = None  # a review's decisions applied to them (`--corrections`)


def _split_of(stem: str) -> str | None:
    """`dev.tsv` is validation, `mnli_dev` too; a qualified split keeps its qualifier in the canonical name:
    GLUE's `dev_matched` is the hub's `validation_matched`."""
    stem = stem.lower()
    for split, names in SPLIT_NAMES.items():
        if stem in names or any(
            stem.endswith(f"_{n}") or stem.endswith(f"-{n}") or stem.endswith(f".{n}") for n in names
        ):
            return split
    for split, names in SPLIT_NAMES.items():
        qualified = next((stem[len(n) + 1 :] for n in names if stem.startswith(f"{n}_")), None)
        if qualified:
            return f"{split}_{qualified}"
    return None


def _read_folder(folder: Path) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in READERS)
    if not files:
        raise BertfitError(
            f"folder '{folder}' has no data files; expected train/validation/test files "
            f"with one of {', '.join(sorted(set(READERS)))}"
        )
    by_split: dict[str, Path] = {}
    for path in files:
        split = _split_of(path.stem) or path.stem
        if split in by_split:
            raise BertfitError(
                f"folder '{folder}' has two files for split '{split}': "
                f"'{by_split[split].name}' and '{path.name}'; keep one"
            )
        by_split[split] = path
    if len(by_split) == 1 and "train" not in by_split:
        by_split = {"train": next(iter(by_split.values()))}
    return {split: read_file(path) for split, path in by_split.items()}, {s: str(p) for s, p in by_split.items()}


def mirror_folder(name: str) -> Path | None:
    root = os.environ.get("BERTFIT_DATA_DIR")
    if not root:
        return None
    candidates = [MIRROR_ALIASES.get(name), name, name.replace("/", "_"), name.split("/")[-1]]
    for candidate in candidates:
        if candidate and (Path(root) / candidate).is_dir():
            return Path(root) / candidate
    return None


def _reach_hub(name: str) -> None:
    """Before `datasets` tries (and retries for half a minute, a log line each time): one connection to the hub,
    a few seconds at most. Offline mode is left to `datasets`, which then reads its own cache."""
    from urllib.parse import urlsplit

    if any(os.environ.get(name, "0") not in ("0", "") for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as err:
        root = os.environ.get("BERTFIT_DATA_DIR")
        mirror = f"no folder '{name}' in BERTFIT_DATA_DIR ({root})" if root else "BERTFIT_DATA_DIR is not set"
        raise BertfitError(
            f"dataset '{name}' not found locally (no such file or folder; {mirror}) and the hub "
            f"({endpoint.hostname}) cannot be reached ({err.strerror or type(err).__name__}); check the name or the "
            "path, or connect"
        ) from None


# How long the hub may take to accept a connection before it counts as unreachable.
HUB_PROBE_SECONDS = 5


def _load_hub(name: str) -> Splits:
    try:
        import datasets
    except ImportError:
        raise BertfitError(
            f"dataset '{name}' is not a file, folder or BERTFIT_DATA_DIR mirror, and loading from "
            "the hub needs the `datasets` package: pip install datasets"
        ) from None
    first, _, rest = name.partition("/")
    args = (HUB_CONFIG_DATASETS[first], rest) if first in HUB_CONFIG_DATASETS and rest else (HUB_NAMES.get(name, name),)
    _reach_hub(name)
    try:
        loaded = datasets.load_dataset(*args)
    except Exception as err:  # the hub raises many types; all mean 'cannot get it'
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        root = os.environ.get("BERTFIT_DATA_DIR")
        mirror = f"no folder '{name}' in BERTFIT_DATA_DIR ({root})" if root else "BERTFIT_DATA_DIR is not set"
        raise BertfitError(
            f"dataset '{name}' not found locally (no such file or folder; {mirror}) and the hub is unreachable or "
            f"has no such dataset: {reason}"
        ) from None
    frames, label_names = {}, None
    for split, dataset in loaded.items():
        frame = dataset.to_pandas()
        for column, feature in dataset.features.items():
            names = getattr(feature, "names", None)
            inner = getattr(feature, "feature", None)
            if names and column in LABEL_COLUMNS:
                label_names = list(names)
            elif inner is not None and getattr(inner, "names", None):
                frame[column] = [[inner.names[i] for i in row] for row in frame[column]]
        frames[_split_of(split) or split] = frame
    return Splits(name, frames, {split: f"hub:{name}[{split}]" for split in frames}, label_names)


def load_splits(source: str) -> Splits:
    """A file, a folder of split files, a BERTFIT_DATA_DIR mirror, or a hub id, in that order."""
    path = Path(source)
    if path.is_file():
        return Splits(path.stem, {"train": read_file(path)}, {"train": str(path)})
    if path.is_dir():
        frames, files = _read_folder(path)
        return Splits(path.name, frames, files, _folder_label_names(path, files))
    if path.exists():  # a FIFO, a device such as /dev/zero, a socket: nothing that holds rows
        raise BertfitError(f"data '{source}' is not a regular file or a folder; give a data file or folder")
    looks_like_path = source.startswith((".", "/", "~")) or source.lower().endswith(tuple(READERS))
    if looks_like_path:  # hub ids are `name` or `owner/name`; anything else that is missing is a typo'd path
        raise BertfitError(f"data file or folder '{source}' not found; check the path")
    mirror = mirror_folder(source)
    if mirror is not None:
        frames, files = _read_folder(mirror)
        return Splits(mirror.name, frames, files, _folder_label_names(mirror, files))
    return _load_hub(source)


def hub_dataset(name: str) -> tuple[str, str | None] | None:
    """The Hub id and config of a dataset known by a mirror name or a hub alias; None for local files."""
    return HUB_DATASETS.get(MIRROR_ALIASES.get(name, name))


def local_path(source: str | None) -> Path | None:
    """Where a dataset lives on this machine (a file, a folder or its mirror), if it does."""
    if not source:
        return None
    path = Path(source).expanduser()
    return path if path.exists() else mirror_folder(source)


def _parquet_label_names(path: Path) -> list[str] | None:
    """Parquet files written by `datasets` carry the ClassLabel names in their schema metadata."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):
        return None
    if b"huggingface" not in metadata:
        return None
    features = json.loads(metadata[b"huggingface"]).get("info", {}).get("features", {})
    for name in LABEL_COLUMNS:
        names = features.get(name, {}).get("names")
        if names:
            return list(names)
    return None


def _folder_label_names(folder: Path, files: dict[str, str]) -> list[str] | None:
    for file in files.values():
        if file.endswith(".parquet") and (names := _parquet_label_names(Path(file))):
            return names
    return KNOWN_LABEL_NAMES.get(folder.name)


def require_split(splits: Splits, train_split: str) -> None:
    if train_split not in splits.frames:
        raise BertfitError(
            f"dataset '{splits.name}' has no '{train_split}' split (it has: {', '.join(splits.frames)}); "
            f"choose one with --set train_split=NAME"
        )


def choose_splits(
    splits: Splits,
    train_split: str,
    eval_split: str | None,
    test_split: str | None,
    seed: int,
    validation_fraction: float,
    stratify_by: str | None = None,
) -> tuple[Splits, str, str, str | None]:
    """Name the train/eval/test splits, carving a seeded validation split off train when there is none: stratified
    by the `stratify_by` column (class labels) where every class has two examples, so that a rare class is in both.

    Returns new Splits (the given ones are left as they are) and the three names."""
    frames = splits.frames
    require_split(splits, train_split)
    if eval_split == "validation" and "validation" not in frames:
        eval_split = None  # carved, as the first run did (a resolved recipe names the carved split)
    if eval_split is None:
        qualified = sorted(name for name in frames if name.startswith("validation_"))
        if "validation" in frames and train_split != "validation":
            eval_split = "validation"
        elif qualified:  # MNLI: validation_matched before validation_mismatched
            eval_split = qualified[0]
    elif eval_split not in frames:
        raise BertfitError(f"dataset '{splits.name}' has no '{eval_split}' split (it has: {', '.join(frames)})")
    if eval_split is None:
        train = frames[train_split]
        if len(train) < 2:
            raise BertfitError(
                f"dataset '{splits.name}' has {len(train)} example; need at least 2 to carve off a validation split"
            )
        n_eval = max(1, int(round(len(train) * validation_fraction)))
        keep, carved, how = _carve(train, n_eval, seed, stratify_by)
        splits = replace(
            splits,
            frames={
                **frames,
                "validation": train.iloc[carved].reset_index(drop=True),
                train_split: train.iloc[keep].reset_index(drop=True),
            },
            files={
                **splits.files,
                "validation": f"{splits.files[train_split]} (seeded {validation_fraction:.0%} carved off{how})",
            },
            notes=[
                *splits.notes,
                f"no validation split: {n_eval} examples carved off '{train_split}' with seed {seed}{how}",
            ],
        )
        frames, eval_split = splits.frames, "validation"
    if test_split == "none":  # asked for no test scoring
        test_split = None
    elif test_split is None:
        test_split = "test" if "test" in frames and "test" not in (train_split, eval_split) else None
    elif test_split not in frames:
        raise BertfitError(
            f"dataset '{splits.name}' has no '{test_split}' split (it has: {', '.join(frames)}); "
            "use --set test_split=none to score no test split"
        )
    return splits, train_split, eval_split, test_split


def _carve(frame: pd.DataFrame, n_eval: int, seed: int, stratify_by: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Row numbers to keep and to carve off, each in file order, and how they were chosen. Over indices: the frame
    is copied once, by the caller, whatever its size."""
    rows = np.arange(len(frame))
    if stratify_by is not None and stratify_by in frame.columns:
        from sklearn.model_selection import train_test_split

        classes = pd.factorize(frame[stratify_by])[0]
        counts = np.bincount(classes[classes >= 0]) if len(classes) else np.zeros(0, np.int64)
        n_classes = len(counts)
        # sklearn needs two examples of each class and room for one of each on both sides.
        if len(counts) and counts.min() >= 2 and n_classes <= n_eval <= len(frame) - n_classes:
            keep, carved = train_test_split(rows, test_size=n_eval, random_state=seed, stratify=classes)
            return np.sort(keep), np.sort(carved), ", stratified by label"
    order = np.random.default_rng(seed).permutation(len(frame))
    return np.sort(order[n_eval:]), np.sort(order[:n_eval]), ""


def subsample(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A seeded random subset, kept in file order (files are often sorted by label)."""
    if limit is None or limit >= len(frame):
        return frame
    keep = np.sort(np.random.default_rng(seed).permutation(len(frame))[:limit])
    return frame.iloc[keep].reset_index(drop=True)
