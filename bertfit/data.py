"""Where examples come from: files, folders, the offline mirror or the hub; and what they mean (task, columns, labels)."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from bertfit.errors import BertfitError, first_line

READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet",
           ".conll": "conll", ".bio": "conll", ".iob": "conll"}
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev", "testa"),
               "test": ("test", "testb")}

# Longer "texts" are nearly always a CSV quote left open, swallowing the rest of the file into one field.
MAX_TEXT_CHARS = 100_000
TEXT_COLUMNS = ("text", "sentence", "review", "tweet", "content", "document", "comment")
PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"),
                ("question1", "question2"), ("question", "passage"), ("text_a", "text_b"))
LABEL_COLUMNS = ("label", "labels", "sentiment", "target", "score", "class", "category")
TOKEN_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("ner_tags", "tags", "labels", "ner", "label", "tag")

# Hub ids resolve to mirror folders under BERTFIT_DATA_DIR by these names before the hub is tried.
MIRROR_ALIASES = {"glue/sst2": "sst2", "tweet_eval/sentiment": "tweet_sentiment", "glue/cola": "cola",
                  "glue/mrpc": "mrpc", "glue/rte": "rte", "glue/stsb": "stsb", "stanfordnlp/imdb": "imdb",
                  "eriktks/conll2003": "conll2003", "glue/mnli": "mnli", "nyu-mll/glue/sst2": "sst2"}
# Datasets whose hub id is `name/config` rather than `owner/name`, and short names whose hub home moved.
HUB_CONFIG_DATASETS = {"glue": "nyu-mll/glue", "tweet_eval": "cardiffnlp/tweet_eval", "super_glue": "super_glue"}
HUB_NAMES = {"imdb": "stanfordnlp/imdb", "conll2003": "eriktks/conll2003", "sst2": "stanfordnlp/sst2"}
# Label names of well-known datasets whose mirrors store integer labels only (the hub's ClassLabel names).
KNOWN_LABEL_NAMES = {
    "sst2": ["negative", "positive"], "imdb": ["neg", "pos"], "cola": ["unacceptable", "acceptable"],
    "tweet_sentiment": ["negative", "neutral", "positive"], "mrpc": ["not_equivalent", "equivalent"],
    "rte": ["entailment", "not_entailment"], "mnli": ["entailment", "neutral", "contradiction"],
}


@dataclass
class Splits:
    """The raw splits of one dataset, with where each came from (for error messages and the card)."""

    name: str
    frames: dict[str, pd.DataFrame]
    files: dict[str, str]
    label_names: Optional[list[str]] = None
    notes: list[str] = field(default_factory=list)


@dataclass
class DataSpec:
    """What the data means: the task and the columns and labels that carry it."""

    task: str
    text_columns: list[str]
    label_column: str
    label_names: Optional[list[str]]  # None for regression
    tag_scheme: Optional[str] = None
    repaired_tags: int = 0


# ---------------------------------------------------------------- reading files

def _undecodable_row(path: Path, err: UnicodeDecodeError, raw: bytes) -> str:
    line = raw[: err.start].count(b"\n") + 1
    return f"file '{path}' is not UTF-8 text: byte 0x{raw[err.start]:02x} on line {line}; re-save it as UTF-8"


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BertfitError(_undecodable_row(path, err, raw)) from None


def read_conll(path: Path) -> pd.DataFrame:
    """Token-per-line files: first field the token, last field the tag, a blank line between sentences."""
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        fields = line.split()
        if not fields:
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2:
            raise BertfitError(f"{path}:{number}: sentence {len(sentences) + 1} has a token without a tag "
                               f"('{line.strip()}'); each line needs 'TOKEN TAG'")
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        sentences.append((tokens, tags))
    return pd.DataFrame({"tokens": [s[0] for s in sentences], "ner_tags": [s[1] for s in sentences]})


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    if twice is not None:
        raise DuplicateKey(twice)
    return dict(pairs)


class DuplicateKey(ValueError):
    pass


def _read_jsonl(path: Path) -> pd.DataFrame:
    text = read_text(path)
    if text.lstrip().startswith("["):  # a .json file holding one array of objects
        try:
            rows = json.loads(text, object_pairs_hook=_unique_keys)
        except DuplicateKey as twice:
            raise BertfitError(f"{path}: key '{twice}' appears twice in one object; keep one") from None
        except json.JSONDecodeError as err:
            raise BertfitError(f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno}); fix the "
                               "file or write one JSON object per line") from None
        bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None) if isinstance(rows, list) else 0
        if bad is not None:
            raise BertfitError(f"{path}: item {bad + 1} of the JSON array is not an object; each example needs "
                               "named fields, e.g. {\"text\": ..., \"label\": ...}")
        return pd.DataFrame(rows)
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except DuplicateKey as twice:
            raise BertfitError(f"{path}:{number}: key '{twice}' appears twice in one object; keep one") from None
        except json.JSONDecodeError as err:
            raise BertfitError(f"{path}:{number}: not a JSON object ({err.msg}); write one JSON object per line") from None
        if not isinstance(row, dict):
            raise BertfitError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return pd.DataFrame(rows)


def _read_delimited(path: Path, kind: str) -> pd.DataFrame:
    text = read_text(path)
    sep = "\t" if kind == "tsv" else ","
    # TSVs from GLUE contain bare quotes inside sentences: read them literally.
    quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL
    try:
        frame = pd.read_csv(path, sep=sep, quoting=quoting, keep_default_na=False, na_values=[""],
                            encoding="utf-8", dtype_backend="numpy_nullable")
    except pd.errors.EmptyDataError:
        raise BertfitError(f"file '{path}' is empty; it needs a header row and at least one example") from None
    except pd.errors.ParserError as err:
        detail = str(err).strip().splitlines()[-1].split("C error: ")[-1]
        shown_sep = "tab" if kind == "tsv" else "comma"
        raise BertfitError(f"file '{path}' has rows with the wrong number of fields ({detail}); "
                           f"quote fields that contain a {shown_sep}") from None
    header = text.splitlines()[0] if text else ""
    names = next(csv.reader([header], delimiter=sep, quoting=quoting), [])
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise BertfitError(f"file '{path}' has two columns named '{twice}'; rename one in the header")
    if frame.shape[1] == 1:
        other, other_kind = ("\t", "tsv") if kind == "csv" else (",", "csv")
        if other in header:
            raise BertfitError(f"file '{path}' looks {other_kind.upper()}-separated but is read as "
                               f"{kind.upper()}; rename it to '{path.stem}.{other_kind}'")
    return frame


def _parquet_label_names(path: Path) -> Optional[list[str]]:
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


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise BertfitError(f"file '{path}' is not a readable Parquet file ({first_line(err, 120)}); it may be "
                           "truncated: write it again") from None


def read_file(path: Path) -> pd.DataFrame:
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise BertfitError(f"file '{path}' has an unsupported extension; use one of "
                           f"{', '.join(sorted(set(READERS)))}")
    if path.stat().st_size == 0:
        raise BertfitError(f"file '{path}' is empty; it needs at least one example")
    if kind == "parquet":
        frame = _read_parquet(path)
    elif kind == "jsonl":
        frame = _read_jsonl(path)
    elif kind == "conll":
        frame = read_conll(path)
    else:
        frame = _read_delimited(path, kind)
    if len(frame) == 0:
        raise BertfitError(f"file '{path}' has a header but no rows; add examples")
    return frame


# ---------------------------------------------------------------- finding the splits

def _split_of(stem: str) -> Optional[str]:
    stem = stem.lower()
    for split, names in SPLIT_NAMES.items():
        if stem in names or any(stem.endswith(f"_{n}") or stem.endswith(f"-{n}") or stem.endswith(f".{n}")
                                for n in names):
            return split
    return None


def _read_folder(folder: Path) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in READERS)
    if not files:
        raise BertfitError(f"folder '{folder}' has no data files; expected train/validation/test files "
                           f"with one of {', '.join(sorted(set(READERS)))}")
    by_split: dict[str, Path] = {}
    for path in files:
        split = _split_of(path.stem) or path.stem
        if split in by_split:
            raise BertfitError(f"folder '{folder}' has two files for split '{split}': "
                               f"'{by_split[split].name}' and '{path.name}'; keep one")
        by_split[split] = path
    if len(by_split) == 1 and "train" not in by_split:
        by_split = {"train": next(iter(by_split.values()))}
    return {split: read_file(path) for split, path in by_split.items()}, {s: str(p) for s, p in by_split.items()}


def mirror_folder(name: str) -> Optional[Path]:
    root = os.environ.get("BERTFIT_DATA_DIR")
    if not root:
        return None
    candidates = [MIRROR_ALIASES.get(name), name, name.replace("/", "_"), name.split("/")[-1]]
    for candidate in candidates:
        if candidate and (Path(root) / candidate).is_dir():
            return Path(root) / candidate
    return None


def _load_hub(name: str) -> Splits:
    try:
        import datasets
    except ImportError:
        raise BertfitError(f"dataset '{name}' is not a file, folder or BERTFIT_DATA_DIR mirror, and loading from "
                           "the hub needs the `datasets` package: pip install datasets") from None
    first, _, rest = name.partition("/")
    args = (HUB_CONFIG_DATASETS[first], rest) if first in HUB_CONFIG_DATASETS and rest else (HUB_NAMES.get(name, name),)
    try:
        loaded = datasets.load_dataset(*args)
    except Exception as err:  # the hub raises many types; all mean 'cannot get it'
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise BertfitError(f"dataset '{name}' not found locally (no such file or folder, no BERTFIT_DATA_DIR "
                           f"mirror) and the hub is unreachable or has no such dataset: {reason}") from None
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
    looks_like_path = source.startswith((".", "/", "~")) or source.lower().endswith(tuple(READERS))
    if looks_like_path:  # hub ids are `name` or `owner/name`; anything else that is missing is a typo'd path
        raise BertfitError(f"data file or folder '{source}' not found; check the path")
    mirror = mirror_folder(source)
    if mirror is not None:
        frames, files = _read_folder(mirror)
        return Splits(mirror.name, frames, files, _folder_label_names(mirror, files))
    return _load_hub(source)


def local_path(source: Optional[str]) -> Optional[Path]:
    """Where a dataset lives on this machine (a file, a folder or its mirror), if it does."""
    if not source:
        return None
    path = Path(source).expanduser()
    return path if path.exists() else mirror_folder(source)


def _folder_label_names(folder: Path, files: dict[str, str]) -> Optional[list[str]]:
    for file in files.values():
        if file.endswith(".parquet") and (names := _parquet_label_names(Path(file))):
            return names
    return KNOWN_LABEL_NAMES.get(folder.name)


def require_split(splits: Splits, train_split: str) -> None:
    if train_split not in splits.frames:
        raise BertfitError(f"dataset '{splits.name}' has no '{train_split}' split (it has: {', '.join(splits.frames)}); "
                           f"choose one with --set train_split=NAME")


def choose_splits(splits: Splits, train_split: str, eval_split: Optional[str], test_split: Optional[str],
                  seed: int, validation_fraction: float) -> tuple[str, str, Optional[str]]:
    """Name the train/eval/test splits, carving a seeded validation split off train when there is none."""
    frames = splits.frames
    require_split(splits, train_split)
    if eval_split == "validation" and "validation" not in frames:
        eval_split = None  # carved, as the first run did (a resolved recipe names the carved split)
    if eval_split is None:
        eval_split = "validation" if "validation" in frames and train_split != "validation" else None
    elif eval_split not in frames:
        raise BertfitError(f"dataset '{splits.name}' has no '{eval_split}' split (it has: {', '.join(frames)})")
    if eval_split is None:
        train = frames[train_split]
        if len(train) < 2:
            raise BertfitError(f"dataset '{splits.name}' has {len(train)} example; need at least 2 to carve "
                               "off a validation split")
        order = np.random.default_rng(seed).permutation(len(train))
        n_eval = max(1, int(round(len(train) * validation_fraction)))
        frames["validation"] = train.iloc[np.sort(order[:n_eval])].reset_index(drop=True)
        frames[train_split] = train.iloc[np.sort(order[n_eval:])].reset_index(drop=True)
        splits.files["validation"] = f"{splits.files[train_split]} (seeded {validation_fraction:.0%} carved off)"
        splits.notes.append(f"no validation split: {n_eval} examples carved off '{train_split}' with seed {seed}")
        eval_split = "validation"
    if test_split == "none":  # asked for no test scoring
        test_split = None
    elif test_split is None:
        test_split = "test" if "test" in frames and "test" not in (train_split, eval_split) else None
    elif test_split not in frames:
        raise BertfitError(f"dataset '{splits.name}' has no '{test_split}' split (it has: {', '.join(frames)}); "
                           "use --set test_split=none to score no test split")
    return train_split, eval_split, test_split


def subsample(frame: pd.DataFrame, limit: Optional[int], seed: int) -> pd.DataFrame:
    """A seeded random subset, kept in file order (files are often sorted by label)."""
    if limit is None or limit >= len(frame):
        return frame
    keep = np.sort(np.random.default_rng(seed).permutation(len(frame))[:limit])
    return frame.iloc[keep].reset_index(drop=True)


# ---------------------------------------------------------------- what the columns mean

def _is_list_column(frame: pd.DataFrame, column: str) -> bool:
    values = frame[column].dropna()
    return len(values) > 0 and isinstance(values.iloc[0], (list, tuple, np.ndarray))


def detect(splits: Splits, train_split: str, task: str, text_columns: Optional[list[str]],
           label_column: Optional[str], label_names: Optional[list[str]], strict: bool = True,
           training: bool = True) -> DataSpec:
    """Decide the task and columns from the training split, then check every split against them.

    `strict=False` (for `bertfit inspect`) lets empty texts and unseen labels through to be counted;
    `training=False` (for `bertfit eval`) scores a split that may hold one class only, with the model's labels.
    """
    train = splits.frames[train_split]
    file = splits.files.get(train_split, train_split)
    columns = list(train.columns)
    for given in (text_columns or []) + ([label_column] if label_column else []):
        if given not in columns:
            raise BertfitError(f"column '{given}' not found in '{file}' (columns: {', '.join(map(str, columns))})")

    list_columns = [c for c in columns if _is_list_column(train, c)]
    if task == "token" or (task == "auto" and len(list_columns) >= 2):
        return _detect_token(splits, train_split, text_columns, label_column, list_columns, label_names)

    label = label_column or next((c for c in LABEL_COLUMNS if c in columns), None)
    if label is None:
        raise BertfitError(_headerless(file, columns) or f"no label column in '{file}' (columns: "
                           f"{', '.join(map(str, columns))}); name it with --label-column")
    if text_columns is None:
        text_columns = _detect_text_columns(train, label, file)
    kind = task if task != "auto" else _classify_or_regress(train[label])
    spec = DataSpec(kind, text_columns, label, None)
    _check_label_values(splits, label, kind)
    if kind == "classification":
        spec.label_names = _label_names(splits, label, label_names, training)
    _check_rows(splits, spec, train_split, strict, training)
    return spec


def _headerless(file: str, columns: list) -> Optional[str]:
    """A file read with its first example as the header names its 'columns' after that example's values."""
    looks_like_data = [c for c in map(str, columns) if NUMBER.fullmatch(c.strip()) or len(c.split()) > 3]
    if not looks_like_data:
        return None
    return (f"'{file}' seems to have no header row: its first line ({', '.join(repr(str(c)[:40]) for c in columns)}) "
            "was read as column names; add a header line naming the columns, e.g. 'sentence' and 'label'")


