"""Tasks with one prediction per example, from a single text or a text pair."""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import pandas as pd
import torch

from bertfit.errors import BertfitError
from bertfit.tasks.base import Task
from bertfit.tasks.features import Features, Ragged


def _truncate(ids: list[int], max_length: int, mode: str) -> list[int]:
    """Keep the first and last special tokens; cut the middle (head+tail), the end (head) or the start (tail)."""
    if len(ids) <= max_length:
        return ids
    body = max_length - 2
    if mode == "head":
        return ids[: max_length - 1] + ids[-1:]
    if mode == "tail":
        return ids[:1] + ids[-(body + 1) :]
    head = body // 4  # Sun et al. 2019: 128 head + 382 tail tokens of 512 works best on IMDB
    return ids[: head + 1] + ids[-(body - head + 1) :]


class SequenceTask(Task):
    """One prediction per example, from a single text or a text pair: classification and regression.

    With `truncation: windows` a long text becomes overlapping windows, each a training feature with the text's
    label; evaluation and predict merge a text's windows (the mean of their logits, or the max) into one output."""

    pipeline_tag = "text-classification"
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    loss_unit = "example"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.windowed = self.truncation == "windows"
        if self.windowed:
            if len(self.text_columns) > 1:
                raise BertfitError(
                    "truncation 'windows' reads single long texts; text pairs are cut longest-first: use head instead"
                )
            self.finds_mislabeled = False  # margins are kept per training feature, here a window, not an example

    @abstractmethod
    def label_ids(self, frame: pd.DataFrame) -> np.ndarray: ...

    def settings(self) -> dict:
        return {**super().settings(), **({"stride": self.stride} if self.windowed else {})}

    def encode_rows(self, frame: pd.DataFrame, tokenizer) -> Features:
        first = frame[self.text_columns[0]].astype(str).tolist()
        second = frame[self.text_columns[1]].astype(str).tolist() if len(self.text_columns) > 1 else None
        encoded = tokenizer(
            first, second, truncation=False, return_attention_mask=False, return_token_type_ids=second is not None
        )
        ids = encoded["input_ids"]
        types = encoded.get("token_type_ids") if second is not None else None
        full_lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        labels = self.label_ids(frame) if self.label_column in frame.columns else self.no_labels(len(frame))
        if self.windowed:
            return self._windows_of(ids, labels, full_lengths)
        long_rows = np.flatnonzero(full_lengths > self.max_length)
        if len(long_rows) and second is None:
            for row in long_rows:
                ids[row] = _truncate(ids[row], self.max_length, self.truncation)
        elif len(long_rows):
            # Pairs are cut longest-first by the tokenizer, which knows where the segments meet.
            again = tokenizer(
                [first[r] for r in long_rows],
                [second[r] for r in long_rows],
                truncation="longest_first",
                max_length=self.max_length,
                return_attention_mask=False,
            )
            for k, row in enumerate(long_rows):
                ids[row] = again["input_ids"][k]
                if types is not None:
                    types[row] = again["token_type_ids"][k]
        return Features(
            input_ids=Ragged.from_lists(ids, np.int32),
            labels=labels,
            example_ids=np.arange(len(frame)),
            full_lengths=full_lengths,
            token_type_ids=Ragged.from_lists(types, np.int8) if types else None,
        )

    def no_labels(self, rows: int) -> np.ndarray:
        """Placeholder labels for texts to predict."""
        return np.zeros(rows, np.int64)

    def _windows_of(self, ids: list[list[int]], labels: np.ndarray, full_lengths: np.ndarray) -> Features:
        """Each text as windows of its body between its first and last special tokens, which every window keeps."""
        windows, owners = [], []
        for example, row in enumerate(ids):
            body = row[1:-1]
            for start, end in self.windows(len(body)):
                windows.append(row[:1] + body[start:end] + row[-1:])
                owners.append(example)
        owners = np.asarray(owners, dtype=np.int64)
        return Features(
            input_ids=Ragged.from_lists(windows, np.int32),
            labels=labels[owners],
            example_ids=owners,
            full_lengths=full_lengths,
        )

    # -- outputs: per feature from the model, per example for metrics and predict
    @abstractmethod
    def decide(self, logits):
        """What the metrics are computed from, per example: a class id, probabilities, a score."""
        ...

    @abstractmethod
    def probabilities(self, logits):
        """What predict reports from, per example."""
        ...

    def predictions(self, logits):
        return logits.float() if self.windowed else self.decide(logits)

    def scores(self, logits):
        return logits.float() if self.windowed else self.probabilities(logits)

    def per_example(self, features: Features, outputs, then) -> np.ndarray:
        """Outputs per example: as they are, or each text's window logits pooled and then passed to `then`."""
        if not self.windowed:
            return np.asarray(outputs)
        logits = np.asarray(outputs, dtype=np.float32)
        owners, examples = np.asarray(features.example_ids), len(features.full_lengths)
        if self.window_pooling == "max":
            pooled = np.full((examples, *logits.shape[1:]), -np.inf, dtype=np.float32)
            np.maximum.at(pooled, owners, logits)
        else:
            pooled = np.zeros((examples, *logits.shape[1:]), dtype=np.float32)
            np.add.at(pooled, owners, logits)
            pooled /= np.bincount(owners, minlength=examples).reshape(-1, *([1] * (logits.ndim - 1)))
        return then(torch.from_numpy(pooled)).numpy()

    def example_labels(self, features: Features) -> np.ndarray:
        labels = np.asarray(features.labels)
        if not self.windowed:
            return labels
        return labels[np.unique(np.asarray(features.example_ids), return_index=True)[1]]

    @abstractmethod
    def example_metrics(self, labels: np.ndarray, predictions: np.ndarray) -> dict: ...

    def metrics(self, features, frame, predictions):
        return self.example_metrics(self.example_labels(features), self.per_example(features, predictions, self.decide))

    @abstractmethod
    def decode_scores(self, scores: np.ndarray) -> list[dict]: ...

    def decode(self, features, context, scores):
        return self.decode_scores(self.per_example(features, scores, self.probabilities))

    def reviewed_predictions(self, features, frame, scores):
        return [self.reviewed_prediction(record) for record in self.decode(features, None, scores)]

    def reviewed_prediction(self, prediction: dict) -> tuple[str, float]:
        """A prediction (`decode_scores`' record) as a review compares it with the given label, and its score."""
        raise NotImplementedError

    def prediction_frame(self, rows):
        if len(rows[0]) != len(self.text_columns):
            raise BertfitError(
                f"this model reads {len(self.text_columns)} text(s) per example "
                f"({', '.join(self.text_columns)}); got {len(rows[0])}"
            )
        return pd.DataFrame(rows, columns=self.text_columns), None

    def profile_texts(self, frame):
        if len(self.text_columns) == 1:
            return frame[self.text_columns[0]].astype(str)
        return frame[self.text_columns[0]].astype(str) + " [SEP] " + frame[self.text_columns[1]].astype(str)
