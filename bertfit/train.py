"""The training run: setup, the loop, evaluation, and what is written at the end."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from bertfit import batching, checkpoint, data, diagnose, inspection, models
from bertfit.config import Config
from bertfit.errors import BertfitError
from bertfit.files import TEMP_PREFIX, writing
from bertfit.report import RunLog, empty_window, write_outputs
from bertfit.runfolder import RunFolder, check_contents, check_location
from bertfit.tasks import LOWER_IS_BETTER, Features, Task, build_task


class Interrupted(Exception):
    """Raised at a step boundary after SIGINT/SIGTERM, once the checkpoint is safely written."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}; resume with --resume")
        self.exit_code = 128 + signum


class Diverged(BertfitError):
    pass


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    host_group: object = None  # a gloo group for host-side agreement; None: the default group is gloo already

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


@dataclass
class State:
    """Everything the loop mutates; saved whole in each checkpoint."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # step batches of `epoch` already consumed
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    evals_without_gain: int = 0
    bad_steps: int = 0
    stop_reason: Optional[str] = None
    log_lines: int = 0
    train_seconds: float = 0.0
    samples_seen: int = 0
    tokens_seen: int = 0
    padded_tokens_seen: int = 0
    # Training-loss sums since the last log line and since the last evaluation (flushed from the device there),
    # and the device sums not yet flushed (saved exactly so a resumed run adds up the same numbers).
    window: dict = field(default_factory=empty_window)
    since_eval: dict = field(default_factory=empty_window)
    pending: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0})


@dataclass
class Run:
    cfg: Config
    out: Path
    folder: Optional[RunFolder]  # held by the rank that writes; None on the others
    dist: Dist
    device: torch.device
    task: Task
    splits: data.Splits
    spec: data.DataSpec
    frames: dict
    features: dict[str, Features]
    tokenizer: object
    model: torch.nn.Module
    forward: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    total_steps: int
    log: RunLog
    state: State
    timings: dict


# ---------------------------------------------------------------- setup

def init_distributed() -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        # Signals are agreed on every step; over NCCL that would make each step wait for the GPU.
        host_group = dist.new_group(backend="gloo") if world > 1 else None
        return Dist(rank, world, local_rank, host_group), torch.device("cuda", local_rank)
    return Dist(rank, world, local_rank), torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: oneDNN multiplies bf16 natively there (1.4-2.4x fp32 here); elsewhere it is emulated."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, device: torch.device) -> str:
    if device.type != "cuda":
        if precision == "fp16":
            raise BertfitError("precision fp16 needs a CUDA GPU (no GPU found); use --precision fp32 or bf16")
        if precision == "auto":
            return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
        return precision
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def inference_precision(trained: str, device: torch.device) -> str:
    """Evaluate and predict as the run trained, except fp16, which needs a GPU."""
    return "fp32" if trained == "fp16" and device.type != "cuda" else trained


def autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def prepare_data(cfg: Config, tokenizer) -> tuple[Config, data.Splits, data.DataSpec, Task, dict, dict, dict]:
    """Load, detect, subsample and tokenize (cached); returns the config with every auto field resolved."""
    started = time.perf_counter()
    splits = data.load_splits(cfg.data)
    data.require_split(splits, cfg.train_split)
    # Rows are checked before a validation split is carved off, so errors name rows of the user's file.
    spec = data.detect(splits, cfg.train_split, cfg.task, cfg.text_columns, cfg.label_column, cfg.label_names)
    train_split, eval_split, test_split = data.choose_splits(splits, cfg.train_split, cfg.eval_split, cfg.test_split,
                                                            cfg.seed, cfg.validation_fraction)
    model_max = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
    max_length = cfg.max_length or model_max
    if max_length > model_max:
        raise BertfitError(f"max_length {max_length} is longer than the model accepts ({model_max}); lower it")
    metrics = tuple(cfg.metrics) + (("matthews",) if "cola" in splits.name and "matthews" not in cfg.metrics else ())
    cfg = cfg.resolved(task=spec.task, text_columns=spec.text_columns, label_column=spec.label_column,
                       label_names=spec.label_names, train_split=train_split, eval_split=eval_split,
                       test_split=test_split or cfg.test_split, max_length=max_length, metrics=list(metrics))
    task = build_task(spec.task, spec.text_columns, spec.label_column, spec.label_names, max_length,
                      cfg.truncation, metrics, cfg.stride, cfg.label_all_subtokens)
    known = ("loss", *task.metric_names())
    if cfg.metric_for_best is not None and cfg.metric_for_best not in known:
        raise BertfitError(f"metric_for_best '{cfg.metric_for_best}' is not reported for this {spec.task} task; "
                           f"choose one of {', '.join(known)}")
    cfg = cfg.resolved(metric_for_best=cfg.metric_for_best or task.primary_metric)
    frames = {"train": data.subsample(splits.frames[train_split], cfg.max_train_samples, cfg.seed),
              "validation": data.subsample(splits.frames[eval_split], cfg.max_eval_samples, cfg.seed)}
    if test_split:
        frames["test"] = splits.frames[test_split]
    loaded = time.perf_counter()
    features = {name: task.encode_cached(frame, tokenizer) for name, frame in frames.items()}
    timings = {"load_seconds": loaded - started, "tokenize_seconds": time.perf_counter() - loaded}
    return cfg, splits, spec, task, frames, features, timings


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights get no decay (as the HF Trainer does)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # Fused: one kernel for all parameters (on CPU too, about 10x faster than foreach here), and it can skip
    # a non-finite step on the device (see NonFiniteGuard).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                             fused=True)


def make_scheduler(cfg: Config, optimizer, total_steps: int):
    from transformers import get_scheduler

    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)
    name = {"constant": "constant_with_warmup"}.get(cfg.scheduler, cfg.scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def protected_inputs(cfg: Config) -> dict[str, Optional[Path]]:
    """The user's own files a run must never write over: the data and the model, where they are local."""
    model = models.resolve_model(cfg.model)
    return {"the data": data.local_path(cfg.data), "the model": Path(model) if Path(model).exists() else None}


