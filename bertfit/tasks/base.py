"""What every task shares: features (tokenized, ragged, cached on disk), batching, and the interface each task kind
fills in. Nothing outside `bertfit.tasks` asks which kind of task it holds: it asks the task."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bertfit.errors import BertfitError

IGNORE = -100
LOWER_IS_BETTER = {"loss", "mse", "hamming_loss"}
# Rows tokenized at a time: large enough for the fast tokenizer's threads, small enough to bound its lists.
ENCODE_CHUNK = 50_000
# Tokens per filler example in a lengthened packed stream: FlexAttention's block, so each is one block of work.
FILLER_CHUNK = 128
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


def _cache_key(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def cache_dir() -> Path:
    return Path(os.environ.get("BERTFIT_CACHE", Path.home() / ".cache" / "bertfit")) / "features"


def tokenizer_fingerprint(tokenizer) -> bytes:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).digest()


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


class Task:
    """Shared machinery; subclasses say how to encode, score and measure."""

    kind: str  # the recipe's name for it
    data_kind: str  # the data it reads, as `data.schema` detects and checks it (a kind's own, or the one it builds on)
    primary_metric: str
    pipeline_tag: str  # the Hub's task type, for the model card
    auto_model: str  # the transformers Auto class that builds the model with this task's head
    peft_task_type: str  # peft's name for the task (LoRA)
    loss_unit: str  # what the loss is averaged over
    tracks_accuracy = False  # whether training accuracy can be counted from the logits
    finds_mislabeled = False  # whether a training example's margin (given label vs the rest) is defined
    stratifies = False  # whether a carved validation split keeps the label's class shares
    weighs_classes = False  # whether the loss takes class weights
    decides_by_threshold = False  # whether predictions are probabilities cut at a threshold (multi-label)
    labels_tokens = False  # whether the head predicts every token (else one output per example, from [CLS])

    def __init__(
        self,
        text_columns: list[str],
        label_column: str,
        label_names: list[str] | None,
        max_length: int,
        truncation: str = "head",
        extra_metrics: tuple[str, ...] = (),
        stride: int = 32,
        label_all_subtokens: bool = False,
        class_weights: str | list[float] | None = None,
        threshold: str | float = "tuned",
        window_pooling: str = "mean",
    ):
        if class_weights is not None and not self.weighs_classes:
            raise BertfitError(
                f"class_weights apply to classification; this is a {self.kind} task: remove class_weights"
            )
        if threshold != "tuned" and not self.decides_by_threshold:
            raise BertfitError(f"threshold applies to multi-label tasks; this is a {self.kind} task: remove threshold")
        self.class_weights = class_weights
        self.threshold = threshold
        self.window_pooling = window_pooling
        self.text_columns = text_columns
        self.label_column = label_column
        self.label_names = label_names
        self.max_length = max_length
        self.truncation = truncation
        self.extra_metrics = extra_metrics
        self.stride = stride
        self.label_all_subtokens = label_all_subtokens

    @property
    def reads_windows(self) -> bool:
        """Whether a text longer than max_length is read whole, as windows `stride` tokens apart."""
        return self.truncation == "windows"

    # -- the model
    def head_config(self) -> dict:
        """from_pretrained keyword arguments that give the model this task's head (labels, problem type)."""
        raise NotImplementedError

    def head_bias(self, features: Features) -> np.ndarray | None:
        """A starting bias for the output layer, learnt from the training labels, where the task wants one."""
        return None

    def chance_loss(self) -> float | None:
        """The loss of a model that has learnt nothing (uniform over the classes), where one is defined."""
        return None

    def does(self, unit: str) -> str:
        """What the trained model does to each text (or text pair), in words, for the model card."""
        raise NotImplementedError

    # -- decisions learnt on validation besides the weights (multi-label thresholds), saved in the model's config
    def calibrate(self, result: dict) -> None:
        """Adopt what the validation result of the kept weights decided."""

    def learned_config(self) -> dict:
        """Attributes for the saved model's config.json."""
        return {}

    def restore(self, model_config) -> None:
        """Read back what `learned_config` saved."""

    # -- features
    def encode_rows(self, frame: pd.DataFrame, tokenizer) -> Features:
        """The features of a slice of a split, with example ids counted from the slice's first row."""
        raise NotImplementedError

    def encode_chunks(self, frame: pd.DataFrame, tokenizer, progress: Callable[[int], None] | None = None):
        """Features of ENCODE_CHUNK rows at a time, so that the tokenizer's Python lists never hold more than a
        chunk of the data; `progress` is told how many rows each chunk held."""
        for at in range(0, max(1, len(frame)), ENCODE_CHUNK):
            chunk = frame.iloc[at : at + ENCODE_CHUNK]
            part = self.encode_rows(chunk, tokenizer)
            part.example_ids = part.example_ids + at
            yield part
            if progress is not None:
                progress(len(chunk))

    def encode(self, frame: pd.DataFrame, tokenizer) -> Features:
        return Features.concat(list(self.encode_chunks(frame, tokenizer)))

    def encode_cached(self, frame: pd.DataFrame, tokenizer, show_progress: bool = False) -> Features:
        """Tokenize once per (data, tokenizer, settings): reruns and resumes read the cached features, which are
        written chunk by chunk as they are encoded and then memory-mapped. `show_progress`: a progress bar on a
        terminal when the split is large."""
        columns = self.text_columns + ([self.label_column] if self.label_column in frame.columns else [])
        key = _cache_key(
            CACHE_FORMAT,
            type(self).__name__,
            self.settings(),
            tokenizer_fingerprint(tokenizer),
            frame_fingerprint(frame, columns),
        )
        features = self._encode_into(cache_dir() / key, frame, tokenizer, show_progress)
        features.fingerprint = key
        return features

    def _encode_into(self, path: Path, frame: pd.DataFrame, tokenizer, show_progress: bool) -> Features:
        if path.is_dir():
            try:
                return Features.load(path)
            except (OSError, ValueError, KeyError):
                shutil.rmtree(path, ignore_errors=True)  # a damaged cache entry is rebuilt, never trusted
        try:
            writer = FeatureWriter(path)
        except OSError:  # a read-only cache only costs the next run a re-tokenization
            return self.encode(frame, tokenizer)
        try:
            with progress_bar(f"tokenizing {len(frame):,} rows", len(frame), show_progress) as advance:
                for part in self.encode_chunks(frame, tokenizer, advance):
                    writer.add(part)
            writer.close()
            return Features.load(path)
        except OSError:  # a full disk: nothing half-written stays behind, and the run goes on from memory
            writer.discard()
            return self.encode(frame, tokenizer)
        except BaseException:
            writer.discard()
            raise

    def windows(self, n_tokens: int) -> list[tuple[int, int]]:
        """Spans of at most max_length - 2 tokens (room for the special tokens), overlapping by `stride`, that
        cover `n_tokens`: how a long sentence (token task) or document (truncation: windows) is read whole."""
        body = self.max_length - 2
        if n_tokens <= body:
            return [(0, n_tokens)]
        step = max(1, body - self.stride)
        spans, start = [], 0
        while True:
            spans.append((start, min(start + body, n_tokens)))
            if start + body >= n_tokens:
                return spans
            start += step

    def settings(self) -> dict:
        return {
            "max_length": self.max_length,
            "truncation": self.truncation,
            "labels": self.label_names,
            "columns": self.text_columns,
        }

    def collate(
        self, features: Features, indices: np.ndarray, pad_id: int, pad_to: Callable[[int], int] = int
    ) -> dict[str, torch.Tensor]:
        """Pad a batch to `pad_to` of its longest member (itself, a multiple, a grid length or a fixed length)."""
        lengths = features.lengths[indices]
        width = pad_to(int(lengths.max()))
        input_ids = np.full((len(indices), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(indices), width), dtype=np.int64)
        types = np.zeros((len(indices), width), dtype=np.int64) if features.token_type_ids is not None else None
        for row, index in enumerate(indices):
            n = lengths[row]
            input_ids[row, :n] = features.input_ids[index]
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = features.token_type_ids[index]
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        if types is not None:
            batch["token_type_ids"] = torch.from_numpy(types)
        batch["labels"] = self.collate_labels(features, indices, width)
        return batch

    def collate_labels(self, features: Features, indices: np.ndarray, width: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(features.labels[indices]))

    def collate_packed(
        self, features: Features, indices: np.ndarray, pad_id: int = 0, pad_to: Callable[[int], int] = int
    ) -> dict[str, torch.Tensor]:
        """A batch as one token stream with no padding (padding: packed): the examples end to end in a row of
        one, each token's position within its example and the example it belongs to (attention stays inside
        an example), and where each example starts (its [CLS] token). `pad_to` may lengthen the stream (to one
        of a few lengths, so compiled graphs are reused): the filler is more examples, of pad tokens, that no
        head reads and no loss counts."""
        lengths = features.lengths[indices].astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        tokens = int(lengths.sum())
        filler = pad_to(tokens) - tokens
        # The filler is cut into examples of FILLER_CHUNK tokens: one long one would attend across its whole length.
        fillers = len(indices) + np.arange(filler) // FILLER_CHUNK
        segments = np.concatenate([np.repeat(np.arange(len(indices)), lengths), fillers])
        positions = np.concatenate([np.arange(tokens) - np.repeat(starts, lengths), np.zeros(filler, np.int64)])
        ids = [features.input_ids[i] for i in indices] + [np.full(filler, pad_id)]
        batch = {
            "input_ids": torch.from_numpy(np.concatenate(ids).astype(np.int64)),
            "position_ids": torch.from_numpy(positions),
            "segments": torch.from_numpy(segments),
            "starts": torch.from_numpy(starts),
        }
        if features.token_type_ids is not None:
            types = [features.token_type_ids[i] for i in indices] + [np.zeros(filler)]
            batch["token_type_ids"] = torch.from_numpy(np.concatenate(types).astype(np.int64))
        batch = {k: v[None] if k != "starts" else v for k, v in batch.items()}
        batch["labels"] = self.collate_packed_labels(features, indices, filler)
        return batch

    def collate_packed_labels(self, features: Features, indices: np.ndarray, filler: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(features.labels[indices]))

    def metric_names(self) -> tuple[str, ...]:
        """The scalar metrics `metrics()` reports, besides the loss."""
        raise NotImplementedError

    # -- training
    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def margins(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per example: the given label's logit minus the largest other one (for tasks that find mislabeled)."""
        raise NotImplementedError

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Correct predictions in a training batch (for tasks that track accuracy)."""
        raise NotImplementedError

    # -- evaluation: outputs are reduced to small host arrays batch by batch, never stored as logits
    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """What the metrics are computed from (class ids, scores, tag ids), per row of the batch."""
        raise NotImplementedError

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """What `predict` reports from (probabilities, or the regression output), per row of the batch."""
        raise NotImplementedError

    def feature_output(self, row: np.ndarray, length: int) -> np.ndarray:
        """One feature's output from its padded batch row."""
        return row

    def stack(self, outputs: list[np.ndarray]):
        """All features' outputs, in feature order, in the form `metrics` and `decode` read."""
        return np.asarray(outputs)

    def metrics(self, features: Features, frame: pd.DataFrame, predictions) -> dict:
        raise NotImplementedError

    # -- predict: user texts in, one record per text out
    def prediction_frame(self, rows: list[list[str]]) -> tuple[pd.DataFrame, object]:
        """A frame to encode from the user's texts (one list of texts per example), and what `decode` needs
        besides the scores."""
        raise NotImplementedError

    def decode(self, features: Features, context, scores) -> list[dict]:
        raise NotImplementedError

    # -- the data profile
    def profile_texts(self, frame: pd.DataFrame) -> pd.Series:
        """One string per example, as duplicates and leakage are judged."""
        raise NotImplementedError

    def label_profile(self, frame: pd.DataFrame, text_hashes: np.ndarray) -> dict:
        """Label statistics of one split: counts and balance, tag counts, or the score distribution."""
        raise NotImplementedError

    @classmethod
    def compare_to_train(cls, train: dict, split: dict) -> dict:
        """What a split's label profile says beside the training split's (labels never seen in training)."""
        return {}

    # -- rendering: each kind says how its own results read, so that engine, report and cli never ask which kind
    # a run is. Classmethods where they read saved files alone (the profile, the metrics), without a recipe.
    @classmethod
    def profile_parts(cls, split: dict) -> list[str]:
        """The label parts of a split's line in the data profile (log, card, inspect)."""
        return []

    @classmethod
    def profile_notes(cls, name: str, split: dict) -> list[str]:
        """Problems in a split's labels worth a line of their own beside `bertfit inspect`'s table."""
        return []

    @classmethod
    def label_cells(cls, split: dict) -> tuple[str, str]:
        """`bertfit inspect`'s table: the labels (or tags, or score statistics) and the imbalance of a split."""
        return "", ""

    def result_tables(self, metrics: dict) -> list[tuple[str, list[str], list[list[str]]]]:
        """The model card's tables of this kind's detailed results: (title, columns, rows) each; `{split}` in a
        title names the split the results are of."""
        return []

    def prediction_record(self, row: list[str], prediction: dict) -> dict:
        """One line of `bertfit predict --output`: the text (or pair) and what the model said of it."""
        return {"text": row if len(row) > 1 else row[0], **prediction}


def counted(values: dict) -> str:
    """Label counts as the profile shows them: `positive 444, negative 428`; statistics with two decimals."""
    return ", ".join(
        f"{k} {v:,}" if isinstance(v, int) else f"{k} –" if v is None or v != v else f"{k} {v:.2f}"  # v != v: NaN
        for k, v in values.items()
    )


def labels_not_in_train(train: dict, split: dict) -> dict:
    unseen = sorted(set(split.get("labels", {})) - set(train.get("labels", {})))
    return {"labels_not_in_train": unseen} if train.get("labels") else {}
