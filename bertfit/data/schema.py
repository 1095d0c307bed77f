"""What the data means: the task, the columns and the labels, detected without touching the data, and checked
row by row; `normalise` then returns the splits in the form the tasks read (tags as IOB2 names)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from bertfit.data.sources import KNOWN_LABEL_NAMES, LABEL_COLUMNS, Splits
from bertfit.data.tags import normalise_tags, order_tags
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


TOKEN_COLUMNS = ("tokens", "words")


TAG_COLUMNS = ("ner_tags", "tags", "labels", "ner", "label", "tag")


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


def _is_list_column(frame: pd.DataFrame, column: str) -> bool:
    values = frame[column].dropna()
    return len(values) > 0 and isinstance(values.iloc[0], (list, tuple, np.ndarray))


def detect(
    splits: Splits,
    train_split: str,
    task: str,
    text_columns: list[str] | None,
    label_column: str | None,
    label_names: list[str] | None,
    strict: bool = True,
    training: bool = True,
    label_columns: list[str] | None = None,
    delimiter: str = "|",
) -> DataSpec:
    """Decide the task and columns from the training split, then check every split against them.

    `strict=False` (for `bertfit inspect`) lets empty texts and unseen labels through to be counted;
    `training=False` (for `bertfit eval`) scores a split that may hold one class only, with the model's labels.
    Multi-label data is a list-of-labels column, text labels joined by `delimiter`, or `label_columns` of 0/1.
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
    if label_columns:
        if task not in ("auto", "multi_label"):
            raise BertfitError(f"label_columns gives multi-label data, but task is {task}: use --task multi_label")
        return _detect_multi_label(
            splits, train_split, text_columns, label_columns, None, label_names, strict, training
        )

    list_columns = [c for c in columns if _is_list_column(train, c)]
    if task == "token" or (task == "auto" and len(list_columns) >= 2):
        return _detect_token(splits, train_split, text_columns, label_column, list_columns, label_names)

    label = label_column or next((c for c in LABEL_COLUMNS if c in columns), None)
    if label is None:
        raise BertfitError(
            _headerless(file, columns)
            or f"no label column in '{file}' (columns: {', '.join(map(str, columns))}); name it with --label-column"
        )
    if text_columns is None:
        text_columns = _detect_text_columns(train, label, file)
    if task == "multi_label" or (task == "auto" and (label in list_columns or _joins_labels(train[label], delimiter))):
        found = (text_columns, label, None if label in list_columns else delimiter)
        return _detect_multi_label(splits, train_split, *found, label_names, strict, training)
    kind = task if task != "auto" else _classify_or_regress(train[label])
    _check_label_values(splits, label, kind)
    spec = DataSpec(kind, text_columns, label, None)
    if kind == "classification":
        spec = replace(spec, **_label_names(splits, label, label_names, training))
        if training and strict:
            _check_classes(train, file, spec, given_names=label_names is not None)
    _check_rows(splits, spec, train_split, strict, training)
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
        numeric = all(_is_number(key) for key in present)
        named = {spec.label_names[int(key)] for key in present} if numeric else present
        missing = [name for name in spec.label_names if name not in named]
        if missing:
            raise BertfitError(
                f"--label-names names {len(spec.label_names)} classes, but the training labels in '{file}' use "
                f"{len(named)}: {', '.join(repr(m) for m in missing)} has no example, so the model would learn a "
                "class it can never see; drop it from --label-names"
            )


def normalise(splits: Splits, spec: DataSpec) -> Splits:
    """The splits as the tasks read them: token tags named and in IOB2; detection's notes added. A new object:
    the given splits are left as they are."""
    notes = [*splits.notes, *(n for n in spec.notes if n not in splits.notes)]
    if spec.task == "multi_label":
        sets = _label_sets(splits, spec)
        frames = {split: frame.assign(**{spec.label_column: sets[split]}) for split, frame in splits.frames.items()}
        return replace(splits, frames=frames, notes=notes)
    if spec.task != "token":
        return replace(splits, notes=notes)
    rows = _token_rows(splits, spec.label_column, spec.tag_id_names, spec.io_tags)
    frames = {split: frame.assign(**{spec.label_column: rows[split][0]}) for split, frame in splits.frames.items()}
    return replace(splits, frames=frames, notes=notes)


