"""Likely mislabeled training examples, from what training computes anyway. Each time an example is trained on,
its margin (the logit of its given label minus the largest other logit) and its predicted probabilities are added
up on the device. The list is ranked by the mean margin, the area under the margin (AUM, Pleiss et al. 2020): an
example the model keeps contradicting ranks first. Which examples are flagged is cleanlab's decision
(`find_label_issues`, confident learning: per-class thresholds and an estimate of how many labels are wrong) on the
mean probabilities, rather than a margin below 0, which flagged 2.6 times as many examples as were wrong on SST-2
(benchmarks/mislabeled.py). Cost: a gather, a softmax and three index_adds per micro-batch; two floats per example
and one per class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from bertfit.errors import BertfitError
from bertfit.runfiles import MislabeledSummary, Suspect
from bertfit.tasks import Task

SUMS = ("margin", "seen", "probabilities")
SHOWN = 10  # examples kept in metrics.json (all of them go to mislabeled.jsonl), lowest margin first


class MarginTracker:
    def __init__(self, examples: int, classes: int, device: torch.device):
        # 4 bytes each: a sum of a few dozen margins needs no float64, nor a count of epochs int64 (ten million
        # examples: 160 MB with the probabilities, not 240)
        self.margin = torch.zeros(examples, dtype=torch.float32, device=device)
        self.seen = torch.zeros(examples, dtype=torch.int32, device=device)
        self.probabilities = torch.zeros(examples, classes, dtype=torch.float32, device=device)

    def add(self, task: Task, indices: np.ndarray, logits: torch.Tensor, labels: torch.Tensor) -> None:
        rows = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(self.margin.device, non_blocking=True)
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
        if set(state) != set(SUMS):
            raise BertfitError(
                "the checkpoint's mislabeled-example sums are from an older bertfit; resume with "
                "--set find_mislabeled=false, or start the run again"
            )
        for name in SUMS:
            getattr(self, name).copy_(state[name])

    def ranked(self, task: Task, frame: pd.DataFrame, labels: np.ndarray) -> tuple[MislabeledSummary, list[Suspect]]:
        """Every rank's sums added up: a summary for metrics.json, and the flagged examples, lowest mean margin
        first, each with the label the model prefers."""
        margin, seen, probabilities = (t.cpu().numpy() for t in self.totals())
        trained = np.flatnonzero(seen > 0)  # an example never trained on is never flagged
        aum = margin / np.maximum(seen, 1)
        mean_probabilities = probabilities / np.maximum(seen, 1)[:, None]
        flagged = trained[confident_issues(labels[trained], mean_probabilities[trained])]
        order = flagged[np.argsort(aum[flagged], kind="stable")]
        suspected = mean_probabilities[order].copy()  # the flagged rows only: the likeliest label other than the given
        suspected[np.arange(len(order)), labels[order]] = -np.inf
        texts = task.profile_texts(frame.iloc[order])  # the flagged rows only, not every training text
        names = task.label_names
        examples = [
            Suspect(
                row=int(row),
                text=str(text),
                label=names[labels[row]],
                suspected=names[int(other)],
                margin=round(float(aum[row]), 4),
                probability=round(float(mean_probabilities[row, labels[row]]), 4),
                seen=int(seen[row]),
            )
            for row, text, other in zip(order, texts, suspected.argmax(-1), strict=True)
        ]
        summary = MislabeledSummary(
            method="cleanlab's confident learning (find_label_issues, pruned by noise rate) on the mean predicted "
            "probabilities over training flags them; the area under the margin (Pleiss et al. 2020: the mean of "
            "the given label's logit minus the largest other) ranks them",
            examined=len(trained),
            flagged=len(examples),
            lowest=examples[:SHOWN],
        )
        return summary, examples


def confident_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The positions cleanlab's confident learning finds mislabeled, over the classes the examples have (a class
    no training example has would leave its per-class threshold undefined)."""
    from cleanlab.filter import find_label_issues

    present, dense = np.unique(labels, return_inverse=True)
    if len(present) < 2:  # one class: nothing to confuse it with
        return np.zeros(0, dtype=np.int64)
    kept = probabilities[:, present].astype(np.float64)
    kept /= np.maximum(kept.sum(1, keepdims=True), 1e-12)
    # One process: cleanlab's default forks a worker per core, each with a copy of the probabilities.
    return np.flatnonzero(find_label_issues(dense, kept, filter_by="prune_by_noise_rate", n_jobs=1, verbose=False))