def _detect_text_columns(train: pd.DataFrame, label: str, file: str) -> list[str]:
    columns = [c for c in train.columns if c != label]
    for pair in PAIR_COLUMNS:
        if all(c in columns for c in pair):
            return list(pair)
    singles = [c for c in TEXT_COLUMNS if c in columns]
    if len(singles) > 1:
        raise BertfitError(f"ambiguous text column in '{file}': {', '.join(repr(c) for c in singles)} could all "
                           f"be the text; choose with --text-column {singles[0]}")
    if singles:
        return singles
    strings = [c for c in columns if pd.api.types.is_string_dtype(train[c])]
    if len(strings) == 1:
        return strings
    raise BertfitError(_headerless(file, list(train.columns)) or f"no text column in '{file}' (columns: "
                       f"{', '.join(map(str, train.columns))}); name it with --text-column")


def _classify_or_regress(labels: pd.Series) -> str:
    values = labels.dropna()
    if pd.api.types.is_float_dtype(values) and len(values) and not np.all(np.mod(values.to_numpy(float), 1) == 0):
        return "regression"
    return "classification"


# Label cells that mean 'no label', whatever a spreadsheet or pandas wrote for it.
MISSING_WORDS = {"nan", "null", "none", "na", "n/a", "<na>"}
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _is_number(value: object) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    return isinstance(value, str) and bool(NUMBER.fullmatch(value.strip()))