def _headerless(file: str, columns: list) -> str | None:
    """A file read with its first example as the header names its 'columns' after that example's values."""
    looks_like_data = [c for c in map(str, columns) if NUMBER.fullmatch(c.strip()) or len(c.split()) > 3]
    if not looks_like_data:
        return None
    return (
        f"'{file}' seems to have no header row: its first line ({', '.join(repr(str(c)[:40]) for c in columns)}) "
        "was read as column names; add a header line naming the columns, e.g. 'sentence' and 'label'"
    )


def _detect_text_columns(train: pd.DataFrame, label: str, file: str) -> list[str]:
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
            value_kind = "number" if _is_number(value) else "text"
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
        _is_number(v) for frame in splits.frames.values() if label in frame.columns for v in frame[label].head(1)
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


def _check_rows(splits: Splits, spec: DataSpec, train_split: str, strict: bool, training: bool = True) -> None:
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


# ---------------------------------------------------------------- multi-label classification


def _joins_labels(labels: pd.Series, delimiter: str) -> bool:
    """Text labels of which some join several with the delimiter ('sports|politics'); read over distinct values."""
    if not (pd.api.types.is_string_dtype(labels) or labels.dtype == object):
        return False
    try:
        values = pd.unique(labels.dropna())
    except TypeError:  # objects (dicts) as labels: refused, with their row, by the single-label checks
        return False
    return any(isinstance(value, str) and delimiter in value for value in values)


def _detect_multi_label(
    splits: Splits,
    train_split: str,
    text_columns: list[str] | None,
    label: str | list[str],
    delimiter: str | None,
    given_names: list[str] | None,
    strict: bool,
    training: bool,
) -> DataSpec:
    """Multi-label: `label` is a list-of-labels column, a delimited text column (with `delimiter`), or a list of 0/1
    columns; the splits are later given one column holding each example's list of label names."""
    train, file = splits.frames[train_split], splits.files.get(train_split, train_split)
    label_columns = label if isinstance(label, list) else None
    column = next(c for c in ("labels", "bertfit_labels") if c not in train.columns) if label_columns else label
    if text_columns is None:
        text_columns = _detect_text_columns(train.drop(columns=label_columns or []), column, file)
    spec = DataSpec(
        "multi_label",
        text_columns,
        column,
        None,
        tag_id_names=given_names or splits.label_names,
        label_columns=label_columns,
        delimiter=delimiter,
    )
    if label_columns:
        spec.notes.append(f"multi-label: {len(label_columns)} 0/1 label columns ({', '.join(label_columns)})")
    elif delimiter is not None and _joins_labels(train[column], delimiter):
        spec.notes.append(
            f"multi-label: labels such as 'a{delimiter}b' in '{column}' are read as several labels "
            "(set label_delimiter to change the separator, or --task classification to keep them whole)"
        )
    sets = _label_sets(splits, spec)
    found = {split: {name for row in rows for name in row} for split, rows in sets.items()}
    names = label_columns or given_names or splits.label_names
    if names is not None:
        source = "--label-names" if given_names and training else "the model's labels" if given_names else "its names"
        for split, present in found.items():
            unknown = sorted(present - set(names))
            if unknown:
                raise BertfitError(
                    f"'{splits.files.get(split, split)}' has labels {unknown[:6]} not in {source} "
                    f"({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"
                )
    else:  # the labels found in training (for a profile, in any split), ids in number order
        present = found[train_split] if strict else set().union(*found.values())
        names = sorted(present, key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name))
    if training and strict:
        if len(found[train_split]) < 2:
            raise BertfitError(
                f"'{file}' has {len(found[train_split])} distinct label(s); multi-label classification needs "
                "two or more"
            )
        for split, present in found.items():
            unseen = sorted(present - found[train_split])
            if unseen:
                raise BertfitError(
                    f"'{splits.files.get(split, split)}' has labels never seen in training: {', '.join(unseen[:6])}; "
                    "the model cannot predict them"
                )
    spec.label_names = list(names)
    _check_rows(splits, spec, train_split, strict, training)
    return spec


