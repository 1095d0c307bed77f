"""The training loop, and what is written at its end. One screen from `run_loop` to `finish`: setup lives in
`setup`, the run log in `runlog`, evaluation in `evaluation`."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch
import torch.distributed as dist

from bertfit import models, runfiles
from bertfit.config import Config
from bertfit.engine import batching, checkpoint, fewshot
from bertfit.engine.device import agreed, autocast, hardware, peak_flops, release_free_memory
from bertfit.engine.evaluation import evaluate
from bertfit.engine.setup import Run, output_folder, plan_epoch, protected_inputs, setup
from bertfit.errors import BertfitError
from bertfit.files import TEMP_PREFIX, to_json, writing
from bertfit.records import markdown_table, probe_line, table_columns, table_rows
from bertfit.runfiles import (
    FORMAT,
    BadStep,
    End,
    Finding,
    Probe,
    ProbeResult,
    RunMetrics,
    Scores,
    Start,
    TrainSummary,
)
from bertfit.runfolder import RunFolder
from bertfit.tasks import LOWER_IS_BETTER
from bertfit.tasks.profile import cached_profile, summary_lines


class Interrupted(Exception):
    """Raised at a step boundary after SIGINT/SIGTERM, once the checkpoint is safely written."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}; resume with --resume")
        self.exit_code = 128 + signum


class Diverged(BertfitError):
    pass


# Writes a run's reports (card, plots, diagnosis) from its files: reporter(folder, finished) returns the diagnosis.
# Passed in by the caller, because reports are drawn from the files alone and the engine does not know how.
Reporter = Callable[[RunFolder, bool], list[Finding]]
# Seconds between hand-backs of freed heap to the system during training (malloc_trim): often enough that a long run
# does not carry its transients, rarely enough that the steps after one do not fault their memory in again. At every
# log line, one-thread minilm training on a CPU ran 7-15% slower (BENCHMARKS "sweep, two workers, cheaper trials").
TRIM_EVERY = 30.0

# Told each evaluation (its scores, and the share of the run's steps done: 1.0 at the last); a reason it returns ends
# the run there, as early stopping does: how a hyperparameter search stops a trial its pruner judges hopeless (the
# trial keeps its log, metrics and reports).
Judge = Callable[[Scores, float], str | None]


def train(
    cfg: Config,
    resume: bool = False,
    overwrite: bool = False,
    console=None,
    reporter: Reporter | None = None,
    allow_data_change: bool = False,
    judge: Judge | None = None,
) -> Outcome:
    """Only the rank that writes holds the run folder (its lock, the check of its contents, the clearing)."""
    out = output_folder(cfg)
    writer = int(os.environ.get("RANK", "0")) == 0
    folder = RunFolder.claim(out, resume, overwrite, protected_inputs(cfg)) if writer else None
    with folder or contextlib.nullcontext():
        run = setup(cfg, folder, resume, overwrite, allow_data_change)
        return (run_setfit if run.pairs is not None else run_loop)(run, console, reporter, judge)


def log_start(run: Run) -> None:
    """The data profile, and the run's first log line: what it trains on, where, and how."""
    cfg = run.cfg
    profiling = time.perf_counter()
    data_profile = cached_profile(
        run.frames, run.task, run.spec, {k: f.full_lengths for k, f in run.features.items()}, cfg.max_length
    )
    run.timings["profile_seconds"] = time.perf_counter() - profiling
    run.folder.write("data_profile.json", to_json(data_profile.dump(), indent=2))  # NaN (one-row std) as null
    release_free_memory()
    trainable, parameters = models.parameter_counts(run.model)
    run.log.event(
        Start(
            format=FORMAT,
            parameters=parameters,
            trainable_parameters=trainable,
            profile=summary_lines(data_profile),
            task=run.task.kind,
            dataset=run.splits.name,
            model=cfg.model,
            examples={name: len(frame) for name, frame in run.frames.items()},
            features={name: len(f) for name, f in run.features.items()},
            steps=run.total_steps,
            steps_per_epoch=run.steps_per_epoch,
            method=cfg.method,
            **({"pairs": len(run.pairs)} if run.pairs is not None else {}),
            effective_batch_size=cfg.effective_batch_size(),
            world_size=cfg.world_size,
            device=str(run.device),
            hardware=hardware(run.device),
            precision=cfg.precision,
            notes=run.splits.notes,
            tag_scheme=run.spec.tag_scheme,
            repaired_tags=run.spec.repaired_tags,
            **({"corrections": run.splits.corrections} if run.splits.corrections is not None else {}),
            **run.timings,
        )
    )
    if run.probe is not None:
        run.log.event(run.probe)


