"""Reading one data file into a frame: CSV/TSV, JSON lines or arrays, Parquet, CoNLL; each defect named by file
and line."""

from __future__ import annotations

import codecs
import csv
import json
from pathlib import Path

import pandas as pd

from bertfit.errors import BertfitError, first_line

READERS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".conll": "conll",
    ".bio": "conll",
    ".iob": "conll",
}


def _undecodable_row(path: Path, err: UnicodeDecodeError, raw: bytes, first_line: int = 1) -> str:
    line = raw[: err.start].count(b"\n") + first_line
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
            raise BertfitError(
                f"{path}:{number}: sentence {len(sentences) + 1} has a token without a tag "
                f"('{line.strip()}'); each line needs 'TOKEN TAG'"
            )
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
            raise BertfitError(
                f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno}); fix the "
                "file or write one JSON object per line"
            ) from None
        bad = (
            next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None) if isinstance(rows, list) else 0
        )
        if bad is not None:
            raise BertfitError(
                f"{path}: item {bad + 1} of the JSON array is not an object; each example needs "
                'named fields, e.g. {"text": ..., "label": ...}'
            )
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
            raise BertfitError(
                f"{path}:{number}: not a JSON object ({err.msg}); write one JSON object per line"
            ) from None
        if not isinstance(row, dict):
            raise BertfitError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return pd.DataFrame(rows)


def check_utf8(path: Path, chunk_bytes: int = 1 << 24) -> None:
    """The file decodes as UTF-8, checked in chunks: a 600 MB CSV is never held as one string."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:  # err.object: the bytes held back from the last chunk, then this one
                raise BertfitError(_undecodable_row(path, err, err.object, first_line=line)) from None
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:
            raise BertfitError(_undecodable_row(path, err, err.object, first_line=line)) from None


def _read_delimited(path: Path, kind: str) -> pd.DataFrame:
    check_utf8(path)
    with path.open(encoding="utf-8", newline="") as handle:
        header = handle.readline().rstrip("\r\n")
    sep = "\t" if kind == "tsv" else ","
    # TSVs from GLUE contain bare quotes inside sentences: read them literally.
    quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            quoting=quoting,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8",
            dtype_backend="numpy_nullable",
        )
    except pd.errors.EmptyDataError:
        raise BertfitError(f"file '{path}' is empty; it needs a header row and at least one example") from None
    except pd.errors.ParserError as err:
        detail = str(err).strip().splitlines()[-1].split("C error: ")[-1]
        shown_sep = "tab" if kind == "tsv" else "comma"
        raise BertfitError(
            f"file '{path}' has rows with the wrong number of fields ({detail}); "
            f"quote fields that contain a {shown_sep}"
        ) from None
    names = next(csv.reader([header], delimiter=sep, quoting=quoting), [])
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise BertfitError(f"file '{path}' has two columns named '{twice}'; rename one in the header")
    if frame.shape[1] == 1:
        other, other_kind = ("\t", "tsv") if kind == "csv" else (",", "csv")
        if other in header:
            raise BertfitError(
                f"file '{path}' looks {other_kind.upper()}-separated but is read as "
                f"{kind.upper()}; rename it to '{path.stem}.{other_kind}'"
            )
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise BertfitError(
            f"file '{path}' is not a readable Parquet file ({first_line(err, 120)}); it may be "
            "truncated: write it again"
        ) from None


def read_file(path: Path) -> pd.DataFrame:
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise BertfitError(f"file '{path}' has an unsupported extension; use one of {', '.join(sorted(set(READERS)))}")
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
