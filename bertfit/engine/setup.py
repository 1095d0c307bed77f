"""Everything a run needs before its first step, built from the recipe; every mistake a user can make fails
here, before anything is written."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bertfit import models, runfiles, tasks
from bertfit.config import (
    MIN_FINE_TUNING_STEPS,
    SETFIT_AUTO_ROWS,
    SETFIT_PAIR_BUDGET,
    SHORT_RUN_EVALUATIONS,
    SHORT_RUN_WARMUP,
    Config,
)
from bertfit.data import schema, sources
from bertfit.engine import batching, checkpoint, fewshot, tracking
from bertfit.engine.device import (
    Dist,
    default_device,
    init_distributed,
    main_first,
    release_free_memory,
    resolve_precision,
)
from bertfit.engine.evaluation import Scorer, packs
from bertfit.engine.margins import MarginTracker
from bertfit.engine.probe import frozen_probe, remembered_probe
from bertfit.engine.runlog import RunLog
from bertfit.errors import BertfitError
from bertfit.runfiles import Probe
from bertfit.runfolder import RunFolder, check_contents, check_location
from bertfit.tasks import TASKS, Features, Task, task_for


@dataclass
class State:
    """Where the loop is; saved whole in each checkpoint (the run log saves its own sums)."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # step batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_gain: int = 0
    bad_steps: int = 0
    stop_reason: str | None = None
    train_seconds: float = 0.0


@dataclass
class Run:
    cfg: Config
    out: Path
    folder: RunFolder | None  # held by the rank that writes; None on the others
    dist: Dist
    device: torch.device
    task: Task
    splits: sources.Splits
    spec: schema.DataSpec
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
    resumed: bool
    data: str  # what the run trains and selects on (the train and validation features' cache keys)
    margins: MarginTracker | None = None
    probe: Probe | None = None  # the frozen-probe baseline, computed before training (not on resume: it is logged)
    pairs: np.ndarray | None = None  # method setfit: (left, right, target) example pairs, in training order

    @property
    def scorer(self) -> Scorer:
        """The model as evaluations run it: the recipe's eval batch and precision, sharded over the ranks."""
        return Scorer(
            self.model,
            self.task,
            self.cfg.eval_batch,
            self.device,
            self.cfg.precision,
            self.tokenizer.pad_token_id,
            self.dist,
            packs(self.cfg, self.device),
        )  # single-label classification, unless find_mislabeled is off


@dataclass
class Inputs:
    """What checking the user's inputs produced, so that setup does not read the data twice."""

    out: Path
    precision: str
    splits: sources.Splits
    spec: schema.DataSpec
    seconds: float


def output_folder(cfg: Config) -> Path:
    """Data and output are both given: checked before the run folder is claimed, so a missing one writes nothing."""
    if not cfg.data:
        raise BertfitError("no data given; pass --data (a hub id, mirror name, folder or file)")
    if not cfg.output:
        raise BertfitError("no output folder given; pass --output DIR")
    return Path(cfg.output)


def check_inputs(cfg: Config, device: torch.device) -> Inputs:
    """The checks of a run's inputs, shared by the launcher's preflight and by each worker's setup."""
    started = time.perf_counter()
    out = output_folder(cfg)
    precision = resolve_precision(cfg.precision, device)
    tracking.check(cfg)
    splits = sources.load_splits(cfg.data)
    sources.require_split(splits, cfg.train_split)
    # Rows are checked before a validation split is carved off, so errors name rows of the user's file.
    spec = tasks.detect(
        splits,
        cfg.train_split,
        cfg.task,
        cfg.text_columns,
        cfg.label_column,
        cfg.label_names,
        label_columns=cfg.label_columns,
        delimiter=cfg.label_delimiter,
    )
    return Inputs(out, precision, splits, spec, time.perf_counter() - started)


def protected_inputs(cfg: Config) -> dict[str, Path | None]:
    """The user's own files a run must never write over: the data and the model, where they are local."""
    model = models.resolve_model(cfg.model)
    return {
        "the data": sources.local_path(cfg.data),
        "the model": Path(model) if Path(model).exists() else None,
        "the corrections": Path(cfg.corrections) if cfg.corrections else None,
    }