def label_key(value: object) -> str:
    """The class a raw label names: '1' for 1, 1.0 and "1"; the text itself otherwise."""
    if _is_number(value) and float(value) == int(float(value)):
        return str(int(float(value)))
    return str(value)


def _check_label_values(splits: Splits, label: str, kind: str) -> None:
    """One label per row, of one kind, present: each problem named by file and row."""
    first_kind: Optional[tuple[str, str, int, object]] = None
    for split, frame in splits.frames.items():
        if label not in frame.columns:
            continue
        file = splits.files.get(split, split)
        for row, value in enumerate(frame[label].tolist(), start=1):
            if isinstance(value, (list, tuple, dict, np.ndarray)):
                shape = "an object" if isinstance(value, dict) else "a list"
                raise BertfitError(f"'{file}' row {row}: label is {shape} ({str(value)[:60]}); bertfit trains on "
                                   "one label per example (a class name, a class id or a score)")
            if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) or (
                    isinstance(value, str) and (not value.strip() or value.strip().lower() in MISSING_WORDS)):
                shown = "empty or NaN" if value is None or not isinstance(value, str) or not value.strip() \
                    else f"'{value}'"
                raise BertfitError(f"'{file}' row {row}: label is {shown}; fill it in or drop the row")
            value_kind = "number" if _is_number(value) else "text"
            if first_kind is None:
                first_kind = (value_kind, file, row, value)
            elif value_kind != first_kind[0]:
                raise BertfitError(f"'{file}' row {row}: label {value!r} is {value_kind}, but labels are "
                                   f"{first_kind[0]} elsewhere ({first_kind[3]!r} in '{first_kind[1]}' row "
                                   f"{first_kind[2]}); label column '{label}' mixes numbers and strings: use one "
                                   "kind of label")
            if kind == "regression" and value_kind == "text":
                raise BertfitError(f"'{file}' row {row}: regression needs numeric labels in '{label}', got "
                                   f"{value!r}")
            if kind == "classification" and value_kind == "number" and float(value) != int(float(value)):
                raise BertfitError(f"'{file}' row {row}: label {value} is not a whole number, so it is not a class; "
                                   "for scores use --task regression")


