"""Which examples go in which batch: seeded, length-aware, restartable, and sharded across ranks."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

# Examples are sorted by length inside windows of this many batches: enough to cut padding to a few
# percent, few enough that batch order stays random and per-batch statistics stay mixed.
BUCKET_BATCHES = 50


class Batches:
    """An epoch's batches as one array of example ids and the bounds between batches: 8 bytes per example, where a
    list of arrays costs another hundred bytes per batch and a Python object each."""

    def __init__(self, order: np.ndarray, bounds: np.ndarray):
        self.order, self.bounds = order, bounds

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, batch: int) -> np.ndarray:
        return self.order[self.bounds[batch] : self.bounds[batch + 1]]

    def __iter__(self):
        return (self[batch] for batch in range(len(self)))


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, padding: str, min_size: int = 1
) -> Batches:
    """The global batches of one epoch: every example exactly once, order fixed by (seed, epoch) alone.

    `bucket` sorts each window of BUCKET_BATCHES batches by length, then shuffles whole batches;
    `dynamic` and `none` take batches in plain shuffled order (the HF Trainer's sampling).
    A batch smaller than `min_size` (the world size: every rank needs an example) joins its neighbour.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if padding != "bucket":
        bounds = np.append(np.arange(0, len(order), batch_size), len(order))
        return Batches(order, _merge_small(bounds, min_size))
    window = batch_size * BUCKET_BATCHES
    starts = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        order[start : start + window] = chunk[np.argsort(lengths[chunk], kind="stable")]
        starts.append(np.arange(start, start + len(chunk), batch_size))
    # Each window's batches end at the next batch or the window's end: the short final batch of each window stays
    # where shuffling puts it, like any other.
    starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    ends = np.minimum(starts + batch_size, (starts // window + 1) * window, dtype=np.int64)
    ends = np.minimum(ends, len(order))
    shuffled = rng.permutation(len(starts))
    starts, sizes = starts[shuffled], (ends - starts)[shuffled]
    bounds = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    # Position k of the new order is position (k - its batch's new start + its batch's old start) of the sorted one.
    taken = np.arange(len(order)) + np.repeat(starts - bounds[:-1], sizes)
    return Batches(order[taken], _merge_small(bounds, min_size))


def _merge_small(bounds: np.ndarray, min_size: int) -> np.ndarray:
    """Bounds without those that would leave a batch smaller than `min_size`: a small batch joins the one before."""
    sizes = np.diff(bounds)
    if min_size <= 1 or len(sizes) == 0 or sizes.min() >= min_size:
        return bounds
    kept, last_size = [0], None
    for end, size in zip(bounds[1:].tolist(), sizes.tolist()):
        if last_size is not None and (size < min_size or last_size < min_size):
            kept[-1], last_size = end, last_size + size
        else:
            kept.append(end)
            last_size = size
    return np.asarray(kept, dtype=np.int64)


def micro_batches(step_batch: np.ndarray, grad_accum: int, rank: int, world: int) -> list[np.ndarray]:
    """This rank's micro-batches of one optimizer step.

    A step batch (batch size × accumulation × world size examples) is cut into `grad_accum` contiguous
    micro-batches (similar lengths stay together), and each is dealt across ranks by stride, so that
    every rank gets a similar spread of lengths. Accumulation or more ranks therefore see exactly the
    examples one larger batch would.
    """
    parts = [part for part in np.array_split(step_batch, grad_accum) if len(part)]
    return [part[rank::world] for part in parts]


def upcoming(
    plan: Callable[[int], Batches], epoch: int, position: int, grad_accum: int, rank: int, world: int
) -> Iterator[np.ndarray]:
    """Every micro-batch this rank trains on from step `position` of `epoch` on, in order, epoch after epoch."""
    while True:
        batches = plan(epoch)
        for step in range(position, len(batches)):
            yield from micro_batches(batches[step], grad_accum, rank, world)
        epoch, position = epoch + 1, 0


class Prefetcher:
    """The micro-batches to come, collated by a background thread `depth` ahead of the loop (and pinned, for a
    GPU, so their copy to it is asynchronous): gathering rows and building tensors for step n+1 happens while
    step n computes, not between steps. The loop asks for the batches in the order `planned` yields them."""

    def __init__(self, collate: Callable, planned: Iterator[np.ndarray], pin: bool, depth: int = 2):
        self.ready: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._fill, args=(collate, planned, pin), daemon=True, name="bertfit-collate"
        )

    def __enter__(self) -> Prefetcher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()

    def _fill(self, collate: Callable, planned: Iterator[np.ndarray], pin: bool) -> None:
        try:
            for indices in planned:
                batch = collate(indices)
                if pin:
                    batch = {name: tensor.pin_memory() for name, tensor in batch.items()}
                if not self._put((indices, batch)):
                    return
        except Exception as err:  # raised again in the loop's thread, which reports it
            self._put((None, err))

    def _put(self, item) -> bool:
        while not self.stopping.is_set():
            try:
                self.ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def next(self, indices: np.ndarray) -> dict:
        planned, batch = self.ready.get()
        if planned is None:
            raise batch
        if not np.array_equal(planned, indices):
            raise RuntimeError("the prefetched micro-batch is not the one the loop trains on")
        return batch


# Lengths a compiled model sees: few enough shapes that graphs are reused, close enough that short texts
# are not padded to 64 (SST-2 sentences average 13 tokens).
COMPILE_LENGTHS = (16, 32, 48, 64, 96, 128, 192, 256, 320, 384, 448, 512)


def round_up(length: int, multiple: int = 1) -> int:
    return -(-length // multiple) * multiple


def compile_length(length: int) -> int:
    """The first grid length that fits; past the grid, multiples of 128."""
    return next((g for g in COMPILE_LENGTHS if g >= length), round_up(length, 128))


def token_budget(lengths: np.ndarray, batch_size: int) -> int:
    """Tokens an evaluation batch may hold, padding included: a full batch of the longest examples."""
    return batch_size * max(1, int(lengths.max(initial=1)))


def eval_batches(lengths: np.ndarray, batch_size: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """Length-sorted batches of at most `batch_size` × the longest length in tokens: the memory of a full batch
    of the longest examples, so shorter examples come in proportionally larger batches. Rank r takes batches
    r, r+world, ... so no example is counted twice."""
    order = np.argsort(lengths, kind="stable")
    budget = token_budget(lengths, batch_size)
    batches, start = [], 0
    for end, index in enumerate(order):
        # Sorted ascending: the example joining a batch is its longest, so the batch costs (size) × its length.
        if end > start and (end - start + 1) * max(1, int(lengths[index])) > budget:
            batches.append(order[start:end])
            start = end
    if start < len(order):
        batches.append(order[start:])
    return batches[rank::world]