def _label_sets(splits: Splits, spec: DataSpec) -> dict[str, list[list[str]]]:
    """Per split, each example's labels as names (integer ids named by the given names, else by their number);
    every malformed value named by file and row."""
    id_names = spec.tag_id_names
    sets = {}
    for split, frame in splits.frames.items():
        file = splits.files.get(split, split)
        if spec.label_columns:
            sets[split] = _column_sets(frame, spec.label_columns, file)
        elif spec.label_column in frame.columns:
            sets[split] = [
                _one_set(value, spec.delimiter, id_names, file, row)
                for row, value in enumerate(frame[spec.label_column].tolist(), start=1)
            ]
    return sets


def _one_set(value, delimiter: str | None, id_names: list[str] | None, file: str, row: int) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    elif delimiter is not None and (value is None or value is pd.NA or isinstance(value, (str, float, int))):
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
            return []  # an empty cell: an example with none of the labels
        items = str(value).split(delimiter) if isinstance(value, str) else [value]
    else:
        raise BertfitError(
            f"'{file}' row {row}: labels are {str(value)[:60]!r}, not a list; give each example a list of labels "
            f'(e.g. ["sports", "politics"]), or text such as \'sports|politics\''
        )
    names = []
    for item in items:
        if isinstance(item, str):
            if item.strip():
                names.append(item.strip())
        elif _is_number(item) and float(item) == int(float(item)):
            index = int(float(item))
            if id_names and not 0 <= index < len(id_names):
                raise BertfitError(
                    f"'{file}' row {row}: label id {index} has no name: the {len(id_names)} label names take ids "
                    f"0..{len(id_names) - 1}"
                )
            names.append(id_names[index] if id_names else str(index))
        else:
            raise BertfitError(f"'{file}' row {row}: label {item!r} is neither a name nor a label id")
    return list(dict.fromkeys(names))  # a label given twice is still one label


def _column_sets(frame: pd.DataFrame, columns: list[str], file: str) -> list[list[str]]:
    """Labels from 0/1 columns; anything but 0/1 (or true/false) is named by row and column."""
    flags = {}
    for column in columns:
        if column not in frame.columns:
            raise BertfitError(f"label column '{column}' is missing from '{file}'")
        values = frame[column]
        as_numbers = pd.to_numeric(
            values.map({True: 1, False: 0, "true": 1, "false": 0}).fillna(values), errors="coerce"
        )
        bad = np.flatnonzero(~as_numbers.isin([0, 1]).to_numpy())
        if len(bad):
            raise BertfitError(
                f"'{file}' row {bad[0] + 1}: label column '{column}' holds {values.iloc[bad[0]]!r}; "
                "label columns hold 0 or 1 (is the example of that label?)"
            )
        flags[column] = as_numbers.to_numpy(dtype=np.int8)
    matrix = np.stack([flags[c] for c in columns], axis=1) if len(frame) else np.zeros((0, len(columns)), np.int8)
    return [[columns[j] for j in np.flatnonzero(row)] for row in matrix]


# ---------------------------------------------------------------- token classification


