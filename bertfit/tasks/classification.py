"""Single-label classification of a text or a text pair (sentiment, topics, GLUE/NLI)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bertfit.data.schema import label_key
from bertfit.errors import BertfitError
from bertfit.runfiles import Scores, SplitProfile
from bertfit.tasks.base import counted, labels_not_in_train, single_label_issues, single_label_margins
from bertfit.tasks.sequence import SequenceTask


class ClassificationTask(SequenceTask):
    kind = "classification"
    data_kind = "classification"
    tracks_accuracy = True
    finds_mislabeled = True
    few_shot = True
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
        return single_label_margins(logits, labels)

    def label_issues(self, labels, probabilities):
        return single_label_issues(labels, probabilities)

    def given_probability(self, labels, probabilities):
        return probabilities[np.arange(len(labels)), labels]

    def reviewed_labels(self, labels):
        return [self.label_names[int(i)] for i in labels]

    def suggested_labels(self, labels, margins, probabilities):
        others = np.array(probabilities, dtype=np.float64)  # the likeliest label other than the given one
        others[np.arange(len(labels)), labels] = -np.inf
        return [self.label_names[int(i)] for i in others.argmax(-1)]

    def filed_under(self, given, suggested):
        return [given]

    def relabel_refusal(self, given, wanted):
        return None if wanted in self.label_names else f"the labels are {', '.join(self.label_names)}"

    def relabelled(self, frame, reviewed, row, wanted):
        if wanted not in reviewed:
            raise ValueError("no example of the split has that label")
        return frame[self.label_column].iat[reviewed.index(wanted)]  # in the column's own form (name or number)

    def reviewed_prediction(self, prediction):
        return prediction["label"], prediction["score"]

    def correct(self, logits, labels):
        return (logits.argmax(-1) == labels).sum()

    def decide(self, logits):
        return logits.argmax(-1)

    def probabilities(self, logits):
        return logits.float().softmax(-1)

    def example_metrics(self, labels, predictions):
        return classification_metrics(labels, predictions, len(self.label_names), "matthews" in self.extra_metrics)

    def probe_model(self):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=2000)

    def linear_head(self, estimator, width):
        # A class the training examples lack gets no row from scikit-learn: here it is never predicted.
        weight, bias = np.zeros((len(self.label_names), width)), np.full(len(self.label_names), -1e4)
        classes = estimator.classes_.astype(int)
        if (
            estimator.coef_.shape[0] == 1
        ):  # binary: one row, the second class's log-odds (softmax of [0, z] is z's sigmoid)
            weight[classes[1]], bias[classes[1]], bias[classes[0]] = estimator.coef_[0], estimator.intercept_[0], 0.0
        else:
            weight[classes], bias[classes] = estimator.coef_, estimator.intercept_
        return weight, bias

    def decode_scores(self, scores):
        return [{"label": self.label_names[int(s.argmax())], "score": float(s.max())} for s in scores]

    def does(self, unit: str) -> str:
        return f"classifies each {unit} as one of {', '.join(self.label_names)}"

    @staticmethod
    def _name_of(value, names: list[str]) -> str:
        """A raw label's class name: the name itself, an integer label named by its number (labels -1, 0, 1), or
        an id into the names."""
        key = label_key(value)
        if key in names or isinstance(value, str):
            return key
        return names[int(key)] if 0 <= int(key) < len(names) else key

    def label_profile(self, frame, text_hashes):
        names = self.label_names or []
        labels = frame[self.label_column]
        # Counted per distinct value, then named: never a Python call per row.
        by_value = labels.value_counts(sort=False)
        shown = [self._name_of(v, names) for v in by_value.index]
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
            "rare_classes": {str(k): int(v) for k, v in counts.items() if v < RARE_CLASS},
        }
        if len(self.text_columns) == 2:
            pairs = pd.DataFrame({"text": text_hashes, "label": pd.factorize(labels)[0]})
            result["conflicting_pairs"] = int((pairs.groupby("text")["label"].nunique() > 1).sum())
        return result

    @classmethod
    def compare_to_train(cls, train: SplitProfile, split: SplitProfile) -> dict:
        return labels_not_in_train(train, split)

    @classmethod
    def label_summary(cls, split: SplitProfile) -> list[str]:
        return [f"labels {counted(split.labels)} (imbalance {split.imbalance_ratio:.2f})"]

    @classmethod
    def label_problems(cls, split: SplitProfile) -> list[str]:
        problems = []
        if split.conflicting_pairs:
            problems.append(f"{split.conflicting_pairs:,} identical pairs with different labels")
        if split.labels_not_in_train:
            problems.append(f"labels not in train: {', '.join(split.labels_not_in_train)}")
        if split.rare_classes:
            rare = ", ".join(f"{k} ({v})" for k, v in split.rare_classes.items())
            problems.append(f"classes with under {RARE_CLASS} examples: {rare}")
        return problems

    @classmethod
    def label_cells(cls, split: SplitProfile) -> tuple[str, str]:
        return counted(split.labels), f"{split.imbalance_ratio:.2f}"

    def result_tables(self, metrics: Scores) -> list[tuple[str, list[str], list[list[str]]]]:
        matrix = metrics.confusion_matrix
        if not matrix or len(matrix) > 50:
            return []
        names = self.label_names or [str(i) for i in range(len(matrix))]
        predicted = [sum(row[j] for row in matrix) for j in range(len(matrix))]
        rows = [
            [
                names[i] if i < len(names) else str(i),
                f"{row[i] / predicted[i]:.4f}" if predicted[i] else "–",
                f"{row[i] / sum(row):.4f}" if sum(row) else "–",
                f"{sum(row):,}",
            ]
            for i, row in enumerate(matrix)
        ]
        return [("Per class ({split})", ["Class", "Precision", "Recall", "Support"], rows)]


# A class with fewer examples than this in a split can be neither learned (train) nor measured (validation).
RARE_CLASS = 5


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, n_classes: int, matthews: bool) -> dict:
    """Accuracy, precision/recall/F1 (binary: of class 1; else macro) and Matthews' correlation, all from the
    confusion matrix. Written out rather than called from scikit-learn: importing `sklearn.metrics` takes 0.7 s
    here, a quarter of a minilm evaluation of SST-2's validation split; tests check every value against it."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    matrix = np.bincount(labels * n_classes + predictions, minlength=n_classes * n_classes).reshape(n_classes, -1)
    true, predicted, hits = matrix.sum(1), matrix.sum(0), np.diag(matrix)

    def ratio(numerator, denominator):  # scikit-learn's zero_division=0
        return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)

    precision, recall = ratio(hits, predicted), ratio(hits, true)
    f1 = ratio(2 * precision * recall, precision + recall)
    result = {"accuracy": float(hits.sum() / max(1, len(labels)))}
    if n_classes == 2:
        result.update(f1=float(f1[1]), precision=float(precision[1]), recall=float(recall[1]))
    else:
        result.update(
            f1_macro=float(f1.mean()), recall_macro=float(recall.mean()), precision_macro=float(precision.mean())
        )
    if matthews:
        samples, correct = float(len(labels)), float(hits.sum())
        covariance = correct * samples - float(true @ predicted)
        spread = (samples**2 - float(predicted @ predicted)) * (samples**2 - float(true @ true))
        result["matthews"] = float(covariance / np.sqrt(spread)) if spread > 0 else 0.0
    result["confusion_matrix"] = matrix.tolist()
    return result
