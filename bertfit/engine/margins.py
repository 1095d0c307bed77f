"""Likely mislabeled training examples, from what training computes anyway: the area under the margin (AUM,
Pleiss et al. 2020). Each time an example is trained on, its margin — the logit of its given label minus the
largest other logit — is added up on the device; an example the model keeps contradicting ends with a negative
mean margin. Cost: one gather and one index_add per micro-batch, and two floats per example (plus one per class
for the suspected label)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from bertfit.runfiles import MislabeledSummary, Suspect
from bertfit.tasks import Task

SHOWN = 10  # examples kept in metrics.json (all of them go to mislabeled.jsonl), lowest margin first


class MarginTracker:
    def __init__(self, examples: int, classes: int, device: torch.device):
        # 4 bytes each: a sum of a few dozen margins needs no float64, nor a count of epochs int64 (ten million
        # examples: 160 MB with the logits, not 240)
        self.margin = torch.zeros(examples, dtype=torch.float32, device=device)
        self.seen = torch.zeros(examples, dtype=torch.int32, device=device)
        self.logits = torch.zeros(examples, classes, dtype=torch.float32, device=device)

    def add(self, task: Task, indices: np.ndarray, logits: torch.Tensor, labels: torch.Tensor) -> None:
        rows = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(self.margin.device, non_blocking=True)
        self.margin.index_add_(0, rows, task.margins(logits, labels).float())
        self.seen.index_add_(0, rows, torch.ones_like(rows, dtype=torch.int32))
        self.logits.index_add_(0, rows, logits.float())

    def totals(self) -> list[torch.Tensor]:
        """The sums over every rank (each rank adds up only the examples it trained on). One process: the sums
        themselves, not copies; read-only to callers (three arrays of ten million rows are 240 MB)."""
        if not dist.is_initialized():
            return [self.margin, self.seen, self.logits]
        sums = [self.margin.clone(), self.seen.clone(), self.logits.clone()]
        for tensor in sums:
            dist.all_reduce(tensor)
        return sums

    def state_dict(self) -> dict:
        """The totals over every rank: a resumed run gives them to rank 0 alone (see load_state_dict)."""
        return dict(zip(("margin", "seen", "logits"), (t.cpu() for t in self.totals()), strict=True))

    def load_state_dict(self, state: dict) -> None:
        for name in ("margin", "seen", "logits"):
            getattr(self, name).copy_(state[name])

    def ranked(self, task: Task, frame: pd.DataFrame, labels: np.ndarray) -> tuple[MislabeledSummary, list[Suspect]]:
        """Every rank's sums added up: a summary for metrics.json, and every example with a negative mean margin,
        lowest first."""
        margin, seen, logits = (t.cpu().numpy() for t in self.totals())
        trained = seen > 0
        aum = margin / np.maximum(seen, 1)  # 0 where never trained on, and those are never flagged
        flagged = np.flatnonzero(trained & (aum < 0))
        order = flagged[np.argsort(aum[flagged], kind="stable")]
        # The suspected label of the flagged rows only: the best mean logit other than the given one.
        mean_logits = logits[order] / seen[order][:, None]
        mean_logits[np.arange(len(order)), labels[order]] = -np.inf
        texts = task.profile_texts(frame.iloc[order])  # the flagged rows only, not every training text
        names = task.label_names
        examples = [
            Suspect(
                row=int(row),
                text=str(text),
                label=names[labels[row]],
                suspected=names[int(suspected)],
                margin=round(float(aum[row]), 4),
                seen=int(seen[row]),
            )
            for row, text, suspected in zip(order, texts, mean_logits.argmax(-1), strict=True)
        ]
        summary = MislabeledSummary(
            method="area under the margin (Pleiss et al. 2020): the mean, over training, of the given label's "
            "logit minus the largest other logit; flagged when negative",
            examined=int(trained.sum()),
            flagged=len(examples),
            lowest=examples[:SHOWN],
        )
        return summary, examples
