"""What the data means: the columns the user gave (`found`), and data with one label per example (`single_label`:
classification or regression), detected without touching the data and checked row by row. Kinds whose data has
a shape of its own (lists of tags, sets of labels) detect and read it in their modules (`tasks/<kind>.py`), with
the helpers here; `tasks.detect` asks each."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from bertfit.data.sources import KNOWN_LABEL_NAMES, LABEL_COLUMNS, Splits
from bertfit.errors import BertfitError

# Longer "texts" are nearly always a CSV quote left open, swallowing the rest of the file into one field.
MAX_TEXT_CHARS = 100_000


TEXT_COLUMNS = ("text", "sentence", "review", "tweet", "content", "document", "comment")


PAIR_COLUMNS = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("question", "passage"),
    ("text_a", "text_b"),
)


@dataclass
class DataSpec:
    """What the data means: the task and the columns and labels that carry it."""

    task: str
    text_columns: list[str]
    label_column: str
    label_names: list[str] | None  # None for regression
    tag_scheme: str | None = None
    repaired_tags: int = 0
    tag_id_names: list[str] | None = None  # integer tags (token task) or label ids (multi-label): each id's name
    io_tags: bool = False  # token task: tags without B-/I- prefixes, read as I-X
    notes: list[str] = field(default_factory=list)  # what detection decided that the user should know
    label_columns: list[str] | None = None  # multi-label given as 0/1 columns, one per label
    delimiter: str | None = None  # multi-label given as text such as 'sports|politics'


def is_list_column(frame: pd.DataFrame, column: str) -> bool:
    values = frame[column].dropna()
    return len(values) > 0 and isinstance(values.iloc[0], (list, tuple, np.ndarray))


@dataclass
class Found:
    """What detection knows of the data before it decides the kind: the training split, the columns the user gave
    (checked to exist) and the list columns; each task kind that reads data of its own shape asks it whether the
    data is of that shape (`Task.claims`) and reads it (`Task.read_data`)."""

    splits: Splits
    train_split: str
    text_columns: list[str] | None
    label_column: str | None
    label_names: list[str] | None
    strict: bool
    training: bool
    label_columns: list[str] | None
    delimiter: str

    @property
    def train(self) -> pd.DataFrame:
        return self.splits.frames[self.train_split]

    @property
    def file(self) -> str:
        return self.splits.files.get(self.train_split, self.train_split)

    @property
    def list_columns(self) -> list[str]:
        return [c for c in self.train.columns if is_list_column(self.train, c)]

    @property
    def label(self) -> str | None:
        """The label column: the one given, else the first of the usual names."""
        return self.label_column or next((c for c in LABEL_COLUMNS if c in self.train.columns), None)

    def require_label(self) -> str:
        label = self.label
        if label is None:
            columns = list(self.train.columns)
            raise BertfitError(
                _headerless(self.file, columns)
                or f"no label column in '{self.file}' (columns: {', '.join(map(str, columns))}); name it with "
                "--label-column"
            )
        return label

    def texts(self, label: str, drop: list[str] | None = None) -> list[str]:
        """The text columns: those given, else detected beside `label` (leaving out the columns `drop`)."""
        if self.text_columns is not None:
            return self.text_columns
        return detect_text_columns(self.train.drop(columns=drop or []), label, self.file)


def found(
    splits: Splits,
    train_split: str,
    text_columns: list[str] | None,
    label_column: str | None,
    label_names: list[str] | None,
    strict: bool = True,
    training: bool = True,
    label_columns: list[str] | None = None,
    delimiter: str = "|",
) -> Found:
    """The columns the user gave, checked against the training split.

    `strict=False` (for `bertfit inspect`) lets empty texts and unseen labels through to be counted;
    `training=False` (for `bertfit eval`) scores a split that may hold one class only, with the model's labels.
    """
    train = splits.frames[train_split]
    file = splits.files.get(train_split, train_split)
    columns = list(train.columns)
    if text_columns and len(set(text_columns)) < len(text_columns):
        raise BertfitError(
            f"text column '{text_columns[0]}' is given twice; give one text column, or two different ones for "
            "text pairs"
        )
    if text_columns and label_column in text_columns:
        raise BertfitError(f"column '{label_column}' is given as both the text and the label; choose another")
    label_given = [] if label_columns else [label_column] if label_column else []  # else a column made from them
    for given in (text_columns or []) + label_given + (label_columns or []):
        if given not in columns:
            raise BertfitError(f"column '{given}' not found in '{file}' (columns: {', '.join(map(str, columns))})")
    return Found(
        splits, train_split, text_columns, label_column, label_names, strict, training, label_columns, delimiter
    )


def single_label(found: Found, task: str) -> DataSpec:
    """Data with one label per example: classification or regression (`task`, or decided by the label values)."""
    splits, train = found.splits, found.train
    label = found.require_label()
    text_columns = found.texts(label)
    kind = task if task != "auto" else _classify_or_regress(train[label])
    _check_label_values(splits, label, kind)
    spec = DataSpec(kind, text_columns, label, None)
    if kind == "classification":
        spec = replace(spec, **_label_names(splits, label, found.label_names, found.training))
        if found.training and found.strict:
            _check_classes(train, found.file, spec, given_names=found.label_names is not None)
    check_rows(splits, spec, found.train_split, found.strict, found.training)
    return spec


# A label column with nearly as many values as rows holds ids or free text, not classes.
MAX_CLASS_SHARE = 0.5


def _check_classes(train: pd.DataFrame, file: str, spec: DataSpec, given_names: bool) -> None:
    """Classes a model could learn: not a value per row, and (for names the user gave) none without examples."""
    raw = train[spec.label_column].value_counts()  # per distinct value, then named: never a call per row
    counts = pd.Series(raw.to_numpy(), index=[label_key(v) for v in raw.index]).groupby(level=0).sum()
    if len(train) >= 20 and len(counts) > MAX_CLASS_SHARE * len(train):
        raise BertfitError(
            f"label column '{spec.label_column}' in '{file}' has {len(counts):,} different values in {len(train):,} "
            "rows: too many to be classes, each needs examples to learn from; name the real label with "
            "--label-column (or use --task regression for scores)"
        )
    if given_names:
        present = set(counts.index)
        numeric = all(is_number(key) for key in present)
        named = {spec.label_names[int(key)] for key in present} if numeric else present
        missing = [name for name in spec.label_names if name not in named]
        if missing:
            raise BertfitError(
                f"--label-names names {len(spec.label_names)} classes, but the training labels in '{file}' use "
                f"{len(named)}: {', '.join(repr(m) for m in missing)} has no example, so the model would learn a "
                "class it can never see; drop it from --label-names"
            )


def with_notes(splits: Splits, spec: DataSpec) -> Splits:
    """The splits with detection's notes added (a new object: the given splits are left as they are)."""
    return replace(splits, notes=[*splits.notes, *(n for n in spec.notes if n not in splits.notes)])