def preflight(cfg: Config, resume: bool, overwrite: bool) -> None:
    """Run by `--nproc` before launching workers, so that a mistake is one line from the launcher rather than one
    per worker and a torchrun traceback."""
    inputs = check_inputs(cfg, default_device(cfg.device))
    check_location(inputs.out, protected_inputs(cfg))
    if inputs.out.is_dir():
        check_contents(inputs.out, resume, overwrite)


def split_frames(cfg: Config, inputs: Inputs) -> tuple[sources.Splits, tuple[str, str, str | None], dict]:
    """The splits named (validation carved off train, seeded, where there is none) and subsampled as the recipe
    says: the same rows for the same recipe, in a run, its resume and its review."""
    spec = inputs.spec
    splits, train_split, eval_split, test_split = sources.choose_splits(
        tasks.normalise(inputs.splits, spec),
        cfg.train_split,
        cfg.eval_split,
        cfg.test_split,
        cfg.seed,
        cfg.validation_fraction,
        stratify_by=spec.label_column if TASKS[tasks.kind_of(cfg.task, spec)].stratifies else None,
    )
    frames = {
        "train": sources.subsample(splits.frames[train_split], cfg.max_train_samples, cfg.seed),
        "validation": sources.subsample(splits.frames[eval_split], cfg.max_eval_samples, cfg.seed),
    }
    if test_split:
        frames["test"] = sources.subsample(splits.frames[test_split], cfg.max_test_samples, cfg.seed)
    return splits, (train_split, eval_split, test_split), frames


def run_frames(cfg: Config) -> dict[str, pd.DataFrame]:
    """A finished run's splits as it read them (its resolved recipe: subset, seed and corrections), row for row as
    its mislabeled.jsonl numbers the training examples."""
    frames = split_frames(cfg, check_inputs(cfg, torch.device("cpu")))[2]
    return correct_frames(frames, task_for(cfg), cfg.corrections)[0] if cfg.corrections else frames


def correct_frames(frames: dict, task: Task, source: str) -> tuple[dict, runfiles.Corrections]:
    """The training and validation splits with a review's decisions applied, and what was changed, with the
    reviewed run's validation scores for the doctor to compare against."""
    corrected = dict(frames)
    corrected["train"], relabelled, dropped, reviewed = correct(frames["train"], task, source, "train")
    corrected["validation"], validation_relabelled, validation_dropped, _ = correct(
        frames["validation"], task, source, "validation"
    )
    parent = reviewed_run(Path(source))
    return corrected, runfiles.Corrections(
        source=source,
        relabelled=relabelled,
        dropped=dropped,
        reviewed=reviewed,
        validation_relabelled=validation_relabelled,
        validation_dropped=validation_dropped,
        parent=str(parent) if parent is not None else None,
        parent_scores=runfiles.read_file(parent / "metrics.json", runfiles.RunMetrics).validation if parent else None,
    )


def reviewed_run(decisions: Path) -> Path | None:
    """The run a decisions file was written in (RUN/review/decisions.jsonl), if it is a finished one."""
    folder = decisions.resolve().parent
    return folder.parent if folder.name == "review" and (folder.parent / "metrics.json").is_file() else None


def prepare_data(
    cfg: Config, inputs: Inputs, tokenizer, ranks: Dist = Dist(), device: str = "cpu"
) -> tuple[Config, sources.Splits, Task, dict, dict, dict]:
    """Name the splits, subsample, resolve the recipe and tokenize (cached); returns the resolved recipe."""
    spec = inputs.spec
    splits, (train_split, eval_split, test_split), frames = split_frames(cfg, inputs)
    facts = Facts(
        precision=inputs.precision,
        device=device,
        world_size=ranks.world,
        spec=spec,
        dataset=splits.name,
        splits=(train_split, eval_split, test_split or cfg.test_split),
        model_max=models.max_tokens(tokenizer),
        train=frames["train"],
    )
    cfg, notes = resolve(cfg, facts)
    if notes:
        splits = replace(splits, notes=[*splits.notes, *notes])
    task = task_for(cfg)
    if cfg.corrections:
        frames, corrections = correct_frames(frames, task, cfg.corrections)
        splits = replace(splits, notes=[*splits.notes, corrections.note()], corrections=corrections)
    tokenizing = time.perf_counter()
    with main_first(ranks):  # one rank tokenizes; the others memory-map its cache entry
        features = {name: task.encode_cached(frame, tokenizer, ranks.main) for name, frame in frames.items()}
    timings = {"load_seconds": inputs.seconds, "tokenize_seconds": time.perf_counter() - tokenizing}
    release_free_memory()
    return cfg, splits, task, frames, features, timings


