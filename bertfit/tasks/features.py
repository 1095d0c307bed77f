"""Features on disk: tokenized examples as flat arrays (ragged rows share one offsets array), written chunk by chunk
into a cache entry keyed by the content they came from, and read back by row with pread. What every task kind
encodes into; nothing here knows a kind."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

IGNORE = -100
# Part of the cache key: entries written in an older layout are never read.
CACHE_FORMAT = 2


class Ragged:
    """Rows of different lengths in one flat array and their offsets. A few bytes per token and no Python object
    per row, so ten million examples fit; the arrays can be memory-mapped from the feature cache, so DDP ranks on
    one machine share one copy."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    @classmethod
    def from_rows(cls, rows: list, dtype, offsets: np.ndarray | None = None) -> Ragged:
        if offsets is None:
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum([len(row) for row in rows], out=offsets[1:])
        flat = np.concatenate(rows).astype(dtype, copy=False) if len(rows) else np.zeros(0, dtype=dtype)
        return cls(flat, offsets)

    @classmethod
    def from_lists(cls, rows: list[list[int]], dtype) -> Ragged:
        """From the tokenizer's lists of ints, without an array per row."""
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=int(offsets[-1]))
        return cls(flat, offsets)

    @classmethod
    def concat(cls, parts: list[Ragged]) -> Ragged:
        starts = np.cumsum([0] + [len(part.flat) for part in parts[:-1]])
        offsets = np.concatenate([[0]] + [part.offsets[1:] + start for part, start in zip(parts, starts)])
        return cls(np.concatenate([part.flat for part in parts]), offsets.astype(np.int64))

    def __getitem__(self, row: int) -> np.ndarray:
        start, end = self.offsets[row : row + 2]  # one read where the offsets are on disk
        return self.flat[start:end]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __iter__(self):
        return (self[row] for row in range(len(self)))

    def lengths(self) -> np.ndarray:
        """int32: the only per-example array a training process keeps in memory, besides the epoch's order."""
        return np.diff(np.asarray(self.offsets)).astype(np.int32)


@dataclass
class Features:
    """Tokenized examples, kept on the host. A token-task example may span several windows (features)."""

    input_ids: Ragged
    labels: np.ndarray | Ragged  # per feature (a 0/1 row for multi-label), or per token (token task)
    example_ids: np.ndarray
    full_lengths: np.ndarray  # before truncation, for the data profile
    token_type_ids: Ragged | None = None
    word_ids: Ragged | None = None  # token task: the word a position predicts, -1 elsewhere
    fingerprint: str | None = None  # the cache key: the data, tokenizer and settings these features came from
    lengths: np.ndarray = field(init=False)
    items: np.ndarray = field(init=False)  # loss terms each feature contributes (1, or its labelled tokens)

    def __post_init__(self) -> None:
        self.lengths = self.input_ids.lengths()
        if isinstance(self.labels, Ragged):
            labelled = (np.asarray(self.labels.flat) != IGNORE).astype(np.int64)
            self.items = np.add.reduceat(labelled, self.labels.offsets[:-1]) if len(self.labels) else labelled
        else:  # one loss term per feature: a read-only view of a single 1, not an array per example
            self.items = np.broadcast_to(np.int64(1), (len(self.input_ids),))

    def __len__(self) -> int:
        return len(self.input_ids)

    # Ragged fields share input_ids' offsets; on disk each array is a raw file named by `arrays()`.
    RAGGED = ("input_ids", "token_type_ids", "word_ids", "labels")

    def arrays(self) -> dict[str, np.ndarray]:
        """The flat arrays that hold these features, by file name (offsets stored once, for all ragged fields)."""
        arrays = {"example_ids": self.example_ids, "full_lengths": self.full_lengths, "offsets": self.input_ids.offsets}
        for name in self.RAGGED:
            value = getattr(self, name)
            if value is not None:
                arrays[f"{name}.flat" if isinstance(value, Ragged) else name] = (
                    value.flat if isinstance(value, Ragged) else value
                )
        return arrays

    @classmethod
    def concat(cls, parts: list[Features]) -> Features:
        def join(values: list):
            if values[0] is None:
                return None
            return Ragged.concat(values) if isinstance(values[0], Ragged) else np.concatenate(values)

        return cls(
            input_ids=join([p.input_ids for p in parts]),
            labels=join([p.labels for p in parts]),
            example_ids=join([p.example_ids for p in parts]),
            full_lengths=join([p.full_lengths for p in parts]),
            token_type_ids=join([p.token_type_ids for p in parts]),
            word_ids=join([p.word_ids for p in parts]),
        )

    def save(self, folder: Path) -> None:
        writer = FeatureWriter(folder)
        writer.add(self)
        writer.close()

    @classmethod
    def load(cls, folder: Path) -> Features:
        """Every array read from its file as needed (`DiskArray`); only the lengths are computed into memory."""
        manifest = json.loads((folder / MANIFEST).read_text())

        def read(name: str) -> DiskArray:
            entry = manifest[name]
            return DiskArray(folder / f"{name}.bin", entry["dtype"], entry["length"], entry.get("width"))

        offsets = read("offsets")
        values = {}
        for name in cls.RAGGED:
            if f"{name}.flat" in manifest:
                values[name] = Ragged(read(f"{name}.flat"), offsets)
            else:
                values[name] = read(name) if name in manifest else None
        return cls(example_ids=read("example_ids"), full_lengths=read("full_lengths"), **values)


