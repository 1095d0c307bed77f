"""Tasks with one prediction per example, from a single text or a text pair."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bertfit.errors import BertfitError
from bertfit.tasks.base import Features, Ragged, Task


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
    """One prediction per example, from a single text or a text pair: classification and regression."""

    pipeline_tag = "text-classification"
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    loss_unit = "example"

    def label_ids(self, frame: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def encode_rows(self, frame: pd.DataFrame, tokenizer) -> Features:
        first = frame[self.text_columns[0]].astype(str).tolist()
        second = frame[self.text_columns[1]].astype(str).tolist() if len(self.text_columns) > 1 else None
        encoded = tokenizer(
            first, second, truncation=False, return_attention_mask=False, return_token_type_ids=second is not None
        )
        ids = encoded["input_ids"]
        types = encoded.get("token_type_ids") if second is not None else None
        full_lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
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
        labels = self.label_ids(frame) if self.label_column in frame.columns else np.zeros(len(frame), np.int64)
        return Features(
            input_ids=Ragged.from_lists(ids, np.int32),
            labels=labels,
            example_ids=np.arange(len(frame)),
            full_lengths=full_lengths,
            token_type_ids=Ragged.from_lists(types, np.int8) if types else None,
        )

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