def _headerless(file: str, columns: list) -> str | None:
    """A file read with its first example as the header names its 'columns' after that example's values."""
    looks_like_data = [c for c in map(str, columns) if NUMBER.fullmatch(c.strip()) or len(c.split()) > 3]
    if not looks_like_data:
        return None
    return (
        f"'{file}' seems to have no header row: its first line ({', '.join(repr(str(c)[:40]) for c in columns)}) "
        "was read as column names; add a header line naming the columns, e.g. 'sentence' and 'label'"
    )


def detect_text_columns(train: pd.DataFrame, label: str, file: str) -> list[str]:
    columns = [c for c in train.columns if c != label]
    for pair in PAIR_COLUMNS:
        if all(c in columns for c in pair):
            return list(pair)
    singles = [c for c in TEXT_COLUMNS if c in columns]
    if len(singles) > 1:
        raise BertfitError(
            f"ambiguous text column in '{file}': {', '.join(repr(c) for c in singles)} could all "
            f"be the text; choose with --text-column {singles[0]}"
        )
    if singles:
        return singles
    strings = [c for c in columns if pd.api.types.is_string_dtype(train[c])]
    if len(strings) == 1:
        return strings
    raise BertfitError(
        _headerless(file, list(train.columns))
        or f"no text column in '{file}' (columns: {', '.join(map(str, train.columns))}); name it with --text-column"
    )


def _classify_or_regress(labels: pd.Series) -> str:
    values = labels.dropna()
    if pd.api.types.is_float_dtype(values) and len(values):
        numbers = values.to_numpy(float)
        if not np.all(np.mod(numbers[np.isfinite(numbers)], 1) == 0):
            return "regression"
    return "classification"