def _label_names(splits: Splits, label: str, given: Optional[list[str]], training: bool) -> list[str]:
    """Class names: given ones (matched by name, else as ids 0..K-1), the dataset's own, or the values found."""
    keys = {split: frame[label].map(label_key) for split, frame in splits.frames.items() if label in frame.columns}
    found = set().union(*(set(k) for k in keys.values()))
    numeric = all(_is_number(v) for frame in splits.frames.values() if label in frame.columns
                  for v in frame[label].head(1))
    names = given or splits.label_names or KNOWN_LABEL_NAMES.get(splits.name)
    source = "--label-names" if given and training else "the model's labels" if given else "the dataset's label names"
    if names:
        if found <= set(names):
            return list(names)
        if not numeric:
            unknown = sorted(found - set(names))
            raise BertfitError(f"labels {unknown} are not in {source} {list(names)}")
        for split, series in keys.items():
            ids = series.astype(int)
            outside = np.flatnonzero(((ids < 0) | (ids >= len(names))).to_numpy())
            if len(outside):
                row = int(outside[0])
                raise BertfitError(f"'{splits.files.get(split, split)}' row {row + 1}: label {ids.iloc[row]} has no "
                                   f"name: {source} ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}) "
                                   f"take ids 0..{len(names) - 1}; fix the label"
                                   + (" or --label-names" if training else ""))
        return list(names)
    if not numeric:
        return sorted(found)
    ids = sorted(int(k) for k in found)
    if ids != list(range(len(ids))):
        shown = ", ".join(map(str, ids[:6])) + (", ..." if len(ids) > 6 else "")
        splits.notes.append(f"integer labels ({shown}) are not 0..{len(ids) - 1}: each value is a class named by "
                            "its number")
    return [str(i) for i in ids]


