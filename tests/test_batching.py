import numpy as np
import pytest
import torch

from bertfit.config import Config
from bertfit.engine import batching
from bertfit.engine.setup import make_scheduler

LENGTHS = np.random.default_rng(0).integers(5, 300, size=1003)


@pytest.mark.parametrize("padding", ["bucket", "dynamic", "none"])
def test_every_example_exactly_once_per_epoch(padding):
    for epoch in range(3):
        batches = batching.epoch_batches(LENGTHS, 32, seed=1, epoch=epoch, padding=padding)
        seen = np.concatenate(batches)
        assert sorted(seen.tolist()) == list(range(len(LENGTHS)))
        assert max(len(b) for b in batches) == 32


def test_order_is_seeded_identical_across_restarts_and_varies_by_epoch():
    first = batching.epoch_batches(LENGTHS, 16, seed=5, epoch=2, padding="bucket")
    again = batching.epoch_batches(LENGTHS, 16, seed=5, epoch=2, padding="bucket")
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and len(first) == len(again)
    other_epoch = batching.epoch_batches(LENGTHS, 16, seed=5, epoch=3, padding="bucket")
    other_seed = batching.epoch_batches(LENGTHS, 16, seed=6, epoch=2, padding="bucket")
    assert not np.array_equal(first[0], other_epoch[0]) and not np.array_equal(first[0], other_seed[0])


def padding_share(batches):
    padded = sum(len(b) * LENGTHS[b].max() for b in batches)
    return 1 - LENGTHS.sum() / padded


def test_buckets_cut_padding_and_keep_batches_shuffled():
    bucketed = batching.epoch_batches(LENGTHS, 32, 0, 0, "bucket")
    plain = batching.epoch_batches(LENGTHS, 32, 0, 0, "dynamic")
    assert padding_share(bucketed) < 0.1 < 0.4 < padding_share(plain)
    maxima = [LENGTHS[b].max() for b in bucketed]
    assert maxima != sorted(maxima)  # batch order is not sorted by length


def test_micro_batches_are_disjoint_and_cover_the_step_batch():
    step_batch = np.arange(20)
    parts = [m for r in range(2) for m in batching.micro_batches(step_batch, 3, r, 2)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(20))
    assert [len(m) for m in batching.micro_batches(step_batch, 3, 0, 2)] == [4, 4, 3]
    assert batching.micro_batches(np.arange(2), 4, 0, 1) == [np.array([0]), np.array([1])]
    merged = batching.epoch_batches(np.ones(33, dtype=int), 16, 0, 0, "bucket", min_size=2)
    assert min(len(b) for b in merged) >= 2 and sum(len(b) for b in merged) == 33


def test_compile_grid_bounds_shapes_and_waste():
    widths = {batching.compile_length(n) for n in range(1, 513)}
    assert len(widths) == len(batching.COMPILE_LENGTHS)
    assert (
        batching.compile_length(13) == 16 and batching.compile_length(65) == 96 and batching.compile_length(600) == 640
    )
    assert all(batching.compile_length(n) / n <= 1.5 for n in range(33, 513))


def test_eval_shards_count_every_example_once():
    shards = [np.concatenate(batching.eval_batches(LENGTHS, 50, r, 3)) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(len(LENGTHS)))


def test_eval_batches_grow_as_examples_shrink_within_the_full_batch_budget():
    lengths = np.array([512] * 40 + [16] * 1000 + [100] * 300)
    batches = batching.eval_batches(lengths, 16)
    budget = 16 * 512
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert all(len(b) * lengths[b].max() <= budget for b in batches)
    assert [len(b) for b in batches] == [512, 488, 81, 81, 81, 57, 16, 16, 8]
    assert all(lengths[b].max() <= lengths[n].min() for b, n in zip(batches, batches[1:]))  # sorted


def lr_curve(scheduler, warmup_ratio, steps=100, warmup_steps=0):
    cfg = Config(scheduler=scheduler, warmup_ratio=warmup_ratio, warmup_steps=warmup_steps, lr=1.0)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = make_scheduler(cfg, optimizer, steps)
    values = []
    for _ in range(steps):
        values.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return np.array(values)


def test_warmup_is_rounded_up_and_kept_by_the_constant_schedule():
    # bertfit's rules, not transformers': warmup_ratio rounds up to whole steps, and 'constant' keeps its warmup
    # (transformers' own 'constant' schedule would drop it silently).
    assert lr_curve("constant", 0.25, steps=10) == pytest.approx([0, 1 / 3, 2 / 3] + [1.0] * 7)
    assert lr_curve("linear", 0.01, steps=10)[:2] == pytest.approx([0, 1.0])  # 0.1 of a step is one step
    assert lr_curve("constant", 0.0, steps=10) == pytest.approx([1.0] * 10)