def correct(frame: pd.DataFrame, task: Task, source: str, split: str) -> tuple[pd.DataFrame, int, int, int]:
    """One split with a review's decisions in force applied (labels corrected, examples dropped), and how many
    were relabelled, dropped and reviewed. Each decision names its row and the hash of its text, so data other
    than the data reviewed is refused, not silently mislabeled."""
    path = Path(source)
    if not path.is_file():
        raise BertfitError(f"corrections '{source}' not found; give the review/decisions.jsonl of `bertfit review`")
    if not task.finds_mislabeled:
        raise BertfitError(f"corrections '{source}': a {task.kind} task has no label review to apply")
    decisions = runfiles.standing(runfiles.read_decisions(path), split)
    changes = {row: d for row, d in decisions.items() if d.action in ("relabel", "drop")}
    rows = sorted(changes)
    if rows and rows[-1] >= len(frame):
        raise BertfitError(
            f"corrections '{source}' name {split} row {rows[-1]}, and this {split} split has {len(frame):,} rows; "
            "train on the data (and subset and seed) of the run reviewed"
        )
    names = task.reviewed_labels(task.label_ids(frame))
    texts = task.profile_texts(frame.iloc[rows]).tolist()
    for row, text in zip(rows, texts, strict=True):
        if runfiles.text_hash(text) != changes[row].text_sha256 or names[row] != changes[row].label:
            raise BertfitError(
                f"corrections '{source}' do not match this data: {split} row {row} is not the example reviewed "
                "(its text or label differs); train on the data (and subset and seed) of the run reviewed"
            )
    relabelled = [row for row in rows if changes[row].action == "relabel"]
    values = frame[task.label_column].tolist()
    for row in relabelled:
        wanted = changes[row].new_label or ""
        try:
            refusal = task.relabel_refusal(names[row], wanted)
            if refusal is not None:
                raise ValueError(refusal)
            values[row] = task.relabelled(frame, names, row, wanted)
        except ValueError as err:
            raise BertfitError(
                f"corrections '{source}': {split} row {row} cannot be relabelled '{wanted}': {err}"
            ) from None
    corrected = frame.assign(**{task.label_column: values})
    dropped = [row for row in rows if changes[row].action == "drop"]
    corrected = corrected.drop(corrected.index[dropped]).reset_index(drop=True)
    return corrected, len(relabelled), len(dropped), len(decisions)


@dataclass(frozen=True)
class Facts:
    """What resolving a recipe reads of this machine, the model and the data, all measured before it."""

    precision: str  # the recipe's precision as this device runs it
    device: str  # its type: cpu, cuda, mps
    world_size: int
    spec: schema.DataSpec  # the task, columns and labels the data was read as
    dataset: str
    splits: tuple[str, str, str | None]  # train, validation and test, as chosen
    model_max: int  # the longest input the model takes, in tokens
    train: pd.DataFrame  # the training rows the run uses