def _check_rows(splits: Splits, spec: DataSpec, train_split: str, strict: bool, training: bool = True) -> None:
    """Every split: texts present and non-empty, labels known to the training split, two classes to learn."""
    train_labels = None
    for split in [train_split] + [s for s in splits.frames if s != train_split]:
        frame, file = splits.frames[split], splits.files.get(split, split)
        for column in spec.text_columns + [spec.label_column]:
            if column not in frame.columns:
                raise BertfitError(f"column '{column}' is missing from '{file}' (columns: "
                                   f"{', '.join(map(str, frame.columns))})")
        for column in spec.text_columns:
            texts = frame[column]
            empty = texts.isna() | texts.astype(str).str.strip().eq("")
            if empty.any() and strict:
                row = int(np.flatnonzero(empty.to_numpy())[0])
                raise BertfitError(f"'{file}' row {row + 1}: text column '{column}' is empty "
                                   f"({int(empty.sum())} such rows); drop or fill them")
            sizes = texts.astype(str).str.len()
            if (sizes > MAX_TEXT_CHARS).any() and strict:
                row = int(np.flatnonzero((sizes > MAX_TEXT_CHARS).to_numpy())[0])
                raise BertfitError(f"'{file}' row {row + 1}: text in '{column}' is {int(sizes.iloc[row]):,} characters "
                                   f"(limit {MAX_TEXT_CHARS:,}); check for an unclosed quote, or split the document")
        if spec.task == "classification":
            present = set(frame[spec.label_column].map(label_key))
            if train_labels is None:
                train_labels = present
                if len(present) < 2 and training and strict:
                    raise BertfitError(f"'{file}' has one class only ({next(iter(present))!r}); classification "
                                       "needs examples of at least two classes (for scores, use --task regression)")
            unseen = sorted(present - train_labels)
            if unseen and strict and training:
                raise BertfitError(f"'{file}' has labels never seen in training: {', '.join(unseen)}; "
                                   "the model cannot predict them")