def run_loop(run: Run, console, reporter: Reporter | None = None, judge: Judge | None = None) -> Outcome:
    cfg, state, ranks, task = run.cfg, run.state, run.dist, run.task
    if not run.resumed and ranks.main:
        log_start(run)
    # from_pretrained returns the model in eval mode: without this, dropout (and gradient checkpointing, which
    # only acts in training mode) would be off for the whole run. Evaluation restores the mode it finds.
    run.model.train()
    train_features = run.features["train"]
    items_per_example = float(np.mean(train_features.items))
    packing = task.collate_packed if cfg.padding == "packed" else task.collate
    collate = partial(packing, train_features, pad_id=run.tokenizer.pad_token_id, pad_to=padding_rule(cfg, run.device))
    if ranks.main and console is not None:
        console.print(plan_line(run), markup=False)
    progress = run.log.progress(console, run.total_steps, state.step)
    planned_epoch, epoch_plan = None, []
    guard = NonFiniteGuard(run.device, min(cfg.log_every, 1024), cfg.max_bad_steps, state.step)
    planned = batching.upcoming(
        partial(plan_epoch, cfg, train_features), state.epoch, state.position, cfg.grad_accum, ranks.rank, ranks.world
    )
    prefetcher = batching.Prefetcher(collate, planned, pin=run.device.type == "cuda")
    next_trim = time.monotonic() + TRIM_EVERY
    with progress, SignalGuard() as signals, prefetcher:
        while state.step < run.total_steps and state.stop_reason is None:
            step_started = time.perf_counter()
            if planned_epoch != state.epoch:
                planned_epoch, epoch_plan = state.epoch, plan_epoch(cfg, train_features, state.epoch)
            step_batch = epoch_plan[state.position]
            # Normalise by the loss terms a step batch of this many examples holds on average (all ranks, all
            # micro-batches): the gradient is then that of one big batch, whatever the accumulation or world size,
            # and every loss term weighs the same in every step. A token task's terms are its labelled tokens:
            # divided by the step's own count, length-grouped batches of short sentences gave each of their
            # tokens several times the weight of a long sentence's (CoNLL-2003 validation F1 0.8810 over three
            # seeds against 0.8829 now and the Trainer's 0.8852 ± 0.0028: BENCHMARKS.md).
            step_items = len(step_batch) * items_per_example
            micro = batching.micro_batches(step_batch, cfg.grad_accum, ranks.rank, ranks.world)
            for i, indices in enumerate(micro):
                batch = {k: v.to(run.device, non_blocking=True) for k, v in prefetcher.next(indices).items()}
                labels = batch.pop("labels")
                sync = i == len(micro) - 1 or not ranks.enabled
                with contextlib.nullcontext() if sync else run.forward.no_sync():
                    with autocast(run.device, cfg.precision):
                        logits = run.forward(**batch).logits
                    loss_sum = task.loss_sum(logits, labels)
                    run.scaler.scale(loss_sum * ranks.world / step_items).backward()
                if run.margins is not None:
                    run.margins.add(task, indices, logits.detach(), labels)
                run.log.accumulate(
                    loss_sum.detach(),
                    task.correct(logits.detach(), labels) if task.tracks_accuracy else None,
                    int(train_features.items[indices].sum()),
                    len(indices),
                    int(train_features.lengths[indices].sum()),
                    batch["input_ids"].numel(),
                )
            run.scaler.unscale_(run.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_norm or float("inf"))
            guard.step(run.optimizer, run.scaler, grad_norm)
            run.scaler.update()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.position += 1
            end_of_epoch = state.position >= len(epoch_plan)
            if end_of_epoch:
                state.epoch, state.position = state.epoch + 1, 0

            log_now = state.step % cfg.log_every == 0
            due = end_of_epoch if cfg.eval_every == "epoch" else state.step % cfg.eval_every == 0
            evaluate_now = due or state.step == run.total_steps
            checkpoint_now = bool(cfg.checkpoint_every) and state.step % cfg.checkpoint_every == 0
            received = agreed(signals.received, ranks)
            if log_now or evaluate_now or checkpoint_now or received or guard.full:
                guard.settle(run)  # the one place a training step waits for the device
            step_seconds = time.perf_counter() - step_started
            state.train_seconds += step_seconds
            progress.advance(state.step, len(step_batch), step_seconds)
            if log_now:
                run.log.train_event(
                    state.step,
                    epoch_position(run),
                    run.scheduler.get_last_lr()[0],
                    guard.last_norm,
                    state.train_seconds,
                )
                if time.monotonic() >= next_trim:
                    release_free_memory()
                    next_trim = time.monotonic() + TRIM_EVERY
            if state.stop_reason == "diverged":
                break
            if evaluate_now:
                evaluate_and_select(run, judge)
            elif checkpoint_now:
                save_checkpoint(run)
            if received:
                save_checkpoint(run)
                raise Interrupted(received)
    if state.stop_reason == "diverged":
        last_good = checkpoint.complete(run.out / checkpoint.FOLDER)
        run.log.event(runfiles.Diverged(step=state.step, bad_steps=state.bad_steps))
        if ranks.main and reporter is not None:
            reporter(run.folder, False)
        raise Diverged(
            f"training stopped at step {state.step}: {state.bad_steps} consecutive steps had non-finite "
            f"loss or gradients; lower --lr or use --precision fp32/bf16 (last good checkpoint: "
            f"{last_good[-1] if last_good else 'none'})"
        )
    release_free_memory()
    return finish(run, reporter)