def require_data_and_output(cfg: Config) -> Path:
    if not cfg.data:
        raise BertfitError("no data given; pass --data (a hub id, mirror name, folder or file)")
    if not cfg.output:
        raise BertfitError("no output folder given; pass --output DIR")
    return Path(cfg.output)


def preflight(cfg: Config, resume: bool, overwrite: bool) -> None:
    """The user-input checks of setup() that need no process group: run before launching workers, so that
    a mistake is one line from the launcher rather than one per worker and a torchrun traceback."""
    out = require_data_and_output(cfg)
    check_location(out, protected_inputs(cfg))
    if out.is_dir():
        check_contents(out, resume, overwrite)
    resolve_precision(cfg.precision, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    splits = data.load_splits(cfg.data)
    data.require_split(splits, cfg.train_split)
    data.detect(splits, cfg.train_split, cfg.task, cfg.text_columns, cfg.label_column, cfg.label_names)


def setup(cfg: Config, folder: Optional[RunFolder], resume: bool = False, overwrite: bool = False) -> Run:
    """Everything that can fail on user input fails here, before anything is written."""
    out = require_data_and_output(cfg)
    ranks, device = init_distributed()
    precision = resolve_precision(cfg.precision, device)
    compile_model = device.type == "cuda" if cfg.compile is None else cfg.compile
    model_path = models.resolve_model(cfg.model)
    tokenizer = models.load_tokenizer(model_path, cfg.trust_remote_code)
    cfg, splits, spec, task, frames, features, timings = prepare_data(
        cfg.resolved(precision=precision, compile=compile_model, world_size=ranks.world), tokenizer)
    per_epoch = len(plan_epoch(cfg, features["train"], 0))
    total = cfg.max_steps or math.ceil(cfg.epochs * per_epoch)
    cfg = cfg.resolved(log_every=cfg.log_every or max(1, min(50, total // 25)))
    if isinstance(cfg.eval_every, int) and cfg.eval_every > total:
        raise BertfitError(f"eval_every {cfg.eval_every} is larger than the whole run ({total} steps); "
                           f"use a value up to {total} or 'epoch'")
    torch.manual_seed(cfg.seed)
    model = models.load_model(model_path, spec.task, spec.label_names, cfg.trust_remote_code).to(device)
    forward = torch.compile(model) if compile_model else model
    if ranks.enabled:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, total)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = State()
    if resume:
        state = restore(out, cfg, model, optimizer, scheduler, scaler, ranks.rank)
    if folder is not None:
        folder.begin(resume, overwrite)
        folder.write_text("recipe.yaml", cfg.to_yaml())  # on resume too: a moved run names its new place
        folder.own(["log.jsonl", "checkpoints"])
    log = RunLog(out / "log.jsonl", enabled=ranks.main, device=device, state=state, resumed=resume)
    return Run(cfg, out, folder, ranks, device, task, splits, spec, frames, features, tokenizer, model, forward, optimizer,
               scheduler, scaler, per_epoch, total, log, state, timings)


def restore(out: Path, cfg: Config, model, optimizer, scheduler, scaler, rank: int) -> State:
    """From the newest intact checkpoint: a damaged one (torn by a crash outside bertfit's atomic writes, or by
    a disk error) is set aside with a warning and the one before it is used."""
    found = checkpoint.complete(out / "checkpoints")
    if not found:
        raise BertfitError(f"nothing to resume in '{out}': no complete checkpoint in {out / 'checkpoints'}; "
                           "start without --resume")
    damaged = []
    for candidate in reversed(found):
        try:
            differences = checkpoint.recipe_differences(checkpoint.saved_recipe(candidate), cfg)
            if differences:
                raise BertfitError(f"cannot resume from {candidate}: the recipe changed "
                                   f"({'; '.join(differences)}); use the original settings or start a new run")
            saved = checkpoint.load_state(candidate)
            checkpoint.load_weights(candidate, model)
        except checkpoint.Damaged as why:
            damaged.append((candidate, why))
            continue
        for bad, why in damaged:
            if rank == 0:
                print(f"warning: {why}; set aside as {checkpoint.set_aside(bad).name}, resuming from "
                      f"{candidate.name}", file=sys.stderr)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        checkpoint.set_rng_state(saved["rng"][rank])
        return State(**saved["state"])
    raise BertfitError(f"every checkpoint in '{out / 'checkpoints'}' is damaged ({damaged[0][1]}); start the run "
                       "again without --resume")


# ---------------------------------------------------------------- the loop

def train(cfg: Config, resume: bool = False, overwrite: bool = False, console=None) -> dict:
    """Only the rank that writes holds the run folder (its lock, the check of its contents, the clearing)."""
    out = require_data_and_output(cfg)
    writer = int(os.environ.get("RANK", "0")) == 0
    folder = RunFolder.claim(out, resume, overwrite, protected_inputs(cfg)) if writer else None
    with folder or contextlib.nullcontext():
        return run_loop(setup(cfg, folder, resume=resume, overwrite=overwrite), resume, console)


def run_loop(run: Run, resume: bool, console) -> dict:
    cfg, state, ranks, task = run.cfg, run.state, run.dist, run.task
    if not resume and ranks.main:
        data_profile = inspection.profile(run.frames, run.spec, {k: f.full_lengths for k, f in run.features.items()},
                                          cfg.max_length)
        run.folder.write_text("data_profile.json", json.dumps(data_profile, indent=2))
        run.log.start(run, inspection.summary_lines(data_profile))
    pad_id, pad_to = run.tokenizer.pad_token_id, padding_rule(cfg, run.device)
    train_features = run.features["train"]
    progress = run.log.progress(console, run.total_steps, state.step)
    planned_epoch, epoch_plan = None, []
    guard = NonFiniteGuard(run.device, min(cfg.log_every, 1024), cfg.max_bad_steps, state.step)
    with progress, SignalGuard() as signals:
        while state.step < run.total_steps and state.stop_reason is None:
            step_started = time.perf_counter()
            if planned_epoch != state.epoch:
                planned_epoch, epoch_plan = state.epoch, plan_epoch(cfg, train_features, state.epoch)
            step_batch = epoch_plan[state.position]
            # Normalise by the items of the whole step batch (all ranks, all micro-batches): the gradient is
            # then that of one big batch, whatever the accumulation or world size.
            step_items = int(train_features.items[step_batch].sum())
            micro = batching.micro_batches(step_batch, cfg.grad_accum, ranks.rank, ranks.world)
            for i, indices in enumerate(micro):
                batch = {k: v.to(run.device, non_blocking=True) for k, v in task.collate(
                    train_features, indices, pad_id, pad_to).items()}
                labels = batch.pop("labels")
                sync = i == len(micro) - 1 or not ranks.enabled
                with contextlib.nullcontext() if sync else run.forward.no_sync():
                    with autocast(run.device, cfg.precision):
                        logits = run.forward(**batch).logits
                    loss_sum = task.loss_sum(logits, labels)
                    run.scaler.scale(loss_sum * ranks.world / step_items).backward()
                run.log.accumulate(task, loss_sum.detach(), logits.detach(), labels,
                                   int(train_features.items[indices].sum()), len(indices),
                                   int(train_features.lengths[indices].sum()), batch["input_ids"].numel())
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
            progress.advance(state, len(step_batch), step_seconds)
            if log_now:
                run.log.train_event(run, guard.last_norm)
            if state.stop_reason == "diverged":
                break
            if evaluate_now:
                evaluate_and_select(run)
            elif checkpoint_now:
                save_checkpoint(run)
            if received:
                save_checkpoint(run)
                raise Interrupted(received)
    if state.stop_reason == "diverged":
        last_good = checkpoint.complete(run.out / "checkpoints")
        run.log.event("diverged", step=state.step, bad_steps=state.bad_steps)
        if ranks.main:
            findings = diagnose.as_dicts(diagnose.diagnose(run.log.events, None, {}, cfg.model_dump()))
            run.folder.write_text("diagnosis.json", json.dumps(findings, indent=2))
        raise Diverged(f"training stopped at step {state.step}: {state.bad_steps} consecutive steps had non-finite "
                       f"loss or gradients; lower --lr or use --precision fp32/bf16 (last good checkpoint: "
                       f"{last_good[-1] if last_good else 'none'})")
    return finish(run)


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
        state, norms = run.state, self.norms[:self.count].tolist()
        for offset, norm in enumerate(norms):
            if math.isfinite(norm):
                state.bad_steps = 0
                continue
            state.bad_steps += 1
            step = self.first_step + offset
            run.log.event("bad_step", step=step, grad_norm=str(norm))
            if state.bad_steps >= self.limit and state.stop_reason is None:
                state.stop_reason = "diverged"
        self.last_norm = norms[-1] if norms else self.last_norm
        self.first_step, self.count = self.first_step + self.count, 0


def plan_epoch(cfg: Config, features: Features, epoch: int) -> list[np.ndarray]:
    """The step batches of one epoch; each needs an example for every rank in every micro-batch."""
    return batching.epoch_batches(features.lengths, cfg.effective_batch_size(), cfg.seed, epoch, cfg.padding,
                                  min_size=cfg.grad_accum * cfg.world_size)


def padding_rule(cfg: Config, device: torch.device) -> Callable[[int], int]:
    """How long a batch is: max_length (padding none); a grid length when compiled, so graphs are reused;
    else its longest example, rounded to 8 on GPUs for tensor cores."""
    if cfg.padding == "none":
        return lambda longest: cfg.max_length
    if cfg.compile:
        return batching.compile_length
    return partial(batching.round_up, multiple=8 if device.type == "cuda" else 1)


def agreed(signum: int, ranks: Dist) -> int:
    """Every rank stops at the same step: a signal seen by any rank counts for all."""
    if not ranks.enabled:
        return signum
    received = torch.tensor([signum])
    dist.all_reduce(received, op=dist.ReduceOp.MAX, group=ranks.host_group)
    return int(received.item())


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


def evaluate_and_select(run: Run) -> None:
    cfg, state = run.cfg, run.state
    result = evaluate(run.model, run.task, run.features["validation"], run.frames["validation"],
                      eval_batch_size(cfg), run.device, cfg.precision, run.dist, run.tokenizer.pad_token_id)
    metric = result[cfg.metric_for_best]
    improved = state.best_metric is None or (metric < state.best_metric if cfg.metric_for_best in LOWER_IS_BETTER
                                             else metric > state.best_metric)
    if improved:
        state.best_metric, state.best_step, state.evals_without_gain = metric, state.step, 0
    else:
        state.evals_without_gain += 1
        if cfg.early_stopping and state.evals_without_gain >= cfg.early_stopping:
            state.stop_reason = "early_stopping"
    run.log.eval_event(run, result)
    save_checkpoint(run)


def eval_batch_size(cfg: Config) -> int:
    return cfg.eval_batch_size or max(64, 2 * cfg.batch_size)


def save_checkpoint(run: Run) -> None:
    state = run.state
    run.log.save_pending(state)
    rng = [checkpoint.rng_state()]
    if run.dist.enabled:  # each rank's dropout stream, so a resumed rank continues its own
        rng = [None] * run.dist.world
        dist.all_gather_object(rng, checkpoint.rng_state())
    if run.dist.main:
        state.log_lines = run.log.lines
        training_state = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                          "scaler": run.scaler.state_dict(), "rng": rng, "state": asdict(state)}
        checkpoint.save(run.out / "checkpoints", state.step, run.model, training_state, run.cfg,
                        run.cfg.keep_checkpoints, state.best_step)
    if run.dist.enabled:
        dist.barrier()


@torch.no_grad()
def evaluate(model, task: Task, features: Features, frame, batch_size: int, device: torch.device, precision: str,
             ranks: Dist, pad_id: int) -> dict:
    """Length-sorted batches; predictions reduced to small host arrays per batch; exact under sharding."""
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    loss = torch.zeros((), dtype=torch.float64, device=device)
    on_device = []  # read back after the last batch, so the host never waits for the device in between
    for indices in batching.eval_batches(features.lengths, batch_size, ranks.rank, ranks.world):
        batch = {k: v.to(device, non_blocking=True) for k, v in task.collate(
            features, indices, pad_id, partial(batching.round_up, multiple=8 if device.type == "cuda" else 1)).items()}
        labels = batch.pop("labels")
        with autocast(device, precision):
            logits = model(**batch).logits
        loss += task.loss_sum(logits, labels).double()
        on_device.append((indices, task.predictions(logits)))
    shard: dict[int, np.ndarray] = {}
    for indices, predicted in on_device:
        predicted = predicted.cpu().numpy()
        for row, index in enumerate(indices):
            shard[int(index)] = predicted[row][: features.lengths[index]] if predicted.ndim > 1 else predicted[row]
    total_loss = float(loss)
    if ranks.enabled:
        gathered: list = [None] * ranks.world
        dist.all_gather_object(gathered, (total_loss, shard))
        total_loss = sum(part[0] for part in gathered)
        shard = {k: v for part in gathered for k, v in part[1].items()}
    predictions = [shard[i] for i in range(len(features))]
    if not isinstance(predictions[0], np.ndarray) or predictions[0].ndim == 0:
        predictions = np.asarray(predictions)
    result = {"loss": total_loss / max(1, int(features.items.sum()))}
    result.update(task.metrics(features, frame, predictions))
    seconds = time.perf_counter() - started
    result.update(runtime=seconds, samples_per_second=len(frame) / seconds if seconds else 0.0)
    model.train(was_training)
    return result


def save_model_folder(run: Run) -> None:
    """Weights, config and tokenizer, each file moved into place whole: a full disk leaves the old files or none,
    and the checkpoints to resume from."""
    tmp = run.out / f"{TEMP_PREFIX}model"
    with writing("the model", run.out, f"free space and run `bertfit resume {run.out}` (the checkpoints are intact)",
                 cleanup=tmp):
        if tmp.exists():
            shutil.rmtree(tmp)
        run.model.save_pretrained(tmp)
        run.tokenizer.save_pretrained(tmp)
        names = sorted(p.name for p in tmp.iterdir())
        run.folder.own(names)
        for name in names:
            os.replace(tmp / name, run.out / name)
        tmp.rmdir()


def finish(run: Run) -> dict:
    """Keep the best weights, score them on every split, and write the model folder and reports."""
    cfg, state = run.cfg, run.state
    if not run.log.evals:
        evaluate_and_select(run)
    kept_step = state.step
    if cfg.keep_best and state.best_step is not None and state.best_step != state.step:
        best = run.out / "checkpoints" / f"{checkpoint.PREFIX}{state.best_step:08d}"
        checkpoint.load_weights(best, run.model)
        kept_step = state.best_step
    results = {"validation": next(e for e in run.log.evals if e["step"] == kept_step)["metrics"]}
    if "test" in run.features:
        results["test"] = evaluate(run.model, run.task, run.features["test"], run.frames["test"],
                                   eval_batch_size(cfg), run.device, cfg.precision, run.dist,
                                   run.tokenizer.pad_token_id)
    train_stats = run.log.throughput(run)
    if run.device.type == "cuda":  # 6 FLOPs per parameter per real token (forward + backward), attention aside
        parameters = sum(p.numel() for p in run.model.parameters())
        train_stats["mfu"] = 6 * parameters * train_stats["tokens_per_second"] / diagnose.GPU_PEAK_FLOPS
    summary = {"kept_step": kept_step, "best_step": state.best_step, "best_metric": state.best_metric,
               "metric_for_best": cfg.metric_for_best, "stop_reason": state.stop_reason,
               "final": run.log.evals[-1]["metrics"], **results, "train": train_stats}
    if run.dist.main:
        save_model_folder(run)
        write_outputs(run, summary)
    if run.dist.enabled:
        dist.barrier()
    return summary