# ---------------------------------------------------------------- token classification

def _detect_token(splits: Splits, train_split: str, text_columns: Optional[list[str]], label_column: Optional[str],
                  list_columns: list[str], given_names: Optional[list[str]]) -> DataSpec:
    train = splits.frames[train_split]
    file = splits.files.get(train_split, train_split)
    tokens = (text_columns or [None])[0] or next((c for c in TOKEN_COLUMNS if c in list_columns), None)
    tags = label_column or next((c for c in TAG_COLUMNS if c in list_columns and c != tokens), None)
    if tokens is None or tags is None:
        raise BertfitError(f"token classification needs a list-of-tokens and a list-of-tags column in '{file}' "
                           f"(list columns: {', '.join(list_columns) or 'none'}); name them with "
                           "--text-column and --label-column")
    for split, frame in splits.frames.items():
        split_file = splits.files.get(split, split)
        for number, (words, labels) in enumerate(zip(frame[tokens], frame[tags]), start=1):
            for what, value in (("tokens", words), ("tags", labels)):
                if not isinstance(value, (list, tuple, np.ndarray)):
                    raise BertfitError(f"'{split_file}' sentence {number}: {what} are {value!r}, not a list; give "
                                       f"each sentence a list of {what}")
            if len(words) == 0:
                raise BertfitError(f"'{split_file}' sentence {number} is empty; remove it")
            if len(words) != len(labels):
                raise BertfitError(f"'{split_file}' sentence {number} has {len(words)} tokens but {len(labels)} "
                                   "tags; each token needs exactly one tag")
        if len(frame) and not isinstance(frame[tags].iloc[0][0], str):
            names = given_names or splits.label_names
            if not names:
                raise BertfitError(f"tags in '{split_file}' are integers without names; give --label-names")
            for number, row in enumerate(frame[tags], start=1):
                bad = next((t for t in row if not _is_number(t) or not 0 <= int(t) < len(names)), None)
                if bad is not None:
                    raise BertfitError(f"'{split_file}' sentence {number}: tag {bad!r} has no name: the {len(names)} "
                                       f"tag names take ids 0..{len(names) - 1}; fix the tag or --label-names")
            frame[tags] = [[names[int(t)] for t in row] for row in frame[tags]]
    io_scheme = _io_scheme(splits, tags)
    scheme, repaired = "IOB2", 0
    for split, frame in splits.frames.items():
        rows = [list(t) for t in frame[tags]]
        if io_scheme:
            rows = [[t if t == "O" else "I-" + t for t in row] for row in rows]
        converted, scheme_here, fixed = normalise_tags(rows)
        frame[tags] = converted
        repaired += fixed
        if split == train_split:
            scheme = scheme_here
    if io_scheme:
        scheme, repaired = "IO", 0
        splits.notes.append("tags have no B-/I- prefixes (the IO scheme): read as I-X and converted to IOB2, so "
                            "adjacent entities of one type merge")
    elif scheme == "IOB1":
        splits.notes.append("tags are IOB1: converted to IOB2 (an entity-initial I-X became B-X)")
    names = given_names if given_names and isinstance(given_names[0], str) and not io_scheme else order_tags(
        {t for row in train[tags] for t in row})
    known = set(names)
    for split, frame in splits.frames.items():
        for number, row in enumerate(frame[tags], start=1):
            unknown = [t for t in row if t not in known]
            if unknown:
                raise BertfitError(f"'{splits.files.get(split, split)}' sentence {number}: tag '{unknown[0]}' "
                                   "never appears in the training data")
    return DataSpec("token", [tokens], tags, names, scheme, repaired)


