"""Where examples come from: files, folders, the offline mirror or the hub; and what they mean (task, columns, labels)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from bertfit.errors import BertfitError

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


def _read_text(path: Path) -> str:
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
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
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


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == 1 and line.lstrip().startswith("["):
                return pd.DataFrame(json.loads(_read_text(path)))
            raise BertfitError(f"{path}:{number}: not a JSON object ({err.msg}); write one JSON object per line") from None
        if not isinstance(row, dict):
            raise BertfitError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return pd.DataFrame(rows)


def _read_delimited(path: Path, kind: str) -> pd.DataFrame:
    text = _read_text(path)
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
    if frame.shape[1] == 1:
        other, other_kind = ("\t", "tsv") if kind == "csv" else (",", "csv")
        if other in header:
            raise BertfitError(f"file '{path}' looks {other_kind.upper()}-separated but is read as "
                               f"{kind.upper()}; rename it to '{path.stem}.{other_kind}'")
    return frame


def _parquet_label_names(path: Path) -> Optional[list[str]]:
    """Parquet files written by `datasets` carry the ClassLabel names in their schema metadata."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    if b"huggingface" not in metadata:
        return None
    features = json.loads(metadata[b"huggingface"]).get("info", {}).get("features", {})
    for name in LABEL_COLUMNS:
        names = features.get(name, {}).get("names")
        if names:
            return list(names)
    return None


def read_file(path: Path) -> pd.DataFrame:
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise BertfitError(f"file '{path}' has an unsupported extension; use one of "
                           f"{', '.join(sorted(set(READERS)))}")
    if path.stat().st_size == 0:
        raise BertfitError(f"file '{path}' is empty; it needs at least one example")
    if kind == "parquet":
        frame = pd.read_parquet(path)
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
           label_column: Optional[str], label_names: Optional[list[str]], strict: bool = True) -> DataSpec:
    """Decide the task and columns from the training split, then check every split against them.

    `strict=False` (for `bertfit inspect`) lets empty texts and unseen labels through to be counted.
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
        raise BertfitError(f"no label column in '{file}' (columns: {', '.join(map(str, columns))}); "
                           "name it with --label-column")
    if text_columns is None:
        text_columns = _detect_text_columns(train, label, file)
    kind = task if task != "auto" else _classify_or_regress(train[label])
    spec = DataSpec(kind, text_columns, label, None)
    if kind == "classification":
        spec.label_names = _label_names(splits, label, label_names)
    _check_rows(splits, spec, train_split, strict)
    return spec


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
    raise BertfitError(f"no text column in '{file}' (columns: {', '.join(map(str, train.columns))}); "
                       "name it with --text-column")


def _classify_or_regress(labels: pd.Series) -> str:
    values = labels.dropna()
    if pd.api.types.is_float_dtype(values) and len(values) and not np.all(np.mod(values.to_numpy(float), 1) == 0):
        return "regression"
    return "classification"


def _label_kinds(values: pd.Series) -> set[str]:
    return {"string" if isinstance(v, str) else "number" for v in values.dropna()}


def _label_names(splits: Splits, label: str, given: Optional[list[str]]) -> list[str]:
    values = pd.concat([f[label] for f in splits.frames.values() if label in f.columns], ignore_index=True)
    kinds = _label_kinds(values)
    if kinds == {"string"}:  # CSV/TSV cells are all strings: "0" next to "pos" is the same mix
        numeric = values.dropna().astype(str).str.fullmatch(r"-?\d+(\.\d+)?")
        if numeric.any() and not numeric.all():
            kinds = {"string", "number"}
        elif numeric.all():
            values = values.astype(float).astype(int)
            kinds = {"number"}
    if kinds == {"string", "number"}:
        raise BertfitError(f"label column '{label}' mixes numbers and strings; use one kind of label")
    if "string" in kinds:
        names = sorted(set(values.dropna().astype(str)))
        if given:
            unknown = sorted(set(names) - set(given))
            if unknown:
                raise BertfitError(f"labels {unknown} are not in --label-names {given}")
            return list(given)
        return names
    ids = values.dropna().astype(int)
    largest = int(ids.max()) if len(ids) else 0
    names = given or splits.label_names or KNOWN_LABEL_NAMES.get(splits.name)
    if names is None:
        return [str(i) for i in range(largest + 1)]
    if largest >= len(names) or int(ids.min()) < 0:
        raise BertfitError(f"label id {largest} in column '{label}' has no name ({len(names)} names: {names}); "
                           "fix --label-names")
    return list(names)


def _check_rows(splits: Splits, spec: DataSpec, train_split: str, strict: bool) -> None:
    """Every split: texts present and non-empty, labels present and known to the training split."""
    def label_set(labels: pd.Series) -> set[str]:
        return set(labels.astype(str)) if "string" in _label_kinds(labels) else {str(int(v)) for v in labels}

    train_labels = None
    for split in [train_split] + [s for s in splits.frames if s != train_split]:
        frame, file = splits.frames[split], splits.files.get(split, split)
        for column in spec.text_columns + [spec.label_column]:
            if column not in frame.columns:
                raise BertfitError(f"column '{column}' is missing from '{file}' (columns: "
                                   f"{', '.join(map(str, frame.columns))})")
        labels = frame[spec.label_column]
        missing = labels.isna() | labels.astype(str).str.strip().eq("")
        if missing.any():
            row = int(np.flatnonzero(missing.to_numpy())[0])
            raise BertfitError(f"'{file}' row {row + 1}: label is empty or NaN; fill it in or drop the row")
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
        if spec.task == "regression" and not pd.api.types.is_numeric_dtype(labels):
            raise BertfitError(f"'{file}': regression needs numeric labels in '{spec.label_column}'")
        if spec.task == "classification":
            if train_labels is None:
                train_labels = label_set(labels)
            unseen = sorted(label_set(labels) - train_labels)
            if unseen and strict:
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
            if len(words) == 0:
                raise BertfitError(f"'{split_file}' sentence {number} is empty; remove it")
            if len(words) != len(labels):
                raise BertfitError(f"'{split_file}' sentence {number} has {len(words)} tokens but {len(labels)} "
                                   "tags; each token needs exactly one tag")
        if len(frame) and not isinstance(frame[tags].iloc[0][0], str):
            names = given_names or splits.label_names
            if not names:
                raise BertfitError(f"tags in '{split_file}' are integers without names; give --label-names")
            frame[tags] = [[names[int(t)] for t in row] for row in frame[tags]]
    scheme, repaired = "IOB2", 0
    for split, frame in splits.frames.items():
        converted, scheme_here, fixed = normalise_tags([list(t) for t in frame[tags]])
        frame[tags] = converted
        repaired += fixed
        if split == train_split:
            scheme = scheme_here
    if scheme == "IOB1":
        splits.notes.append("tags are IOB1: converted to IOB2 (an entity-initial I-X became B-X)")
    names = given_names if given_names and isinstance(given_names[0], str) else order_tags(
        {t for row in train[tags] for t in row})
    known = set(names)
    for split, frame in splits.frames.items():
        for number, row in enumerate(frame[tags], start=1):
            unknown = [t for t in row if t not in known]
            if unknown:
                raise BertfitError(f"'{splits.files.get(split, split)}' sentence {number}: tag '{unknown[0]}' "
                                   "never appears in the training data")
    return DataSpec("token", [tokens], tags, names, scheme, repaired)


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