def run_setfit(run: Run, console, reporter: Reporter | None = None, judge: Judge | None = None) -> Outcome:
    """`method: setfit`: the encoder trained on pairs of examples (one pass, SetFit's schedule), then the head
    fitted on its embeddings, scored once. Minutes at most, so no checkpoint: an interrupted run starts again."""
    cfg, state, task, features = run.cfg, run.state, run.task, run.features["train"]
    log_start(run)
    run.model.train()
    if console is not None:
        console.print(plan_line(run), markup=False)
    pad_id = run.tokenizer.pad_token_id
    progress = run.log.progress(console, run.total_steps, state.step)
    with progress, SignalGuard() as signals:
        for start in range(0, len(run.pairs), fewshot.PAIRS_PER_STEP):
            step_started = time.perf_counter()
            batch = run.pairs[start : start + fewshot.PAIRS_PER_STEP]
            with autocast(run.device, cfg.precision):
                loss_sum, tokens, computed = fewshot.pair_loss(run.model, task, features, batch, pad_id)
            (loss_sum / len(batch)).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_norm or float("inf"))
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.log.accumulate(loss_sum.detach(), None, len(batch), len(batch), tokens, computed)
            state.step += 1
            state.train_seconds += time.perf_counter() - step_started
            progress.advance(state.step, len(batch), time.perf_counter() - step_started)
            if state.step % cfg.log_every == 0 or state.step == run.total_steps:
                run.log.train_event(
                    state.step,
                    epoch_position(run),
                    run.scheduler.get_last_lr()[0],
                    float(grad_norm),
                    state.train_seconds,
                )
            if signals.received:
                raise Interrupted(signals.received)
    state.epoch = 1
    fitting = time.perf_counter()
    fewshot.fit_head(run.model, task, features, run.device, cfg.precision, pad_id)
    run.timings["head_seconds"] = time.perf_counter() - fitting
    result = score(run, "validation")
    state.best_metric, state.best_step = result.metric(cfg.metric_for_best), state.step
    # No head trained during the steps, so there is no training accuracy to report.
    run.log.eval_event(state.step, epoch_position(run), result, state.best_step, False)
    if judge is not None:  # told the one evaluation, as a sweep's pruner is told each of a fine-tuning run's
        state.stop_reason = judge(result, 1.0)
    return finish(run, reporter)


def plan_line(run: Run) -> str:
    """What the run will do, said before it starts: how long it trains, and what it scores and when, so that no
    phase comes as a surprise (a test split of 25,000 long reviews takes minutes on a CPU)."""
    cfg, features = run.cfg, run.features
    every = "at each epoch's end" if cfg.eval_every == "epoch" else f"every {cfg.eval_every} steps"
    if run.pairs is not None:
        every = "once the head is fitted"
        what = (
            f"{run.total_steps:,} steps on {len(run.pairs):,} pairs of {len(run.frames['train']):,} examples (setfit)"
        )
    else:
        what = f"{run.total_steps:,} steps on {len(run.frames['train']):,} examples"
    line = f"training {what}; evaluating {len(run.frames['validation']):,} validation examples {every}"
    if "test" in features:
        line += (
            f"; at the end, scoring {len(run.frames['test']):,} test examples ({len(features['test']):,} features) "
            f"of split '{cfg.test_split}' (cap it with max_test_samples, or skip it with test_split: none)"
        )
    return line