def _detect_token(
    splits: Splits,
    train_split: str,
    text_columns: list[str] | None,
    label_column: str | None,
    list_columns: list[str],
    given_names: list[str] | None,
) -> DataSpec:
    file = splits.files.get(train_split, train_split)
    tokens = (text_columns or [None])[0] or next((c for c in TOKEN_COLUMNS if c in list_columns), None)
    tags = label_column or next((c for c in TAG_COLUMNS if c in list_columns and c != tokens), None)
    if tokens is None or tags is None:
        raise BertfitError(
            f"token classification needs a list-of-tokens and a list-of-tags column in '{file}' "
            f"(list columns: {', '.join(list_columns) or 'none'}); name them with "
            "--text-column and --label-column"
        )
    id_names = None
    for split, frame in splits.frames.items():
        split_file = splits.files.get(split, split)
        for number, (words, labels) in enumerate(zip(frame[tokens], frame[tags]), start=1):
            for what, value in (("tokens", words), ("tags", labels)):
                if not isinstance(value, (list, tuple, np.ndarray)):
                    raise BertfitError(
                        f"'{split_file}' sentence {number}: {what} are {value!r}, not a list; give "
                        f"each sentence a list of {what}"
                    )
            if len(words) == 0:
                raise BertfitError(f"'{split_file}' sentence {number} is empty; remove it")
            if len(words) != len(labels):
                raise BertfitError(
                    f"'{split_file}' sentence {number} has {len(words)} tokens but {len(labels)} "
                    "tags; each token needs exactly one tag"
                )
        if len(frame) and not isinstance(frame[tags].iloc[0][0], str):
            id_names = given_names or splits.label_names
            if not id_names:
                raise BertfitError(f"tags in '{split_file}' are integers without names; give --label-names")
            for number, row in enumerate(frame[tags], start=1):
                bad = next((t for t in row if not _is_number(t) or not 0 <= int(t) < len(id_names)), None)
                if bad is not None:
                    raise BertfitError(
                        f"'{split_file}' sentence {number}: tag {bad!r} has no name: the "
                        f"{len(id_names)} tag names take ids 0..{len(id_names) - 1}; fix the tag or "
                        "--label-names"
                    )
    io_tags = _io_scheme(splits, {split: _named_tags(frame[tags], id_names) for split, frame in splits.frames.items()})
    rows = _token_rows(splits, tags, id_names, io_tags)
    scheme, repaired = rows[train_split][1], sum(fixed for _, _, fixed in rows.values())
    notes = []
    if io_tags:
        scheme, repaired = "IO", 0
        notes.append(
            "tags have no B-/I- prefixes (the IO scheme): read as I-X and converted to IOB2, so adjacent "
            "entities of one type merge"
        )
    elif scheme == "IOB1":
        notes.append("tags are IOB1: converted to IOB2 (an entity-initial I-X became B-X)")
    names = (
        given_names
        if given_names and isinstance(given_names[0], str) and not io_tags
        else order_tags({t for row in rows[train_split][0] for t in row})
    )
    known = set(names)
    for split, (converted, _, _) in rows.items():
        for number, row in enumerate(converted, start=1):
            unknown = [t for t in row if t not in known]
            if unknown:
                raise BertfitError(
                    f"'{splits.files.get(split, split)}' sentence {number}: tag '{unknown[0]}' "
                    "never appears in the training data"
                )
    return DataSpec("token", [tokens], tags, names, scheme, repaired, id_names, io_tags, notes)


def _named_tags(column: pd.Series, id_names: list[str] | None) -> list[list[str]]:
    if len(column) and not isinstance(column.iloc[0][0], str):
        return [[id_names[int(t)] for t in row] for row in column]
    return [list(row) for row in column]


def _token_rows(
    splits: Splits, tags: str, id_names: list[str] | None, io_tags: bool
) -> dict[str, tuple[list[list[str]], str, int]]:
    """Per split: the tags as IOB2 names, the scheme found and how many entity-initial I- tags were repaired."""
    rows = {}
    for split, frame in splits.frames.items():
        named = _named_tags(frame[tags], id_names)
        if io_tags:
            named = [[t if t == "O" else "I-" + t for t in row] for row in named]
        rows[split] = normalise_tags(named)
    return rows


def _io_scheme(splits: Splits, named: dict[str, list[list[str]]]) -> bool:
    """True when no tag carries a B-/I-/E-/S- prefix (plain PER, LOC, O); a mix of both is refused."""
    prefixed = plain = None
    for split, rows in named.items():
        for number, row in enumerate(rows, start=1):
            for tag in row:
                if tag == "O":
                    continue
                if str(tag)[:2] in ("B-", "I-", "E-", "S-"):
                    prefixed = prefixed or (split, number, tag)
                else:
                    plain = plain or (split, number, tag)
    if prefixed and plain:
        raise BertfitError(
            f"'{splits.files.get(plain[0], plain[0])}' sentence {plain[1]}: tag '{plain[2]}' has no "
            f"B-/I- prefix while others do (e.g. '{prefixed[2]}'); use one tag scheme"
        )
    return bool(plain)
