"""One object per task: how examples become features, how features become batches, the loss and the metrics."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bertfit.data import label_key

IGNORE = -100
LOWER_IS_BETTER = {"loss", "mse"}


@dataclass
class Features:
    """Tokenized examples, ragged, kept on the host. A token-task example may span several windows (features)."""

    input_ids: list[np.ndarray]
    labels: object  # np.ndarray per example (sequence tasks) or list of per-token arrays (token task)
    example_ids: np.ndarray
    full_lengths: np.ndarray  # before truncation, for the data profile
    token_type_ids: Optional[list[np.ndarray]] = None
    word_ids: Optional[list[np.ndarray]] = None  # token task: the word a position predicts, -1 elsewhere
    lengths: np.ndarray = field(init=False)
    items: np.ndarray = field(init=False)  # loss terms each feature contributes (1, or its labelled tokens)

    def __post_init__(self) -> None:
        self.lengths = np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))
        if self.word_ids is None:
            self.items = np.ones(len(self.input_ids), dtype=np.int64)
        else:
            self.items = np.fromiter(((lab != IGNORE).sum() for lab in self.labels), dtype=np.int64,
                                     count=len(self.input_ids))

    def __len__(self) -> int:
        return len(self.input_ids)

    # A flat on-disk form (no pickle): ragged fields concatenated with their offsets.
    RAGGED = ("input_ids", "token_type_ids", "word_ids", "labels")

    def save(self, path: Path) -> None:
        arrays = {"example_ids": self.example_ids, "full_lengths": self.full_lengths, "offsets": np.concatenate(
            [[0], np.cumsum(self.lengths)])}
        for name in self.RAGGED:
            value = getattr(self, name)
            if value is None:
                continue
            arrays[name] = np.concatenate(value) if isinstance(value, list) else value
            arrays[f"{name}__ragged"] = np.array(isinstance(value, list))
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # ranks may write the same cache entry at once
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Features":
        with np.load(path, allow_pickle=False) as stored:
            offsets = stored["offsets"]
            values = {}
            for name in cls.RAGGED:
                if name not in stored:
                    values[name] = None
                elif bool(stored[f"{name}__ragged"]):
                    flat = stored[name]
                    values[name] = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
                else:
                    values[name] = stored[name]
            return cls(example_ids=stored["example_ids"], full_lengths=stored["full_lengths"], **values)


def _cache_key(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def cache_dir() -> Path:
    return Path(os.environ.get("BERTFIT_CACHE", Path.home() / ".cache" / "bertfit")) / "features"


def tokenizer_fingerprint(tokenizer) -> bytes:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).digest()


def frame_fingerprint(frame: pd.DataFrame, columns: list[str]) -> bytes:
    return hashlib.sha256(frame[columns].to_json(orient="values").encode()).digest()


class Task:
    """Shared machinery; subclasses say how to encode, score and measure."""

    kind: str
    primary_metric: str

    def __init__(self, text_columns: list[str], label_column: str, label_names: Optional[list[str]],
                 max_length: int, truncation: str = "head", extra_metrics: tuple[str, ...] = ()):
        self.text_columns = text_columns
        self.label_column = label_column
        self.label_names = label_names
        self.max_length = max_length
        self.truncation = truncation
        self.extra_metrics = extra_metrics

    # -- features
    def encode(self, frame: pd.DataFrame, tokenizer) -> Features:
        raise NotImplementedError

    def encode_cached(self, frame: pd.DataFrame, tokenizer) -> Features:
        """Tokenize once per (data, tokenizer, settings): reruns and resumes read the cached features."""
        columns = self.text_columns + ([self.label_column] if self.label_column in frame.columns else [])
        key = _cache_key(type(self).__name__, self.settings(), tokenizer_fingerprint(tokenizer),
                         frame_fingerprint(frame, columns))
        path = cache_dir() / f"{key}.npz"
        if path.is_file():
            try:
                return Features.load(path)
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # a torn cache file is rebuilt, never trusted
        features = self.encode(frame, tokenizer)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            features.save(path)
        except OSError:
            pass  # a read-only or full cache only costs the next run a re-tokenization
        return features

    def settings(self) -> dict:
        return {"max_length": self.max_length, "truncation": self.truncation, "labels": self.label_names,
                "columns": self.text_columns}

    def collate(self, features: Features, indices: np.ndarray, pad_id: int,
                pad_to: Callable[[int], int] = int) -> dict[str, torch.Tensor]:
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
        return torch.from_numpy(np.asarray(features.labels)[indices])

    def metric_names(self) -> tuple[str, ...]:
        """The scalar metrics `metrics()` reports, besides the loss."""
        raise NotImplementedError

    # -- training
    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- evaluation: predictions are reduced to small host arrays batch by batch, never stored as logits
    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, features: Features, frame: pd.DataFrame, predictions: np.ndarray) -> dict:
        raise NotImplementedError


def _truncate(ids: list[int], max_length: int, mode: str) -> list[int]:
    """Keep the first and last special tokens; cut the middle (head+tail), the end (head) or the start (tail)."""
    if len(ids) <= max_length:
        return ids
    body = max_length - 2
    if mode == "head":
        return ids[: max_length - 1] + ids[-1:]
    if mode == "tail":
        return ids[:1] + ids[-(body + 1):]
    head = body // 4  # Sun et al. 2019: 128 head + 382 tail tokens of 512 works best on IMDB
    return ids[: head + 1] + ids[-(body - head + 1):]


class SequenceTask(Task):
    """Shared encoding for single texts and text pairs."""

    def label_ids(self, frame: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def encode(self, frame: pd.DataFrame, tokenizer) -> Features:
        first = frame[self.text_columns[0]].astype(str).tolist()
        second = frame[self.text_columns[1]].astype(str).tolist() if len(self.text_columns) > 1 else None
        encoded = tokenizer(first, second, truncation=False, return_attention_mask=False,
                            return_token_type_ids=second is not None)
        ids = encoded["input_ids"]
        types = encoded.get("token_type_ids") if second is not None else None
        full_lengths = np.array([len(x) for x in ids])
        long_rows = np.flatnonzero(full_lengths > self.max_length)
        if len(long_rows) and second is None:
            for row in long_rows:
                ids[row] = _truncate(ids[row], self.max_length, self.truncation)
        elif len(long_rows):
            # Pairs are cut longest-first by the tokenizer, which knows where the segments meet.
            again = tokenizer([first[r] for r in long_rows], [second[r] for r in long_rows],
                              truncation="longest_first", max_length=self.max_length, return_attention_mask=False)
            for k, row in enumerate(long_rows):
                ids[row] = again["input_ids"][k]
                if types is not None:
                    types[row] = again["token_type_ids"][k]
        labels = self.label_ids(frame) if self.label_column in frame.columns else np.zeros(len(frame), np.int64)
        return Features(input_ids=[np.asarray(x, dtype=np.int32) for x in ids], labels=labels,
                        example_ids=np.arange(len(frame)), full_lengths=full_lengths,
                        token_type_ids=[np.asarray(x, dtype=np.int8) for x in types] if types is not None else None)


class ClassificationTask(SequenceTask):
    kind = "classification"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.primary_metric = "matthews" if "matthews" in self.extra_metrics else "accuracy"

    def label_ids(self, frame: pd.DataFrame) -> np.ndarray:
        """By name first (class names, or integer labels named by their number), else as ids 0..K-1."""
        keys = frame[self.label_column].map(label_key)
        index = {name: i for i, name in enumerate(self.label_names)}
        if keys.isin(index).all():
            return keys.map(index).to_numpy(np.int64)
        return keys.astype(np.int64).to_numpy()

    def metric_names(self):
        names = ("f1", "precision", "recall") if len(self.label_names) == 2 else (
            "f1_macro", "recall_macro", "precision_macro")
        return ("accuracy", *names) + (("matthews",) if "matthews" in self.extra_metrics else ())

    def loss_sum(self, logits, labels):
        return F.cross_entropy(logits.float(), labels, reduction="sum")

    def predictions(self, logits):
        return logits.argmax(-1)

    def metrics(self, features, frame, predictions):
        return classification_metrics(np.asarray(features.labels), predictions, len(self.label_names),
                                      "matthews" in self.extra_metrics)


class RegressionTask(SequenceTask):
    kind = "regression"
    primary_metric = "pearson"

    def label_ids(self, frame):
        return frame[self.label_column].astype(float).to_numpy(np.float32)

    def metric_names(self):
        return ("pearson", "spearman", "mse")

    def loss_sum(self, logits, labels):
        return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction="sum")

    def predictions(self, logits):
        return logits.squeeze(-1).float()

    def metrics(self, features, frame, predictions):
        return regression_metrics(np.asarray(features.labels), predictions)


class TokenTask(Task):
    """Words → sub-tokens with `is_split_into_words`; first sub-token labelled; long sentences in overlapping windows."""

    kind = "token"
    primary_metric = "f1"

    def __init__(self, *args, stride: int = 32, label_all_subtokens: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.stride = stride
        self.label_all_subtokens = label_all_subtokens
        index = {name: i for i, name in enumerate(self.label_names)}
        self.tag_index = index
        # B-X continuation sub-tokens are labelled I-X when every sub-token carries a label (as run_ner does).
        self.continuation = {i: index.get("I-" + name[2:], i) if name.startswith("B-") else i
                             for name, i in index.items()}

    def settings(self):
        return {**super().settings(), "stride": self.stride, "all_subtokens": self.label_all_subtokens}

    def windows(self, n_tokens: int) -> list[tuple[int, int]]:
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

    def encode(self, frame, tokenizer):
        words = [list(map(str, w)) for w in frame[self.text_columns[0]]]
        has_tags = self.label_column in frame.columns
        tags = [[self.tag_index[t] for t in row] for row in frame[self.label_column]] if has_tags else None
        encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=False, truncation=False,
                            return_attention_mask=False, return_token_type_ids=False)
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        input_ids, labels, word_ids, example_ids, full_lengths = [], [], [], [], []
        for example, ids in enumerate(encoded["input_ids"]):
            token_words = np.array([-1 if w is None else w for w in encoded.word_ids(example)], dtype=np.int64)
            first = np.ones(len(token_words), dtype=bool)
            first[1:] = token_words[1:] != token_words[:-1]
            spans = self.windows(len(ids))
            owner = self._owners(first, spans)
            for k, (start, end) in enumerate(spans):
                own = owner[start:end] == k
                word_here = np.where(own & first[start:end], token_words[start:end], -1)
                label_here = np.full(end - start, IGNORE, dtype=np.int64)
                if tags is not None:
                    row_tags = np.asarray(tags[example])
                    label_here[word_here >= 0] = row_tags[word_here[word_here >= 0]]
                    if self.label_all_subtokens:
                        rest = own & ~first[start:end] & (token_words[start:end] >= 0)
                        label_here[rest] = [self.continuation[t] for t in row_tags[token_words[start:end][rest]]]
                input_ids.append(np.asarray([cls_id, *ids[start:end], sep_id], dtype=np.int32))
                labels.append(np.concatenate([[IGNORE], label_here, [IGNORE]]))
                word_ids.append(np.concatenate([[-1], word_here, [-1]]))
                example_ids.append(example)
            full_lengths.append(len(ids) + 2)
        return Features(input_ids=input_ids, labels=labels, example_ids=np.asarray(example_ids),
                        full_lengths=np.asarray(full_lengths), word_ids=word_ids)

    @staticmethod
    def _owners(first: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
        """Each word belongs to the window where its first sub-token has the most context on both sides."""
        owner = np.zeros(len(first), dtype=np.int64)
        if len(spans) == 1:
            return owner
        positions = np.arange(len(first))
        best_context = np.full(len(first), -1)
        for k, (start, end) in enumerate(spans):
            inside = (positions >= start) & (positions < end)
            context = np.minimum(positions - start, end - 1 - positions)
            better = inside & (context > best_context)
            owner[better], best_context[better] = k, context[better]
        # Continuation sub-tokens follow their word's first sub-token.
        word_start = np.maximum.accumulate(np.where(first, positions, 0))
        return owner[word_start]

    def collate_labels(self, features, indices, width):
        labels = np.full((len(indices), width), IGNORE, dtype=np.int64)
        for row, index in enumerate(indices):
            labels[row, : len(features.labels[index])] = features.labels[index]
        return torch.from_numpy(labels)

    def metric_names(self):
        return ("precision", "recall", "f1", "accuracy")

    def loss_sum(self, logits, labels):
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")

    def predictions(self, logits):
        return logits.argmax(-1)

    def word_predictions(self, features: Features, frame: pd.DataFrame, predictions: list[np.ndarray]) -> list[list[str]]:
        """Stitch window predictions back into one tag per word; a word with no sub-tokens is predicted 'O'."""
        words = frame[self.text_columns[0]]
        out = [np.full(len(w), -1, dtype=np.int64) for w in words]
        for feature, predicted in enumerate(predictions):
            word_here = features.word_ids[feature]
            where = word_here >= 0
            out[features.example_ids[feature]][word_here[where]] = predicted[: len(word_here)][where]
        outside = self.tag_index.get("O", 0)
        return [[self.label_names[t] if t >= 0 else self.label_names[outside] for t in row] for row in out]

    def metrics(self, features, frame, predictions):
        true = [list(row) for row in frame[self.label_column]]
        return token_metrics(true, self.word_predictions(features, frame, predictions))


def build_task(kind: str, text_columns: list[str], label_column: str, label_names: Optional[list[str]],
               max_length: int, truncation: str, extra_metrics: tuple[str, ...], stride: int = 32,
               label_all_subtokens: bool = False) -> Task:
    args = (text_columns, label_column, label_names, max_length, truncation, extra_metrics)
    if kind == "token":
        return TokenTask(*args, stride=stride, label_all_subtokens=label_all_subtokens)
    return {"classification": ClassificationTask, "regression": RegressionTask}[kind](*args)


# ---------------------------------------------------------------- metrics (the field's implementations)

def classification_metrics(labels: np.ndarray, predictions: np.ndarray, n_classes: int, matthews: bool) -> dict:
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, matthews_corrcoef, precision_score,
                                 recall_score)

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    result = {"accuracy": float(accuracy_score(labels, predictions))}
    if n_classes == 2:
        kwargs = {"pos_label": 1, "average": "binary", "zero_division": 0}
        result.update(f1=f1_score(labels, predictions, **kwargs), precision=precision_score(labels, predictions, **kwargs),
                      recall=recall_score(labels, predictions, **kwargs))
    else:
        kwargs = {"average": "macro", "labels": list(range(n_classes)), "zero_division": 0}
        result.update(f1_macro=f1_score(labels, predictions, **kwargs),
                      recall_macro=recall_score(labels, predictions, **kwargs),
                      precision_macro=precision_score(labels, predictions, **kwargs))
    if matthews:
        result["matthews"] = matthews_corrcoef(labels, predictions)
    result = {k: float(v) for k, v in result.items()}
    result["confusion_matrix"] = confusion_matrix(labels, predictions, labels=list(range(n_classes))).tolist()
    return result


def regression_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr

    labels, predictions = np.asarray(labels, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    constant = np.ptp(predictions) == 0 or np.ptp(labels) == 0
    return {"pearson": 0.0 if constant else float(pearsonr(predictions, labels)[0]),
            "spearman": 0.0 if constant else float(spearmanr(predictions, labels)[0]),
            "mse": float(np.mean((predictions - labels) ** 2))}


def token_metrics(true: list[list[str]], predicted: list[list[str]]) -> dict:
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

    report = classification_report(true, predicted, output_dict=True, zero_division=0)
    per_type = {name: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                       "support": int(v["support"])}
                for name, v in report.items() if not name.endswith(" avg")}
    return {"precision": float(precision_score(true, predicted, zero_division=0)),
            "recall": float(recall_score(true, predicted, zero_division=0)),
            "f1": float(f1_score(true, predicted, zero_division=0)),
            "accuracy": float(accuracy_score(true, predicted)), "per_type": per_type}