def resolve(cfg: Config, facts: Facts) -> tuple[Config, list[str]]:
    """The recipe as the run uses it, with no auto left: each auto field filled in from the facts, and each
    setting that cannot mean what it says on this data replaced, with a note for the log and the card. The one
    place a recipe is resolved; the run's recipe.yaml is what it returns. Left as given: `device` (auto stays
    auto, so the recipe trains again on another machine) and the choices left to other libraries (lora_targets to
    peft, mlflow_tracking_uri to MLflow's environment)."""
    max_length = cfg.max_length or facts.model_max
    if max_length > facts.model_max:
        raise BertfitError(f"max_length {max_length} is longer than the model accepts ({facts.model_max}); lower it")
    cola = "cola" in facts.dataset and "matthews" not in cfg.metrics  # CoLA is scored by Matthews' correlation
    train_split, eval_split, test_split = facts.splits
    values = {
        **cfg.model_dump(),
        "task": tasks.kind_of(cfg.task, facts.spec),
        "text_columns": facts.spec.text_columns,
        "label_column": facts.spec.label_column,
        "label_names": facts.spec.label_names,
        "train_split": train_split,
        "eval_split": eval_split,
        "test_split": test_split,
        "max_length": max_length,
        "metrics": [*cfg.metrics, *(["matthews"] if cola else [])],
        "precision": facts.precision,
        "compile": facts.device == "cuda" if cfg.compile is None else cfg.compile,  # compiling pays on a GPU
        "world_size": facts.world_size,
    }
    task = task_for(Config.model_validate(values))
    known = ("loss", *task.metric_names())
    if cfg.metric_for_best is not None and cfg.metric_for_best not in known:
        raise BertfitError(
            f"metric_for_best '{cfg.metric_for_best}' is not reported for this {facts.spec.task} task; "
            f"choose one of {', '.join(known)}"
        )
    values["metric_for_best"] = cfg.metric_for_best or task.primary_metric
    values["method"], notes = choose_method(cfg, task, len(facts.train), facts.world_size)
    notes += fit_to_data(values, len(facts.train), task.reads_windows)
    values["eval_batch_size"] = cfg.eval_batch_size or max(64, 2 * values["batch_size"])
    if cfg.class_weights == "balanced":  # from the training labels, and saved as numbers
        values["class_weights"] = task_for(Config.model_validate(values)).balanced_class_weights(facts.train)
    # About 25 log lines a run (at most every 50 steps), counted from the training rows (a task that reads long
    # texts as windows has more features than rows: its lines come a little more often).
    per_epoch = math.ceil(len(facts.train) / (values["batch_size"] * values["grad_accum"] * facts.world_size))
    if values["method"] == "finetune":
        notes += enough_steps(values, cfg, per_epoch, len(facts.train))
    steps = values["max_steps"] or math.ceil(cfg.epochs * per_epoch)
    if values["method"] == "setfit":  # its steps are batches of pairs, at most the budget's
        steps = fewshot.steps(cfg.setfit_pairs or SETFIT_PAIR_BUDGET)
    values["log_every"] = cfg.log_every or max(1, min(50, steps // 25))
    return Config.model_validate(values), notes


# Settings only fine-tuning reads: a recipe that sets one asks for fine-tuning, whatever the data size.
FINE_TUNING_FIELDS = (
    "lr",
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "scheduler",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "class_weights",
    "early_stopping",
    "eval_every",
    "checkpoint_every",
    "lora",
)


def auto_method(train_rows: int, few_shot: bool) -> str:
    """What `method: auto` trains with: SetFit's recipe for a classifier of a few hundred examples, where it beats
    fine-tuning (benchmarks/small_data.py), else fine-tuning."""
    return "setfit" if few_shot and train_rows <= SETFIT_AUTO_ROWS else "finetune"


def choose_method(cfg: Config, task: Task, train_rows: int, world_size: int) -> tuple[str, list[str]]:
    """The method the run trains with, and the note that says why where the recipe left it to bertfit."""
    if cfg.method == "setfit":
        fewshot.check(task, train_rows)
        if cfg.lora or world_size > 1:
            what = "lora" if cfg.lora else f"{world_size} processes"
            raise BertfitError(
                f"method setfit trains the whole encoder on one process; remove {what} or use method finetune"
            )
        return "setfit", []
    if cfg.method == "finetune":
        return "finetune", []
    method = auto_method(train_rows, task.few_shot)
    tuned = [name for name in FINE_TUNING_FIELDS if name in cfg.model_fields_set]
    if method == "setfit" and (tuned or world_size > 1):
        why = f"the recipe sets {', '.join(tuned)}, which only fine-tuning uses" if tuned else "setfit runs one process"
        return "finetune", [f"method auto: finetune, not setfit (for {train_rows:,} examples), because {why}"]
    if method == "setfit":
        why = (
            f"method auto: setfit, SetFit's few-shot recipe (the encoder trained on pairs of examples, then a "
            f"logistic-regression head), because {train_rows:,} training examples are at most {SETFIT_AUTO_ROWS:,}, "
            "where it beats fine-tuning; method finetune to fine-tune instead"
        )
    else:
        reason = (
            f"{train_rows:,} training examples are more than {SETFIT_AUTO_ROWS:,}"
            if task.few_shot
            else f"SetFit trains classifiers, and this is a {task.kind} task"
        )
        why = f"method auto: finetune, because {reason}"
    return method, [why]


def enough_steps(values: dict, cfg: Config, per_epoch: int, train_rows: int) -> list[str]:
    """Fine-tuning on little data: at least MIN_FINE_TUNING_STEPS steps with warmup (Mosbach et al. 2021), unless
    the recipe chose its length; such a run is scored SHORT_RUN_EVALUATIONS times rather than at every brief
    epoch. Returns the note that says so."""
    chosen = cfg.model_fields_set
    steps = math.ceil(cfg.epochs * per_epoch)
    if "epochs" in chosen or "max_steps" in chosen or steps >= MIN_FINE_TUNING_STEPS:
        return []
    values["max_steps"] = MIN_FINE_TUNING_STEPS
    said = f"{MIN_FINE_TUNING_STEPS} steps ({MIN_FINE_TUNING_STEPS / per_epoch:.1f} epochs)"
    if not {"warmup_ratio", "warmup_steps"} & chosen:
        values["warmup_ratio"] = SHORT_RUN_WARMUP
        said += f" with {SHORT_RUN_WARMUP:.0%} warmup"
    if "eval_every" not in chosen and MIN_FINE_TUNING_STEPS / per_epoch > SHORT_RUN_EVALUATIONS:
        values["eval_every"] = math.ceil(MIN_FINE_TUNING_STEPS / SHORT_RUN_EVALUATIONS)
        said += f", scored every {values['eval_every']} steps"
    return [
        f"{train_rows:,} training examples give {steps} steps in {cfg.epochs:g} epochs, too few to fine-tune from a "
        f"fresh head: training {said} (Mosbach et al. 2021); set epochs or max_steps to choose"
    ]


def fit_to_data(values: dict, train_rows: int, reads_windows: bool) -> list[str]:
    """Settings (of the recipe's `values`) that cannot mean what they say on this data, replaced by what will be
    used, each with a note for the log and the card (the resolved recipe records the value used)."""
    notes = []
    body = values["max_length"] - 2  # a window's tokens, the special tokens aside
    if reads_windows and values["stride"] >= body:
        stride = body // 2
        notes.append(
            f"stride {values['stride']} is not less than the {body} tokens a window holds at max_length "
            f"{values['max_length']}, which would advance windows one token at a time: windows overlap by {stride} "
            "tokens instead"
        )
        values["stride"] = stride
    per_batch = values["grad_accum"] * values["world_size"]
    if values["batch_size"] * per_batch > train_rows:
        batch = max(1, math.ceil(train_rows / per_batch))
        notes.append(
            f"batch_size {values['batch_size']:,} is larger than the {train_rows:,} training examples: each step "
            f"takes all of them (batch_size {batch})"
        )
        values["batch_size"] = batch
    return notes


def make_optimizer(cfg: Config, model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights get no decay (as the HF Trainer does)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # Fused: one kernel for all parameters (on CPU too, about 10x faster than foreach here), and it can skip
    # a non-finite step on the device (see NonFiniteGuard).
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon, fused=True)


def make_scheduler(cfg: Config, optimizer, total_steps: int, warmup: int | None = None):
    from transformers import get_scheduler

    if warmup is None:
        warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)
    name = {"constant": "constant_with_warmup"}.get(cfg.scheduler, cfg.scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def plan_epoch(cfg: Config, features: Features, epoch: int) -> list[np.ndarray]:
    """The step batches of one epoch; each needs an example for every rank in every micro-batch."""
    return batching.epoch_batches(
        features.lengths,
        cfg.effective_batch_size(),
        cfg.seed,
        epoch,
        cfg.padding,
        min_size=cfg.grad_accum * cfg.world_size,
    )


def data_fingerprint(features: dict[str, Features]) -> str:
    return ";".join(f"{name}:{features[name].fingerprint}" for name in ("train", "validation"))


def setup(
    cfg: Config,
    folder: RunFolder | None,
    resume: bool = False,
    overwrite: bool = False,
    allow_data_change: bool = False,
) -> Run:
    ranks, device = init_distributed(cfg.device)
    inputs = check_inputs(cfg, device)
    if resume and not checkpoint.complete(inputs.out / checkpoint.FOLDER):
        if (inputs.out / "metrics.json").is_file():
            raise BertfitError(
                f"nothing to resume in '{inputs.out}': the run finished and has no checkpoint left; pass "
                "--overwrite to train it again"
            )
        # Stopped before its first checkpoint was whole (killed while writing it): nothing to resume, so the
        # run starts again in its own folder, replacing only what it wrote.
        if ranks.main:
            print(
                f"note: no complete checkpoint in '{inputs.out}' yet; starting the run from the beginning",
                file=sys.stderr,
            )
        resume, overwrite = False, True
    model_path = models.resolve_model(cfg.model)
    tokenizer = models.load_tokenizer(model_path, cfg.trust_remote_code)
    cfg, splits, task, frames, features, timings = prepare_data(cfg, inputs, tokenizer, ranks, device.type)
    pairs = None
    if cfg.method == "setfit":  # one pass over the pairs
        pairs = fewshot.pairs(task, features["train"], cfg.setfit_pairs or SETFIT_PAIR_BUDGET, cfg.seed)
        per_epoch = total = fewshot.steps(len(pairs))
    else:
        per_epoch = len(plan_epoch(cfg, features["train"], 0))
        total = cfg.max_steps or math.ceil(cfg.epochs * per_epoch)
    if isinstance(cfg.eval_every, int) and cfg.eval_every > total:
        raise BertfitError(
            f"eval_every {cfg.eval_every} is larger than the whole run ({total} steps); "
            f"use a value up to {total} or 'epoch'"
        )
    torch.manual_seed(cfg.seed)
    pooling = models.pooling(model_path)
    if pairs is None:
        model = models.load_model(model_path, task.auto_model, task.head_config(), cfg.trust_remote_code)
    else:  # the encoder alone, under the head SetFit fits after training it
        encoder = models.load_model(model_path, "AutoModel", task.head_config(), cfg.trust_remote_code)
        model = fewshot.MeanPooledClassifier(encoder, len(task.label_names), pooling.normalize)
    model = model.to(device)
    probe = None
    if cfg.probe and not resume and ranks.main:  # the pretrained encoder, before anything trains or wraps it
        probe = remembered_probe(
            (model_path, data_fingerprint(features), pooling, cfg.precision, str(device), cfg.seed),
            lambda: frozen_probe(
                model, task, features, device, cfg.precision, tokenizer.pad_token_id, pooling, cfg.seed
            ),
        )
    bias = task.head_bias(features["train"]) if pairs is None else None
    if bias is not None:  # a resumed run overwrites it with the checkpoint's weights
        models.set_output_bias(model, bias)
    if cfg.gradient_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise BertfitError(
                f"model '{cfg.model}' ({type(model).__name__}) does not support gradient checkpointing; "
                "remove gradient_checkpointing or use a smaller batch with --grad-accum"
            )
        # Non-reentrant: works with torch.compile and DDP, and replays dropout's random state exactly. transformers
        # renamed the switch (activation_checkpointing_enable); older releases (5.17 on the GPU image) have only
        # gradient_checkpointing_enable.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if cfg.lora:
        model = models.add_lora(
            model, task.peft_task_type, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets
        )
    if cfg.padding == "packed":
        forward = models.packed(model, task.labels_tokens, flex=device.type == "cuda")
    else:
        forward = model
    forward = torch.compile(forward) if cfg.compile else forward
    if ranks.enabled:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    if pairs is None:
        optimizer = make_optimizer(cfg, model, cfg.lr, cfg.weight_decay)
        scheduler = make_scheduler(cfg, optimizer, total)
    else:  # SetFit's optimiser and schedule: its body learning rate and weight decay, linear, 10% warmup
        optimizer = make_optimizer(cfg, model.encoder, cfg.setfit_lr, fewshot.WEIGHT_DECAY)
        scheduler = make_scheduler(cfg, optimizer, total, math.ceil(fewshot.WARMUP * total))
    scaler = torch.amp.GradScaler(device.type, enabled=inputs.precision == "fp16")
    log = RunLog(inputs.out / "log.jsonl", enabled=ranks.main, device=device)
    run = Run(
        cfg=cfg,
        out=inputs.out,
        folder=folder,
        dist=ranks,
        device=device,
        task=task,
        splits=splits,
        spec=inputs.spec,
        frames=frames,
        features=features,
        tokenizer=tokenizer,
        model=model,
        forward=forward,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        steps_per_epoch=per_epoch,
        total_steps=total,
        log=log,
        state=State(),
        timings=timings,
        resumed=resume,
        data=data_fingerprint(features),
        probe=probe,
        pairs=pairs,
    )
    if cfg.find_mislabeled and task.finds_mislabeled and pairs is None:  # margins are those of a head in training
        run.margins = MarginTracker(features["train"], len(task.label_names), task.margin_shape, device)
    log_state = restore(run, allow_data_change) if resume else None
    if folder is not None:
        folder.begin(resume, overwrite)
        folder.write("recipe.yaml", cfg.to_yaml())  # on resume too: a moved run names its new place
        folder.target("log.jsonl")  # the run log appends to it
        log.sinks = tracking.start(cfg, folder)
    if log_state is not None:
        log.load_state_dict(log_state)
    return run


def restore(run: Run, allow_data_change: bool = False) -> dict:
    """From the newest intact checkpoint: a damaged one (torn by a crash outside bertfit's atomic writes, or by
    a disk error) is set aside with a warning and the one before it is used. A checkpoint of other data (the file
    edited since) is refused unless `allow_data_change`. Returns the run log's saved state."""
    out = run.out
    found = checkpoint.complete(out / checkpoint.FOLDER)
    damaged = []
    for candidate in reversed(found):
        try:
            differences = checkpoint.recipe_differences(checkpoint.saved_recipe(candidate), run.cfg)
            if differences:
                raise BertfitError(
                    f"cannot resume from {candidate}: the recipe changed "
                    f"({'; '.join(differences)}); use the original settings or start a new run"
                )
            saved = checkpoint.load_state(candidate)
            if saved.get("data", run.data) != run.data and not allow_data_change:
                raise BertfitError(
                    f"cannot resume from {candidate}: the data changed since the run was interrupted (its "
                    f"training or validation rows in '{run.cfg.data}' differ); resume with the data it started on, "
                    "pass --allow-data-change to go on with the new data, or start a new run"
                )
            checkpoint.load_weights(candidate, run.model)
        except checkpoint.Damaged as why:
            damaged.append((candidate, why))
            continue
        for bad, why in damaged:
            if run.dist.main:
                print(
                    f"warning: {why}; set aside as {checkpoint.set_aside(run.folder, bad).name}, resuming from "
                    f"{candidate.name}",
                    file=sys.stderr,
                )
        run.optimizer.load_state_dict(saved["optimizer"])
        run.scheduler.load_state_dict(saved["scheduler"])
        run.scaler.load_state_dict(saved["scaler"])
        checkpoint.set_rng_state(saved["rng"][run.dist.rank])
        run.state = State(**saved["state"])
        if run.margins is not None and "margins" in saved and run.dist.main:  # the saved sums are all ranks' totals
            run.margins.load_state_dict(saved["margins"])
        return saved["log"]
    raise BertfitError(
        f"every checkpoint in '{out / checkpoint.FOLDER}' is damaged ({damaged[0][1]}); start the run "
        "again without --resume"
    )
