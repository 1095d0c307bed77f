"""The one evaluation path: training's evaluations, `bertfit eval`, `bertfit predict` and serving all run a model
over features through `infer`, and score through `evaluate`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from bertfit import models
from bertfit.config import Config
from bertfit.engine import batching
from bertfit.engine.device import Dist, autocast
from bertfit.runfiles import Scores
from bertfit.tasks import Features, Task


@dataclass
class Inference:
    outputs: object  # per feature, in feature order, as `task.stack` shapes them
    loss_sum: float  # summed over every loss term (0.0 when not asked for)


@dataclass
class Scorer:
    """A model ready to run over features, and how: what every evaluation and prediction passes to `infer` and
    `evaluate`. `pad_multiple`: batch lengths rounded up to a multiple of it (default 8 on GPUs, for tensor
    cores, else none). `packed`: each batch one token stream in FlexAttention (see `packs`)."""

    model: torch.nn.Module
    task: Task
    batch_size: int
    device: torch.device
    precision: str
    pad_id: int
    ranks: Dist = field(default_factory=Dist)
    packed: bool = False
    pad_multiple: int | None = None


@torch.no_grad()
def infer(
    scorer: Scorer,
    features: Features,
    output: Callable[[torch.Tensor], torch.Tensor],
    with_loss: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Inference:
    """Length-sorted batches; `output` (task.predictions or task.scores) reduced to small host arrays; exact under
    sharding across ranks. The model is left in the mode it was in. Packed: every stream lengthened to the
    batches' token budget, so one shape serves all. `progress` is told how many features each batch held."""
    model, task, device, ranks = scorer.model, scorer.task, scorer.device, scorer.ranks
    batch_size, precision, pad_id = scorer.batch_size, scorer.precision, scorer.pad_id
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=device)
    batches = batching.eval_batches(features.lengths, batch_size, ranks.rank, ranks.world)
    if scorer.packed:
        forward = models.packed(model, task.labels_tokens, flex=True)
        budget = batching.token_budget(features.lengths, batch_size)

        def collate(features: Features, indices: np.ndarray) -> dict:
            # Logits come back one row per example, as a padded batch's; so do the labels.
            width = int(features.lengths[indices].max())
            stream = task.collate_packed(features, indices, pad_id, pad_to=lambda tokens: budget)
            return {**stream, "labels": task.collate_labels(features, indices, width), "width": width}
    else:
        forward = model
        pad_to = partial(batching.round_up, multiple=scorer.pad_multiple or (8 if device.type == "cuda" else 1))
        collate = partial(task.collate, pad_id=pad_id, pad_to=pad_to)
    on_device = []  # read back after the last batch, so the host never waits for the device in between
    # One autocast context for every batch: the weights do not change, so their bf16 copies are cast once and
    # reused (a context per batch casts all of them again for each one).
    with autocast(device, precision):
        for indices in batches:
            collated = collate(features, indices)
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in collated.items()}
            labels = batch.pop("labels")
            logits = forward(**batch).logits
            if with_loss:
                loss += task.loss_sum(logits, labels).double()
            on_device.append((indices, output(logits)))
            if progress is not None:
                progress(len(indices))
    shard: dict[int, np.ndarray] = {}
    for indices, values in on_device:
        values = values.cpu().numpy()
        for row, index in enumerate(indices):
            shard[int(index)] = task.feature_output(values[row], features.lengths[index])
    total_loss = float(loss)
    if ranks.enabled:
        gathered: list = [None] * ranks.world
        dist.all_gather_object(gathered, (total_loss, shard))
        total_loss = sum(part[0] for part in gathered)
        shard = {k: v for part in gathered for k, v in part[1].items()}
    model.train(was_training)
    return Inference(task.stack([shard[i] for i in range(len(features))]), total_loss)


def packs(cfg: Config, device: torch.device) -> bool:
    """Evaluation packs where training did and it pays: on a GPU, where FlexAttention skips the pairs of examples.
    A dense mask over a whole evaluation batch's stream would hold the stream's length squared."""
    return cfg.padding == "packed" and device.type == "cuda"


def evaluate(
    scorer: Scorer, features: Features, frame: pd.DataFrame, progress: Callable[[int], None] | None = None
) -> Scores:
    """Loss (mean per loss term) and the task's metrics, with how long it took. `progress` is told how many
    features each batch held."""
    started = time.perf_counter()
    inference = infer(scorer, features, scorer.task.predictions, with_loss=True, progress=progress)
    loss = inference.loss_sum / max(1, int(features.items.sum()))
    metrics = scorer.task.metrics(features, frame, inference.outputs)
    seconds = time.perf_counter() - started
    return Scores(loss=loss, **metrics, runtime=seconds, samples_per_second=len(frame) / seconds if seconds else 0.0)