class NonFiniteGuard:
    """Skips every update whose gradient norm is not finite, without the host waiting for the device:
    fused AdamW (or, in fp16, the GradScaler) reads the skip flag on the device. The norms stay on the
    device until `settle`, which reads them in one copy when the log, an evaluation or a checkpoint
    needs the host anyway, and stops the run after `limit` consecutive skipped steps."""

    def __init__(self, device: torch.device, capacity: int, limit: int, step: int):
        self.norms = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.first_step, self.count, self.limit = step + 1, 0, limit
        self.last_norm = float("nan")

    @property
    def full(self) -> bool:
        return self.count == len(self.norms)

    def step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, grad_norm: torch.Tensor) -> None:
        if scaler.is_enabled():
            scaler.step(optimizer)
        else:
            optimizer.found_inf = (~torch.isfinite(grad_norm)).float()
            optimizer.grad_scale = None
            optimizer.step()
        self.norms[self.count] = grad_norm
        self.count += 1

    def settle(self, run: Run) -> None:
        state, norms = run.state, self.norms[: self.count].tolist()
        for offset, norm in enumerate(norms):
            if math.isfinite(norm):
                state.bad_steps = 0
                continue
            state.bad_steps += 1
            step = self.first_step + offset
            run.log.event(BadStep(step=step, grad_norm=str(norm)))
            if state.bad_steps >= self.limit and state.stop_reason is None:
                state.stop_reason = "diverged"
        self.last_norm = norms[-1] if norms else self.last_norm
        self.first_step, self.count = self.first_step + self.count, 0


