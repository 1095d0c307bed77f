"""Single-label classification of a text or a text pair (sentiment, topics, GLUE/NLI)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bertfit.data.schema import label_key
from bertfit.errors import BertfitError
from bertfit.tasks.sequence import SequenceTask


class ClassificationTask(SequenceTask):
    kind = "classification"
    tracks_accuracy = True
    finds_mislabeled = True
    stratifies = True
    weighs_classes = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.primary_metric = "matthews" if "matthews" in self.extra_metrics else "accuracy"
        weights = self.class_weights
        if isinstance(weights, list) and len(weights) != len(self.label_names):
            raise BertfitError(
                f"class_weights has {len(weights)} weights but there are {len(self.label_names)} classes "
                f"({', '.join(self.label_names[:6])}); give one per class, in that order, or 'balanced'"
            )
        self._weights: dict = {}  # the weights as a tensor, per device

    def balanced_class_weights(self, frame: pd.DataFrame) -> list[float]:
        """n / (classes × count) per class, scikit-learn's 'balanced'; a class absent from training weighs 1."""
        counts = np.bincount(self.label_ids(frame), minlength=len(self.label_names))
        present = max(1, int((counts > 0).sum()))
        return [round(len(frame) / (present * c), 6) if c else 1.0 for c in counts.tolist()]

    def label_ids(self, frame: pd.DataFrame) -> np.ndarray:
        """By name first (class names, or integer labels named by their number), else as ids 0..K-1. Over the
        distinct values, then spread by their codes: a label column has a handful of values and millions of rows."""
        codes, values = pd.factorize(frame[self.label_column])
        keys = [label_key(value) for value in values]
        index = {name: i for i, name in enumerate(self.label_names)}
        ids = [index[key] for key in keys] if all(key in index for key in keys) else [int(key) for key in keys]
        return np.asarray(ids, dtype=np.int64)[codes] if len(codes) else np.zeros(0, np.int64)

    def head_config(self):
        return {
            "num_labels": len(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
            "label2id": {name: i for i, name in enumerate(self.label_names)},
            "problem_type": "single_label_classification",
        }

    def chance_loss(self):
        return math.log(len(self.label_names)) if len(self.label_names) >= 2 else None

    def metric_names(self):
        names = (
            ("f1", "precision", "recall")
            if len(self.label_names) == 2
            else ("f1_macro", "recall_macro", "precision_macro")
        )
        return ("accuracy", *names) + (("matthews",) if "matthews" in self.extra_metrics else ())

    def loss_sum(self, logits, labels):
        # Summed, then divided by the step's example count (not its total weight), so that a step's gradient is
        # the same whatever the accumulation or world size; balanced weights average 1 over the training data.
        return F.cross_entropy(logits.float(), labels, weight=self._weight_tensor(logits.device), reduction="sum")

    def _weight_tensor(self, device):
        if self.class_weights is None:
            return None
        if not isinstance(self.class_weights, list):
            raise RuntimeError("class_weights 'balanced' must be resolved (balanced_class_weights) before training")
        if device not in self._weights:
            self._weights[device] = torch.tensor(self.class_weights, dtype=torch.float32, device=device)
        return self._weights[device]

    def margins(self, logits, labels):
        logits = logits.float()
        given = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
        return given - others

    def correct(self, logits, labels):
        return (logits.argmax(-1) == labels).sum()

    def predictions(self, logits):
        return logits.argmax(-1)

    def scores(self, logits):
        return logits.float().softmax(-1)

    def metrics(self, features, frame, predictions):
        return classification_metrics(
            np.asarray(features.labels), predictions, len(self.label_names), "matthews" in self.extra_metrics
        )

    def decode(self, features, context, scores):
        return [{"label": self.label_names[int(s.argmax())], "score": float(s.max())} for s in scores]

    def label_profile(self, frame, text_hashes):
        names = self.label_names or []
        labels = frame[self.label_column]
        # Counted per distinct value, then named: never a Python call per row.
        by_value = labels.value_counts(sort=False)
        shown = [v if isinstance(v, str) else names[int(v)] if int(v) < len(names) else v for v in by_value.index]
        counts = (
            pd.Series(by_value.to_numpy(), index=[str(v) for v in shown])
            .groupby(level=0, sort=False)
            .sum()
            .sort_values(ascending=False, kind="stable")
        )
        result = {
            "labels": {str(k): int(v) for k, v in counts.items()},
            "majority_rate": float(counts.iloc[0] / len(frame)),
            "imbalance_ratio": float(counts.iloc[0] / counts.iloc[-1]),
        }
        if len(self.text_columns) == 2:
            pairs = pd.DataFrame({"text": text_hashes, "label": pd.factorize(labels)[0]})
            result["conflicting_pairs"] = int((pairs.groupby("text")["label"].nunique() > 1).sum())
        return result


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, n_classes: int, matthews: bool) -> dict:
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        matthews_corrcoef,
        precision_score,
        recall_score,
    )

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    result = {"accuracy": float(accuracy_score(labels, predictions))}
    if n_classes == 2:
        kwargs = {"pos_label": 1, "average": "binary", "zero_division": 0}
        result.update(
            f1=f1_score(labels, predictions, **kwargs),
            precision=precision_score(labels, predictions, **kwargs),
            recall=recall_score(labels, predictions, **kwargs),
        )
    else:
        kwargs = {"average": "macro", "labels": list(range(n_classes)), "zero_division": 0}
        result.update(
            f1_macro=f1_score(labels, predictions, **kwargs),
            recall_macro=recall_score(labels, predictions, **kwargs),
            precision_macro=precision_score(labels, predictions, **kwargs),
        )
    if matthews:
        result["matthews"] = matthews_corrcoef(labels, predictions)
    result = {k: float(v) for k, v in result.items()}
    result["confusion_matrix"] = confusion_matrix(labels, predictions, labels=list(range(n_classes))).tolist()
    return result