# Label cells that mean 'no label', whatever a spreadsheet or pandas wrote for it.
MISSING_WORDS = {"nan", "null", "none", "na", "n/a", "<na>"}


NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def is_number(value: object) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    return isinstance(value, str) and bool(NUMBER.fullmatch(value.strip()))


def label_key(value: object) -> str:
    """The class a raw label names: '1' for 1, 1.0 and "1"; the text itself otherwise."""
    if is_number(value) and float(value) == int(float(value)):
        return str(int(float(value)))
    return str(value)


def _first_rows(column: pd.Series):
    """(row, value) for the first row of each distinct value, in row order: a check that depends on the value alone
    then finds the same first bad row as a walk over every row, in a few calls rather than millions. Object columns
    may hold lists, which cannot be hashed: there every row is walked."""
    if column.dtype == object:
        return enumerate(column.tolist())
    codes, values = pd.factorize(column, use_na_sentinel=False)
    _, first = np.unique(codes, return_index=True)
    return zip(first.tolist(), list(values), strict=True)


def _rows_to_check(column: pd.Series):
    """The rows whose labels stand for all the others: the first of each distinct value, or for scores (a million
    distinct floats) the first missing, first infinite, first whole and first fractional number, which the checks
    tell apart."""
    if not pd.api.types.is_float_dtype(column):
        return _first_rows(column)
    values = column.to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        classes = np.where(np.isnan(values), 0, np.where(np.isinf(values), 3, np.where(np.mod(values, 1) == 0, 1, 2)))
    first = np.sort(np.unique(classes, return_index=True)[1])
    return ((int(row), column.iloc[row]) for row in first)


def _check_label_values(splits: Splits, label: str, kind: str) -> None:
    """One label per row, of one kind, present: each problem named by file and row."""
    first_kind: tuple[str, str, int, object] | None = None
    for split, frame in splits.frames.items():
        if label not in frame.columns:
            continue
        file = splits.files.get(split, split)
        for index, value in _rows_to_check(frame[label]):
            row = index + 1
            if isinstance(value, (list, tuple, dict, np.ndarray)):
                shape = "an object" if isinstance(value, dict) else "a list"
                raise BertfitError(
                    f"'{file}' row {row}: label is {shape} ({str(value)[:60]}); bertfit trains on "
                    "one label per example (a class name, a class id or a score)"
                )
            if (
                value is None
                or value is pd.NA
                or (isinstance(value, float) and np.isnan(value))
                or (isinstance(value, str) and (not value.strip() or value.strip().lower() in MISSING_WORDS))
            ):
                shown = (
                    "empty or NaN" if value is None or not isinstance(value, str) or not value.strip() else f"'{value}'"
                )
                raise BertfitError(f"'{file}' row {row}: label is {shown}; fill it in or drop the row")
            if isinstance(value, (float, np.floating)) and np.isinf(value):
                raise BertfitError(
                    f"'{file}' row {row}: label is {value}; labels must be finite numbers: fix or drop the row"
                )
            value_kind = "number" if is_number(value) else "text"
            if first_kind is None:
                first_kind = (value_kind, file, row, value)
            elif value_kind != first_kind[0]:
                raise BertfitError(
                    f"'{file}' row {row}: label {value!r} is {value_kind}, but labels are "
                    f"{first_kind[0]} elsewhere ({first_kind[3]!r} in '{first_kind[1]}' row "
                    f"{first_kind[2]}); label column '{label}' mixes numbers and strings: use one "
                    "kind of label"
                )
            if kind == "regression" and value_kind == "text":
                raise BertfitError(f"'{file}' row {row}: regression needs numeric labels in '{label}', got {value!r}")
            if kind == "classification" and value_kind == "number" and float(value) != int(float(value)):
                raise BertfitError(
                    f"'{file}' row {row}: label {value} is not a whole number, so it is not a class; "
                    "for scores use --task regression"
                )


