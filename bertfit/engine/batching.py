"""Which examples go in which batch: seeded, length-aware, restartable, and sharded across ranks."""

from __future__ import annotations

import numpy as np

# Examples are sorted by length inside windows of this many batches: enough to cut padding to a few
# percent, few enough that batch order stays random and per-batch statistics stay mixed.
BUCKET_BATCHES = 50


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, padding: str, min_size: int = 1
) -> list[np.ndarray]:
    """The global batches of one epoch: every example exactly once, order fixed by (seed, epoch) alone.

    `bucket` sorts each window of BUCKET_BATCHES batches by length, then shuffles whole batches;
    `dynamic` and `none` take batches in plain shuffled order (the HF Trainer's sampling).
    A batch smaller than `min_size` (the world size: every rank needs an example) joins its neighbour.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if padding != "bucket":
        return _merge_small([order[i : i + batch_size] for i in range(0, len(order), batch_size)], min_size)
    window = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    # The short final batch of each window stays where shuffling puts it, like any other.
    return _merge_small([batches[i] for i in rng.permutation(len(batches))], min_size)


def _merge_small(batches: list[np.ndarray], min_size: int) -> list[np.ndarray]:
    merged: list[np.ndarray] = []
    for batch in batches:
        if merged and (len(batch) < min_size or len(merged[-1]) < min_size):
            merged[-1] = np.concatenate([merged[-1], batch])
        else:
            merged.append(batch)
    return merged


def micro_batches(step_batch: np.ndarray, grad_accum: int, rank: int, world: int) -> list[np.ndarray]:
    """This rank's micro-batches of one optimizer step.

    A step batch (batch size × accumulation × world size examples) is cut into `grad_accum` contiguous
    micro-batches (similar lengths stay together), and each is dealt across ranks by stride, so that
    every rank gets a similar spread of lengths. Accumulation or more ranks therefore see exactly the
    examples one larger batch would.
    """
    parts = [part for part in np.array_split(step_batch, grad_accum) if len(part)]
    return [part[rank::world] for part in parts]


# Lengths a compiled model sees: few enough shapes that graphs are reused, close enough that short texts
# are not padded to 64 (SST-2 sentences average 13 tokens).
COMPILE_LENGTHS = (16, 32, 48, 64, 96, 128, 192, 256, 320, 384, 448, 512)


def round_up(length: int, multiple: int = 1) -> int:
    return -(-length // multiple) * multiple


def compile_length(length: int) -> int:
    """The first grid length that fits; past the grid, multiples of 128."""
    return next((g for g in COMPILE_LENGTHS if g >= length), round_up(length, 128))


def eval_batches(lengths: np.ndarray, batch_size: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """Length-sorted batches of at most `batch_size` × the longest length in tokens: the memory of a full batch
    of the longest examples, so shorter examples come in proportionally larger batches. Rank r takes batches
    r, r+world, ... so no example is counted twice."""
    order = np.argsort(lengths, kind="stable")
    budget = batch_size * max(1, int(lengths.max(initial=1)))
    batches, start = [], 0
    for end, index in enumerate(order):
        # Sorted ascending: the example joining a batch is its longest, so the batch costs (size) × its length.
        if end > start and (end - start + 1) * max(1, int(lengths[index])) > budget:
            batches.append(order[start:end])
            start = end
    if start < len(order):
        batches.append(order[start:])
    return batches[rank::world]
