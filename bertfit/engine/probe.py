"""The frozen-probe baseline: before fine-tuning, a linear model (the task's `probe_model`: logistic regression,
ridge for scores) fitted on the pretrained encoder's pooled embeddings of training examples and scored on
validation. One forward pass over at most PROBE_ROWS examples of each split, seconds on a CPU; it says what the
encoder already knows, so that a fine-tuned model that does not beat it is seen to have lost it (Seed 003's
tweets: fine-tuning at chance where the probe reaches 0.59)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from bertfit.engine.device import autocast
from bertfit.models import Pooling
from bertfit.runfiles import Probe, Scores
from bertfit.tasks import Features, Task

# A sweep's trials fine-tune one model on one data set, one after another in a process: the pretrained encoder and
# so its probe are the same for each, fitted once (keyed by everything it reads) rather than once a trial, where it
# was about a sixth of a 3,000-sentence trial on 2 cores.
_FITTED: dict[tuple, Probe | None] = {}
PROBE_ROWS = 2_000  # examples of a split embedded for the probe: enough for a linear model of a few hundred inputs
BATCH = 64


def embed(
    model: torch.nn.Module,
    task: Task,
    features: Features,
    examples: np.ndarray,
    device: torch.device,
    precision: str,
    pad_id: int,
    pooling: Pooling,
) -> np.ndarray:
    """One pooled vector per example in `examples` (the mean of its windows' vectors where a text is windowed:
    each window's vector normalized first, as a linear head reading every window sees them)."""
    owners = np.asarray(features.example_ids)
    chosen = np.flatnonzero(np.isin(owners, examples))
    chosen = chosen[np.argsort(features.lengths[chosen], kind="stable")]  # similar lengths batched: less padding
    encoder = model.base_model
    vectors = np.zeros((len(chosen), model.config.hidden_size), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        for start in range(0, len(chosen), BATCH):
            indices = chosen[start : start + BATCH]
            batch = task.collate(features, indices, pad_id)
            inputs = {
                k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")
            }
            pooled = pooling(encoder(**inputs).last_hidden_state.float(), inputs["attention_mask"])
            vectors[start : start + len(indices)] = pooled.cpu().numpy()
    model.train(was_training)
    position = {int(e): k for k, e in enumerate(examples)}
    rows = np.asarray([position[int(e)] for e in owners[chosen]])
    pooled = np.zeros((len(examples), vectors.shape[1]), dtype=np.float32)
    np.add.at(pooled, rows, vectors)
    return pooled / np.bincount(rows, minlength=len(examples))[:, None]


def sample(count: int, seed: int) -> np.ndarray:
    if count <= PROBE_ROWS:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, PROBE_ROWS, replace=False))


def remembered_probe(key: tuple, fit: Callable[[], Probe | None]) -> Probe | None:
    """`fit()`'s probe, fitted once per process for each `key` (model, data fingerprint, pooling, precision,
    device, seed)."""
    if key not in _FITTED:
        _FITTED[key] = fit()
    found = _FITTED[key]
    return found.model_copy(deep=True) if found is not None else None


def frozen_probe(
    model: torch.nn.Module,
    task: Task,
    features: dict[str, Features],
    device: torch.device,
    precision: str,
    pad_id: int,
    pooling: Pooling,
    seed: int,
) -> Probe | None:
    """The probe's validation scores, or None for a kind without a probe."""
    estimator = task.probe_model()
    if estimator is None:
        return None
    started = time.perf_counter()
    splits = {}
    for name in ("train", "validation"):
        labels = task.example_labels(features[name])
        examples = sample(len(labels), seed)
        splits[name] = (
            embed(model, task, features[name], examples, device, precision, pad_id, pooling),
            labels[examples],
        )
    (train_x, train_y), (val_x, val_y) = splits["train"], splits["validation"]
    estimator.fit(train_x, train_y)
    metrics = task.example_metrics(val_y, task.probe_outputs(estimator, val_x))
    return Probe(
        metrics=Scores(**metrics),
        train_rows=len(train_y),
        validation_rows=len(val_y),
        pooling=pooling.mode,
        normalized=pooling.normalize,
        estimator=type(estimator).__name__,
        fit_seconds=round(time.perf_counter() - started, 2),
    )
