"""Regression on a text or a text pair (STS-B similarity, ratings)."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from bertfit.runfiles import SplitProfile
from bertfit.tasks.base import counted
from bertfit.tasks.sequence import SequenceTask


class RegressionTask(SequenceTask):
    kind = "regression"
    data_kind = "regression"
    primary_metric = "pearson"

    def label_ids(self, frame):
        return frame[self.label_column].astype(float).to_numpy(np.float32)

    def head_config(self):
        return {"num_labels": 1, "problem_type": "regression"}

    def metric_names(self):
        return ("pearson", "spearman", "mse")

    def loss_sum(self, logits, labels):
        return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction="sum")

    def decide(self, logits):
        return logits.squeeze(-1).float()

    def probabilities(self, logits):
        return logits.float()

    def example_metrics(self, labels, predictions):
        return regression_metrics(labels, predictions)

    def probe_model(self):
        from sklearn.linear_model import Ridge

        return Ridge(alpha=1.0)

    def decode_scores(self, scores):
        return [{"score": float(s[0])} for s in scores]

    def does(self, unit: str) -> str:
        return f"predicts a real-valued score for each {unit}"

    def label_profile(self, frame, text_hashes):
        # Plain floats: a nullable column's std of one row is pd.NA, which float() refuses; NaN is written as null.
        labels = frame[self.label_column].to_numpy(dtype=float, na_value=np.nan)
        return {
            "label_stats": {
                "mean": float(labels.mean()),
                "std": float(labels.std(ddof=1)) if len(labels) > 1 else float("nan"),
                "min": float(labels.min()),
                "max": float(labels.max()),
            }
        }

    @classmethod
    def label_cells(cls, split: SplitProfile) -> tuple[str, str]:
        return counted(split.label_stats.model_dump()), ""


def regression_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr

    labels, predictions = np.asarray(labels, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    constant = np.ptp(predictions) == 0 or np.ptp(labels) == 0
    return {
        "pearson": 0.0 if constant else float(pearsonr(predictions, labels)[0]),
        "spearman": 0.0 if constant else float(spearmanr(predictions, labels)[0]),
        "mse": float(np.mean((predictions - labels) ** 2)),
    }
