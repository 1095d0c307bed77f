"""The one evaluation path: training's evaluations, `bertfit eval`, `bertfit predict` and serving all run a model
over features through `infer`, and score through `evaluate`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from bertfit import models
from bertfit.config import Config
from bertfit.engine import batching
from bertfit.engine.device import Dist, autocast
from bertfit.tasks import Features, Task


@dataclass
class Inference:
    outputs: object  # per feature, in feature order, as `task.stack` shapes them
    loss_sum: float  # summed over every loss term (0.0 when not asked for)


@torch.no_grad()
def infer(
    model: torch.nn.Module,
    task: Task,
    features: Features,
    output: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    device: torch.device,
    precision: str,
    pad_id: int,
    ranks: Dist = Dist(),
    with_loss: bool = False,
    pad_multiple: int | None = None,
    packed: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Inference:
    """Length-sorted batches; `output` (task.predictions or task.scores) reduced to small host arrays; exact under
    sharding across ranks. The model is left in the mode it was in. `pad_multiple`: batch lengths rounded up to a
    multiple of it (default 8 on GPUs, for tensor cores, else none). `packed`: each batch one token stream in
    FlexAttention (see `packs`), every stream lengthened to the batches' token budget, so one shape serves all."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=device)
    batches = batching.eval_batches(features.lengths, batch_size, ranks.rank, ranks.world)
    if packed:
        forward = models.packed(model, task.labels_tokens, flex=True)
        budget = batching.token_budget(features.lengths, batch_size)

        def collate(features: Features, indices: np.ndarray) -> dict:
            # Logits come back one row per example, as a padded batch's; so do the labels.
            width = int(features.lengths[indices].max())
            stream = task.collate_packed(features, indices, pad_id, pad_to=lambda tokens: budget)
            return {**stream, "labels": task.collate_labels(features, indices, width), "width": width}
    else:
        forward = model
        pad_to = partial(batching.round_up, multiple=pad_multiple or (8 if device.type == "cuda" else 1))
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
    model: torch.nn.Module,
    task: Task,
    features: Features,
    frame: pd.DataFrame,
    batch_size: int,
    device: torch.device,
    precision: str,
    pad_id: int,
    ranks: Dist = Dist(),
    packed: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Loss (mean per loss term) and the task's metrics, with how long it took. `progress` is told how many
    features each batch held."""
    started = time.perf_counter()
    inference = infer(
        model,
        task,
        features,
        task.predictions,
        batch_size,
        device,
        precision,
        pad_id,
        ranks,
        with_loss=True,
        packed=packed,
        progress=progress,
    )
    result = {"loss": inference.loss_sum / max(1, int(features.items.sum()))}
    result.update(task.metrics(features, frame, inference.outputs))
    seconds = time.perf_counter() - started
    result.update(runtime=seconds, samples_per_second=len(frame) / seconds if seconds else 0.0)
    return result