def padding_rule(cfg: Config, device: torch.device) -> Callable[[int], int]:
    """How long a batch is: max_length (padding none); a grid length when compiled, so graphs are reused;
    else its longest example, rounded to 8 on GPUs for tensor cores. Packed: the stream as it is, or when
    compiled one of eight lengths up to the longest stream a step can hold, in multiples of 128 tokens
    (FlexAttention's block), so that a handful of graphs serve every step."""
    if cfg.padding == "packed":
        if not cfg.compile:
            return int
        grid = batching.round_up(max(1, cfg.batch_size * cfg.max_length // 8), 128)
        return partial(batching.round_up, multiple=grid)
    if cfg.padding == "none":
        return lambda longest: cfg.max_length
    if cfg.compile:
        return batching.compile_length
    return partial(batching.round_up, multiple=8 if device.type == "cuda" else 1)


class SignalGuard:
    """The first SIGINT/SIGTERM asks for a checkpoint at the next step boundary; a second one exits at once."""

    def __enter__(self):
        self.received = 0
        self.previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for sig in self.previous:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received:
            os._exit(128 + signum)  # checkpoints are renamed into place whole, so nothing is left torn
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def epoch_position(run: Run) -> float:
    return round(run.state.step / run.steps_per_epoch, 4)


def evaluate_and_select(run: Run, judge: Judge | None = None) -> None:
    cfg, state = run.cfg, run.state
    result = score(run, "validation")
    metric = result.metric(cfg.metric_for_best)
    improved = state.best_metric is None or (
        metric < state.best_metric if cfg.metric_for_best in LOWER_IS_BETTER else metric > state.best_metric
    )
    if improved:
        state.best_metric, state.best_step, state.evals_without_gain = metric, state.step, 0
    else:
        state.evals_without_gain += 1
        if cfg.early_stopping and state.evals_without_gain >= cfg.early_stopping:
            state.stop_reason = "early_stopping"
    run.log.eval_event(state.step, epoch_position(run), result, state.best_step, run.task.tracks_accuracy)
    if judge is not None and state.stop_reason is None:
        # The judge is the writing rank's (a sweep's trial lives there); every rank stops where it says.
        verdict = [judge(result, state.step / run.total_steps) if run.dist.main else None]
        if run.dist.enabled:
            dist.broadcast_object_list(verdict, src=0)
        state.stop_reason = verdict[0]
    save_checkpoint(run)


def score(run: Run, split: str) -> Scores:
    """The model on one of the run's splits, with a bar for the phase (the one evaluation path)."""
    features = run.features[split]
    with run.log.phase(f"evaluating {split}", len(features), "features") as advance:
        return evaluate(run.scorer, features, run.frames[split], progress=advance)


def save_checkpoint(run: Run) -> None:
    state = run.state
    rng = [checkpoint.rng_state()]
    if run.dist.enabled:  # each rank's dropout stream, so a resumed rank continues its own
        rng = [None] * run.dist.world
        dist.all_gather_object(rng, checkpoint.rng_state())
    margins = run.margins.state_dict() if run.margins is not None else None  # a collective: every rank calls it
    if run.dist.main:
        training_state = {
            "format": checkpoint.FORMAT,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "rng": rng,
            "state": asdict(state),
            "log": run.log.state_dict(),
            "data": run.data,
            **({"margins": margins} if margins is not None else {}),
        }
        checkpoint.save(
            run.folder,
            state.step,
            run.model,
            training_state,
            run.cfg,
            run.cfg.keep_checkpoints,
            state.best_step,
        )
    if run.dist.enabled:
        dist.barrier()


def save_model_folder(run: Run) -> None:
    """Weights, config and tokenizer, each file moved into place whole: a full disk leaves the old files or none,
    and the checkpoints to resume from."""
    tmp = run.out / f"{TEMP_PREFIX}model"
    then = f"free space and run `bertfit resume {run.out}` (the checkpoints are intact)"
    with writing("the model", run.out, then, cleanup=tmp):
        if tmp.exists():
            shutil.rmtree(tmp)
        if run.pairs is not None:
            fewshot.save(run.model, run.tokenizer, tmp, run.task.label_names, run.cfg.max_length)
        else:
            models.save(run.model, tmp, run.cfg.lora_save == "adapter", run.task.learned_config())
            run.tokenizer.save_pretrained(tmp)
    run.folder.move_in(tmp, "the model", then)


@dataclass
class Outcome:
    """What a finished training returns: its metrics.json, and the doctor's findings (on the rank that writes)."""

    metrics: RunMetrics
    findings: list[Finding] = field(default_factory=list)


def finish(run: Run, reporter: Reporter | None = None) -> Outcome:
    """Keep the best weights, score them on every split, and write the model folder and reports."""
    cfg, state = run.cfg, run.state
    if not run.log.evals:
        evaluate_and_select(run)
    kept_step = state.step
    if cfg.keep_best and state.best_step is not None and state.best_step != state.step:
        best = run.out / checkpoint.FOLDER / f"{checkpoint.PREFIX}{state.best_step:08d}"
        checkpoint.load_weights(best, run.model)
        kept_step = state.best_step
    validation = next(e for e in run.log.evals if e.step == kept_step).metrics
    run.task.calibrate(validation)  # e.g. the thresholds the kept weights were scored at
    run.model.config.update(run.task.learned_config())
    test = None
    if "test" in run.features:
        with run.log.progress(run.log.console):
            test = score(run, "test")
    train = TrainSummary(**run.log.throughput(state.train_seconds), steps=state.step, **run.timings)
    peak = peak_flops(run.device)
    if peak:  # 6 FLOPs per parameter per real token (forward + backward), attention aside
        parameters = sum(p.numel() for p in run.model.parameters())
        train.mfu, train.peak_flops = 6 * parameters * train.tokens_per_second / peak, peak
    summary = RunMetrics(
        kept_step=kept_step,
        best_step=state.best_step,
        best_metric=state.best_metric,
        metric_for_best=cfg.metric_for_best,
        stop_reason=state.stop_reason,
        final=run.log.evals[-1].metrics,
        validation=validation,
        train=train,
    )
    if test is not None:
        summary.test = test
    probe = next((e for e in run.log.events if isinstance(e, Probe)), None)
    if probe is not None:
        summary.probe = ProbeResult.model_validate(
            {k: v for k, v in probe.dump().items() if k not in ("event", "time")}
        )
    mislabeled = []
    if run.margins is not None:  # a collective: every rank calls it
        summary.mislabeled, mislabeled = run.margins.ranked(run.task, run.frames["train"], run.features["train"])
    outcome = Outcome(summary)
    if run.dist.main:
        save_model_folder(run)
        if run.margins is not None:
            run.folder.write("mislabeled.jsonl", "".join(to_json(example.dump()) + "\n" for example in mislabeled))
        write_records(run, summary)
        if reporter is not None:
            outcome.findings = reporter(run.folder, True)
        for tracker in run.log.sinks:  # after the reports, which they keep as artifacts
            tracker.finish(run.folder)
    if run.dist.enabled:
        dist.barrier()
    return outcome


def write_records(run: Run, summary: RunMetrics) -> None:
    run.folder.write("metrics.json", to_json(summary.dump(), indent=2))
    evals = run.log.evals
    table = markdown_table(table_columns(evals), table_rows(evals))
    probe = f"\n\n{probe_line(summary.probe)}." if summary.probe is not None else ""
    run.folder.write("results.md", table + probe + "\n")
    run.log.event(
        End(
            kept_step=summary.kept_step,
            best_step=summary.best_step,
            stop_reason=summary.stop_reason,
            **summary.train.dump(),
        )
    )