def test_warmup_steps_override_warmup_ratio():
    curve = lr_curve("linear", 0.5, steps=20, warmup_steps=2)
    assert curve[:3] == pytest.approx([0, 0.5, 1.0]) and np.all(np.diff(curve[2:]) < 0)


@pytest.mark.slow
def test_compiled_and_eager_give_the_same_loss(tiny_bert_no_dropout, minilm_tokenizer):
    import pandas as pd

    from bertfit import models
    from bertfit.tasks import ClassificationTask

    frame = pd.DataFrame({"text": ["a fine film", "an awful, boring mess of a movie", "ok"], "label": [1, 0, 1]})
    task = ClassificationTask(["text"], "label", ["neg", "pos"], 64)
    batch = task.collate(
        task.encode(frame, minilm_tokenizer),
        np.arange(3),
        minilm_tokenizer.pad_token_id,
        pad_to=batching.compile_length,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"  # benchmarks/gpu_check.py runs this on the GPU too
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch.pop("labels")
    torch.manual_seed(0)
    model = models.load_model(tiny_bert_no_dropout, task.auto_model, task.head_config()).to(device).eval()
    eager = task.loss_sum(model(**batch).logits, labels)
    compiled = task.loss_sum(torch.compile(model)(**batch).logits, labels)
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-4)


def _list_of_arrays(lengths, batch_size, seed, epoch, padding, min_size=1):
    """The plan as bertfit built it before it was one array: the reference the compact plan must equal."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))

    def merge(batches):
        merged = []
        for batch in batches:
            if merged and (len(batch) < min_size or len(merged[-1]) < min_size):
                merged[-1] = np.concatenate([merged[-1], batch])
            else:
                merged.append(batch)
        return merged

    if padding != "bucket":
        return merge([order[i : i + batch_size] for i in range(0, len(order), batch_size)])
    window, batches = batch_size * batching.BUCKET_BATCHES, []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return merge([batches[i] for i in rng.permutation(len(batches))])


@pytest.mark.parametrize("padding", ["bucket", "dynamic"])
@pytest.mark.parametrize(("size", "batch_size", "min_size"), [(1003, 32, 1), (1003, 7, 4), (33, 16, 2), (5, 8, 1)])
def test_the_compact_plan_holds_the_same_batches_as_a_list_of_arrays(padding, size, batch_size, min_size):
    """Same draws, same batches: runs checkpointed before the plan became one array resume onto the same examples."""
    lengths = np.random.default_rng(size).integers(5, 300, size=size)
    plan = batching.epoch_batches(lengths, batch_size, 3, 1, padding, min_size)
    reference = _list_of_arrays(lengths, batch_size, 3, 1, padding, min_size)
    assert len(plan) == len(reference) and all(np.array_equal(a, b) for a, b in zip(plan, reference))


def test_prefetched_batches_are_the_planned_ones_across_epochs_and_stop_cleanly():
    lengths = np.random.default_rng(0).integers(5, 60, 50)

    def plan(epoch):
        return batching.epoch_batches(lengths, 8, 42, epoch, "bucket")

    expected = [micro for epoch in (0, 1) for step in plan(epoch) for micro in batching.micro_batches(step, 2, 0, 1)]
    start = 3  # as a resumed run would: from the fourth step of the first epoch
    skipped = sum(len(batching.micro_batches(step, 2, 0, 1)) for step in list(plan(0))[:start])
    planned = batching.upcoming(plan, 0, start, 2, 0, 1)

    def collate(indices):
        return {"input_ids": torch.from_numpy(lengths[indices])}

    with batching.Prefetcher(collate, planned, pin=False) as prefetcher:
        for indices in expected[skipped:]:  # across the end of the first epoch into the second
            torch.testing.assert_close(prefetcher.next(indices)["input_ids"], torch.from_numpy(lengths[indices]))
        with pytest.raises(RuntimeError, match="not the one the loop trains on"):
            prefetcher.next(np.array([0]))
    assert not prefetcher.thread.is_alive()  # stopped though the plan never ends and its queue was full


def test_an_error_while_prefetching_is_raised_in_the_loop():
    def collate(indices):
        raise ValueError("row 3 is broken")

    prefetcher = batching.Prefetcher(collate, iter([np.array([3])]), pin=False)
    with prefetcher, pytest.raises(ValueError, match="row 3 is broken"):
        prefetcher.next(np.array([3]))