def _io_scheme(splits: Splits, tags: str) -> bool:
    """True when no tag carries a B-/I-/E-/S- prefix (plain PER, LOC, O); a mix of both is refused."""
    prefixed = plain = None
    for split, frame in splits.frames.items():
        for number, row in enumerate(frame[tags], start=1):
            for tag in row:
                if tag == "O":
                    continue
                if str(tag)[:2] in ("B-", "I-", "E-", "S-"):
                    prefixed = prefixed or (split, number, tag)
                else:
                    plain = plain or (split, number, tag)
    if prefixed and plain:
        raise BertfitError(f"'{splits.files.get(plain[0], plain[0])}' sentence {plain[1]}: tag '{plain[2]}' has no "
                           f"B-/I- prefix while others do (e.g. '{prefixed[2]}'); use one tag scheme")
    return bool(plain)


def order_tags(tags: set[str]) -> list[str]:
    """'O' first, then by entity type with B before I (E, S), the order HF datasets use."""
    prefix_rank = {"B": 0, "I": 1, "E": 2, "S": 3}

    def key(tag: str) -> tuple:
        if tag == "O":
            return ("", -1)
        prefix, _, kind = tag.partition("-")
        return (kind or prefix, prefix_rank.get(prefix, 9))

    return sorted(tags, key=key)


def normalise_tags(sentences: list[list[str]]) -> tuple[list[list[str]], str, int]:
    """Recognise IOB1/IOB2/BIOES; rewrite entity-initial I-X as B-X (IOB1 conversion or IOB2 repair).

    Returns the rewritten tags, the detected scheme and how many tags an IOB2 input needed repaired.
    """
    if any(t[:2] in ("S-", "E-") for row in sentences for t in row):
        return sentences, "BIOES", 0
    initial_i = initial_b = 0
    converted = []
    for row in sentences:
        out, previous = [], "O"
        for tag in row:
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                initial_i += 1
                tag = "B-" + tag[2:]
            elif tag.startswith("B-"):
                initial_b += 1
            out.append(tag)
            previous = tag
        converted.append(out)
    scheme = "IOB1" if initial_i > initial_b else "IOB2"
    return converted, scheme, 0 if scheme == "IOB1" else initial_i