MANIFEST = "arrays.json"


class DiskArray:
    """A cached array read from its file with pread, a slice, a row or a batch of rows at a time; 1-D, or 2-D rows
    of `width` values (multi-label targets). Not a memory map: a mapped page faulted in by a random read brings its
    neighbours with it (the kernel's fault-around, 64 KB), so two hundred steps over ten million examples made 1 GB
    of the cache resident in the process. Here the page cache holds the files, once for all DDP ranks on the
    machine, and the process only the rows at hand."""

    def __init__(self, path: Path, dtype, length: int, width: int | None = None):
        self.path, self.dtype, self.length, self.width = path, np.dtype(dtype), length, width
        self.fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.length

    def _read(self, start: int, count: int) -> np.ndarray:
        size = self.dtype.itemsize * (self.width or 1)
        values = np.frombuffer(os.pread(self.fd, max(0, count) * size, start * size), dtype=self.dtype)
        return values if self.width is None else values.reshape(-1, self.width)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self.length)
            return self._read(start, stop - start)[::step]
        if isinstance(key, (int, np.integer)):
            if not -self.length <= key < self.length:
                raise IndexError(f"index {key} out of range for {self.length} rows")
            return self._read(int(key) % self.length, 1)[0]
        rows = np.asarray(key, dtype=np.int64)
        shape = rows.shape + (() if self.width is None else (self.width,))
        return np.array([self[int(row)] for row in rows.ravel()], dtype=self.dtype).reshape(shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = np.fromfile(self.path, dtype=self.dtype, count=self.length * (self.width or 1))
        values = values if self.width is None else values.reshape(-1, self.width)
        return values.astype(dtype or self.dtype, copy=False)

    def __del__(self) -> None:
        # Not contextlib.suppress: at interpreter exit the contextlib module (and even os) may already be gone.
        try:  # noqa: SIM105
            os.close(self.fd)
        except Exception:
            pass


class FeatureWriter:
    """Appends encoded chunks to raw files in a cache entry, so that a split is never held whole in memory: ten
    million examples are tokenized in chunks of ENCODE_CHUNK rows and written as they come. Raw files plus a
    manifest rather than .npy, because a .npy header needs the length before the data; no pickle either way.

    Written under a temporary name and renamed into place whole when closed: ranks may write the same entry at
    once, and an interrupted write leaves no entry."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.handles: dict = {}
        self.manifest: dict[str, dict] = {}
        self.tokens = 0

    def add(self, part: Features) -> None:
        arrays = part.arrays()
        # Offsets continue from the tokens already written; the leading 0 is written once.
        offsets = arrays.pop("offsets")
        arrays["offsets"] = (offsets if not self.handles else offsets[1:]) + self.tokens
        self.tokens += int(offsets[-1])
        for name, array in arrays.items():
            if name not in self.handles:
                self.handles[name] = (self.tmp / f"{name}.bin").open("wb")
                self.manifest[name] = {"dtype": np.dtype(array.dtype).str, "length": 0}
                if np.ndim(array) == 2:
                    self.manifest[name]["width"] = int(array.shape[1])
            self.handles[name].write(np.ascontiguousarray(array, dtype=self.manifest[name]["dtype"]).tobytes())
            self.manifest[name]["length"] += len(array)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()  # flushes: on a full disk this raises, and the caller discards
        (self.tmp / MANIFEST).write_text(json.dumps(self.manifest))
        try:
            os.replace(self.tmp, self.folder)
        except OSError:  # another rank got there first: its copy is the same
            shutil.rmtree(self.tmp, ignore_errors=True)

    def discard(self) -> None:
        """Everything written so far removed. On a full disk closing a handle flushes its buffer and fails again;
        the file is closed all the same, and the folder must go whatever happens."""
        for handle in self.handles.values():
            with contextlib.suppress(OSError):
                handle.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# Splits smaller than this tokenize in a second or two: no progress bar.
PROGRESS_ROWS = 10_000


@contextlib.contextmanager
def progress_bar(description: str, total: int, show: bool):
    """A transient rich progress bar on a terminal's stderr, advanced by the callback it yields; nothing in logs,
    pipes or CI, and nothing for small data."""
    if not (show and total >= PROGRESS_ROWS and sys.stderr.isatty()):
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.advance(task, done)


def cache_key(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def cache_dir() -> Path:
    return Path(os.environ.get("BERTFIT_CACHE", Path.home() / ".cache" / "bertfit")) / "features"


def tokenizer_fingerprint(tokenizer) -> bytes:
    """What the tokenizer does to text: its serialized form without the truncation and padding state, which encoding
    a split sets on the tokenizer (so the next split's key would depend on whether the one before it was cached).
    Remembered per serialized form: serializing takes milliseconds, parsing and sorting it a quarter of a second
    (a BERT vocabulary), paid by every split of every run in a process (a sweep's trials) but the first."""
    serialized = tokenizer.backend_tokenizer.to_str()
    seen = hashlib.sha256(serialized.encode()).digest()
    if seen not in _FINGERPRINTS:
        state = json.loads(serialized)
        state.pop("truncation", None)
        state.pop("padding", None)
        _FINGERPRINTS[seen] = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).digest()
    return _FINGERPRINTS[seen]


_FINGERPRINTS: dict[bytes, bytes] = {}  # a tokenizer's serialized form's digest → its fingerprint


class _DigestSink:
    """A write-only file whose bytes go into a hash, so that a column can be streamed through it."""

    def __init__(self, digest):
        self.digest, self.closed = digest, False

    def write(self, data) -> int:
        self.digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass


def frame_fingerprint(frame: pd.DataFrame, columns: list[str], chunk: int = 1_000_000) -> bytes:
    """The columns' content, streamed as Arrow IPC into SHA-256 a million rows at a time: no Python object per
    row, and list columns (token tasks) included. Columns Arrow cannot type (mixed objects) are read as JSON."""
    import pyarrow as pa

    digest = hashlib.sha256()
    for column in columns:
        digest.update(str(column).encode())
        for at in range(0, max(1, len(frame)), chunk):
            values = frame[column].iloc[at : at + chunk]
            try:
                array = pa.array(values)
            except (pa.ArrowException, TypeError, ValueError):
                digest.update(values.to_json(orient="values").encode())
                continue
            batch = pa.record_batch([array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array], ["v"])
            with pa.ipc.new_stream(pa.PythonFile(_DigestSink(digest), mode="w"), batch.schema) as stream:
                stream.write_batch(batch)
    return digest.digest()
