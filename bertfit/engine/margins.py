"""Likely mislabeled training examples, from what training computes anyway. Each time an example (for NER, each labelled
token) is trained on, its margin (the logit of its given label minus the largest other logit) and its predicted
probabilities are added up on the device. The list is ranked by the mean margin, the area under the margin (AUM,
Pleiss et al. 2020): an example the model keeps contradicting ranks first. Which examples are flagged is cleanlab's
decision (`find_label_issues`, confident learning: per-class thresholds and an estimate of how many labels are wrong)
on the mean probabilities, rather than a margin below 0, which flagged 2.6 times as many examples as were wrong on
SST-2 (benchmarks/mislabeled.py). Cost: a gather, a softmax and three index_adds per micro-batch; two floats per
example (or labelled token) and one per class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from bertfit.errors import BertfitError
from bertfit.runfiles import MislabeledSummary, Suspect
from bertfit.tasks import Task
from bertfit.tasks.base import UnitSums
from bertfit.tasks.features import Features

SUMS = ("margin", "seen", "probabilities")
SHOWN = 10  # examples kept in metrics.json (all of them go to mislabeled.jsonl), lowest margin first


class MarginTracker:
    """The sums, one row per tracked unit of the training features (`Task.tracked`): an example, or a labelled
    token of a token task, whose sentence is then reviewed with the words it keeps being contradicted on."""

    def __init__(self, features: Features, classes: int, margin_shape: tuple[int, ...], device: torch.device):
        # Feature i's units are rows first[i] .. first[i] + items[i] - 1, in the order of its labels in a batch.
        self.items = np.asarray(features.items, dtype=np.int64)
        self.first = np.cumsum(self.items) - self.items
        units = int(self.items.sum())
        # 4 bytes each: a sum of a few dozen margins needs no float64, nor a count of epochs int64 (ten million
        # examples: 160 MB with the probabilities, not 240)
        self.margin = torch.zeros((units, *margin_shape), dtype=torch.float32, device=device)
        self.seen = torch.zeros(units, dtype=torch.int32, device=device)
        self.probabilities = torch.zeros(units, classes, dtype=torch.float32, device=device)

    def units(self, indices: np.ndarray) -> np.ndarray:
        """The rows of a batch's units, in batch order."""
        indices = np.asarray(indices, dtype=np.int64)
        counts = self.items[indices]
        starts = np.cumsum(counts) - counts
        return np.repeat(self.first[indices] - starts, counts) + np.arange(int(counts.sum()))

    def add(self, task: Task, indices: np.ndarray, logits: torch.Tensor, labels: torch.Tensor) -> None:
        units = self.units(indices)
        logits, labels = task.tracked(logits, labels, len(units))
        rows = torch.from_numpy(units).to(self.margin.device, non_blocking=True)
        self.margin.index_add_(0, rows, task.margins(logits, labels).float())
        self.seen.index_add_(0, rows, torch.ones_like(rows, dtype=torch.int32))
        self.probabilities.index_add_(0, rows, task.probabilities(logits.float()))

    def totals(self) -> list[torch.Tensor]:
        """The sums over every rank (each rank adds up only the examples it trained on). One process: the sums
        themselves, not copies; read-only to callers (three arrays of ten million rows are 240 MB)."""
        if not dist.is_initialized():
            return [self.margin, self.seen, self.probabilities]
        sums = [self.margin.clone(), self.seen.clone(), self.probabilities.clone()]
        for tensor in sums:
            dist.all_reduce(tensor)
        return sums

    def state_dict(self) -> dict:
        """The totals over every rank: a resumed run gives them to rank 0 alone (see load_state_dict)."""
        return dict(zip(SUMS, (t.cpu() for t in self.totals()), strict=True))

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(SUMS) or state["seen"].shape != self.seen.shape:
            raise BertfitError(
                "the checkpoint's mislabeled-example sums are from an older bertfit; resume with "
                "--set find_mislabeled=false, or start the run again"
            )
        for name in SUMS:
            getattr(self, name).copy_(state[name])

    def ranked(self, task: Task, frame: pd.DataFrame, features: Features) -> tuple[MislabeledSummary, list[Suspect]]:
        """Every rank's sums added up: a summary for metrics.json, and the flagged examples, the most contradicted
        first, each with the label the model prefers."""
        margin, seen, probabilities = (t.cpu().numpy() for t in self.totals())
        labels = task.tracked_labels(features)
        trained = np.flatnonzero(seen > 0)  # a unit never trained on is never flagged
        times = np.maximum(seen, 1).reshape(-1, *([1] * (margin.ndim - 1)))
        aum, mean_probabilities = margin / times, probabilities / np.maximum(seen, 1)[:, None]
        rows = slice(None) if len(trained) == len(seen) else trained  # every unit trained on: views, not copies
        flagged = trained[task.label_issues(labels[rows], mean_probabilities[rows])]
        rank = np.zeros(len(seen), dtype=np.float32)
        rank[rows] = task.ranking(labels[rows], aum[rows], mean_probabilities[rows])
        sums = UnitSums(labels=labels, margins=aum, probabilities=mean_probabilities, seen=seen, rank=rank)
        examples = task.suspects(frame, features, sums, flagged)
        summary = MislabeledSummary(
            method="cleanlab's confident learning (find_label_issues, pruned by noise rate) on the mean predicted "
            f"probabilities over training flags them; {task.ranked_by} ranks them",
            examined=self.examples_trained(features, trained),
            flagged=len(examples),
            lowest=examples[:SHOWN],
        )
        return summary, examples

    def examples_trained(self, features: Features, trained: np.ndarray) -> int:
        """How many examples had a unit trained on (features are in example order, an example's side by side)."""
        feature = np.searchsorted(np.cumsum(self.items), trained, side="right")
        examples = np.asarray(features.example_ids)[np.unique(feature)]
        return int((np.diff(examples) != 0).sum()) + int(len(examples) > 0)