def _label_names(splits: Splits, label: str, given: list[str] | None, training: bool) -> dict:
    """Class names: given ones (matched by name, else as ids 0..K-1), the dataset's own, or the values found."""
    keys = {
        split: [(row, label_key(value)) for row, value in _first_rows(frame[label])]
        for split, frame in splits.frames.items()
        if label in frame.columns
    }
    found = {key for pairs in keys.values() for _, key in pairs}
    numeric = all(
        is_number(v) for frame in splits.frames.values() if label in frame.columns for v in frame[label].head(1)
    )
    names = given or splits.label_names or KNOWN_LABEL_NAMES.get(splits.name)
    source = "--label-names" if given and training else "the model's labels" if given else "the dataset's label names"
    if names:
        if found <= set(names):
            return {"label_names": list(names)}
        if not numeric:
            unknown = sorted(found - set(names))
            raise BertfitError(f"labels {unknown} are not in {source} {list(names)}")
        for split, pairs in keys.items():
            row, key = next(((row, key) for row, key in pairs if not 0 <= int(key) < len(names)), (None, None))
            if row is not None:
                raise BertfitError(
                    f"'{splits.files.get(split, split)}' row {row + 1}: label {key} has no "
                    f"name: {source} ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}) "
                    f"take ids 0..{len(names) - 1}; fix the label" + (" or --label-names" if training else "")
                )
        return {"label_names": list(names)}
    if not numeric:
        return {"label_names": sorted(found)}
    ids = sorted(int(k) for k in found)
    if ids != list(range(len(ids))):
        shown = ", ".join(map(str, ids[:6])) + (", ..." if len(ids) > 6 else "")
        return {
            "label_names": [str(i) for i in ids],
            "notes": [f"integer labels ({shown}) are not 0..{len(ids) - 1}: each value is a class named by its number"],
        }
    return {"label_names": [str(i) for i in ids]}


def check_rows(splits: Splits, spec: DataSpec, train_split: str, strict: bool, training: bool = True) -> None:
    """Every split: texts present and non-empty, labels known to the training split, two classes to learn."""
    train_labels = None
    for split in [train_split] + [s for s in splits.frames if s != train_split]:
        frame, file = splits.frames[split], splits.files.get(split, split)
        for column in spec.text_columns + (spec.label_columns or [spec.label_column]):
            if column not in frame.columns:
                raise BertfitError(
                    f"column '{column}' is missing from '{file}' (columns: {', '.join(map(str, frame.columns))})"
                )
        for column in spec.text_columns:
            empty, long = _text_problems(frame[column])
            if len(empty) and strict:
                raise BertfitError(
                    f"'{file}' row {empty[0] + 1}: text column '{column}' is empty "
                    f"({len(empty)} such rows); drop or fill them"
                )
            if len(long) and strict:
                row, size = long[0]
                raise BertfitError(
                    f"'{file}' row {row + 1}: text in '{column}' is {size:,} characters "
                    f"(limit {MAX_TEXT_CHARS:,}); check for an unclosed quote, or split the document"
                )
        if spec.task == "classification":
            present = {label_key(value) for _, value in _first_rows(frame[spec.label_column])}
            if train_labels is None:
                train_labels = present
                if len(present) < 2 and training and strict:
                    raise BertfitError(
                        f"'{file}' has one class only ({next(iter(present))!r}); classification "
                        "needs examples of at least two classes (for scores, use --task regression)"
                    )
            unseen = sorted(present - train_labels)
            if unseen and strict and training:
                raise BertfitError(
                    f"'{file}' has labels never seen in training: {', '.join(unseen)}; the model cannot predict them"
                )


def _text_problems(texts: pd.Series, chunk: int = 1_000_000) -> tuple[list[int], list[tuple[int, int]]]:
    """Rows whose text is missing or blank, and rows (with their length) longer than MAX_TEXT_CHARS; a million
    rows at a time, so that the stripped copy of a ten-million-row column never exists whole."""
    empty: list[int] = []
    long: list[tuple[int, int]] = []
    for at in range(0, len(texts), chunk):
        part = texts.iloc[at : at + chunk]
        as_text = part.astype(str)
        blank = (part.isna() | as_text.str.strip().eq("")).to_numpy(dtype=bool)
        empty.extend((np.flatnonzero(blank) + at).tolist())
        sizes = as_text.str.len().to_numpy()
        long.extend((int(row) + at, int(sizes[row])) for row in np.flatnonzero(sizes > MAX_TEXT_CHARS)[:1])
    return empty, long
