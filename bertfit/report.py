"""What a run tells its user: the live log and results table, and the files written at the end."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from bertfit.errors import BertfitError, first_line
from bertfit.files import atomic_write_text, to_json, writing

if TYPE_CHECKING:
    from bertfit.train import Run, State

# Fields that measure time rather than results: they differ between otherwise identical runs.
TIMING_FIELDS = {"time", "runtime", "samples_per_second", "tokens_per_second", "train_seconds", "eval_seconds"}
METRIC_TITLES = {"accuracy": "Accuracy", "f1": "F1", "precision": "Precision", "recall": "Recall",
                 "f1_macro": "Macro F1", "recall_macro": "Macro Recall", "precision_macro": "Macro Precision",
                 "matthews": "Matthews Correlation", "pearson": "Pearson", "spearman": "Spearman", "mse": "Mse"}


def empty_window() -> dict:
    """Training-loss sums over a stretch of steps (since the last log line, or the last evaluation)."""
    return {"loss": 0.0, "items": 0, "correct": 0, "examples": 0}


def scalar_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in TIMING_FIELDS}


class RunLog:
    """log.jsonl, one line per event, plus the training-loss sums between events."""

    def __init__(self, path: Path, enabled: bool, device: torch.device, state: "State", resumed: bool):
        self.path, self.enabled = path, enabled
        self.events: list[dict] = []
        if resumed and path.is_file():
            kept = path.read_text(encoding="utf-8").splitlines()[: state.log_lines]
            self.events = [json.loads(line) for line in kept]
            if enabled:
                atomic_write_text(path, "".join(line + "\n" for line in kept), "free space and resume again")
        self.loss = torch.tensor(state.pending["loss"], dtype=torch.float64, device=device)
        self.correct = torch.tensor(state.pending["correct"], dtype=torch.int64, device=device)
        self.host = {k: state.pending.get(k, 0) for k in ("items", "examples", "tokens", "padded")}
        self.header_printed = False
        self.console = None

    @property
    def lines(self) -> int:
        return len(self.events)

    @property
    def evals(self) -> list[dict]:
        return [e for e in self.events if e["event"] == "eval"]

    def event(self, kind: str, **fields) -> dict:
        record = {"event": kind, **fields, "time": round(time.time(), 3)}
        self.events.append(record)
        if self.enabled:
            with writing("the run log", self.path.parent, "free space and resume with --resume"):
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(to_json(record) + "\n")
        return record

    # -- training sums: added on the device each micro-step, read only at log, eval and checkpoint time
    def accumulate(self, task, loss_sum, logits, labels, items: int, examples: int,
                   tokens: int, padded: int) -> None:
        self.loss += loss_sum.double()
        if task.kind == "classification":
            self.correct += (logits.argmax(-1) == labels).sum()
        for key, value in (("items", items), ("examples", examples), ("tokens", tokens), ("padded", padded)):
            self.host[key] += value

    def save_pending(self, state: "State") -> None:
        state.pending = {"loss": float(self.loss), "correct": int(self.correct), **self.host}

    def _flush(self, state: "State") -> None:
        host = torch.tensor([float(v) for v in self.host.values()], dtype=torch.float64).to(self.loss.device)
        values = torch.cat([torch.stack([self.loss, self.correct.double()]), host])
        if dist.is_initialized():
            dist.all_reduce(values)
        loss, correct, items, examples, tokens, padded = values.tolist()
        for window in (state.window, state.since_eval):
            window["loss"] += loss
            window["correct"] += int(correct)
            window["items"] += int(items)
            window["examples"] += int(examples)
        state.samples_seen += int(examples)
        state.tokens_seen += int(tokens)
        state.padded_tokens_seen += int(padded)
        self.loss.zero_()
        self.correct.zero_()
        self.host = dict.fromkeys(self.host, 0)

    def train_event(self, run: "Run", grad_norm: float) -> None:
        state = run.state
        self._flush(state)
        window = state.window
        self.event("train", step=state.step, epoch=round(state.step / run.steps_per_epoch, 4),
                   lr=run.scheduler.get_last_lr()[0], loss=window["loss"] / max(1, window["items"]),
                   grad_norm=grad_norm, **throughput(state))
        state.window = empty_window()

    def eval_event(self, run: "Run", result: dict) -> None:
        state = run.state
        self._flush(state)
        since = state.since_eval
        fields = {"step": state.step, "epoch": round(state.step / run.steps_per_epoch, 4),
                  "train_loss": since["loss"] / since["items"] if since["items"] else None}
        if run.task.kind == "classification" and since["examples"]:
            fields["train_accuracy"] = since["correct"] / since["examples"]
        record = self.event("eval", **fields, metrics=result, best_step=state.best_step)
        state.since_eval = empty_window()
        if self.enabled and self.console is not None:
            header, row = table_lines([record])
            if not self.header_printed:
                self.console.print(header, markup=False, highlight=False)
                self.header_printed = True
            self.console.print(row[0], markup=False, highlight=False)

    def start(self, run: "Run", profile_lines: list[str]) -> None:
        cfg = run.cfg
        self.event("start", profile=profile_lines, task=run.task.kind, dataset=run.splits.name, model=cfg.model,
                   examples={name: len(frame) for name, frame in run.frames.items()},
                   features={name: len(f) for name, f in run.features.items()},
                   steps=run.total_steps, steps_per_epoch=run.steps_per_epoch,
                   effective_batch_size=cfg.effective_batch_size(), world_size=cfg.world_size,
                   device=str(run.device), hardware=hardware(), precision=cfg.precision, notes=run.splits.notes,
                   tag_scheme=run.spec.tag_scheme, repaired_tags=run.spec.repaired_tags, **run.timings)

    def progress(self, console, total: int, done: int):
        self.console = console
        return Progress(console if self.enabled else None, total, done)

    def throughput(self, run: "Run") -> dict:
        return {**throughput(run.state), "steps": run.state.step, **run.timings}


def throughput(state: "State") -> dict:
    seconds = state.train_seconds or float("nan")
    padded = state.padded_tokens_seen
    return {"train_seconds": round(state.train_seconds, 3),
            "samples_per_second": round(state.samples_seen / seconds, 2),
            "tokens_per_second": round(state.tokens_seen / seconds, 1),
            "padding_ratio": round(1 - state.tokens_seen / padded, 4) if padded else 0.0}


class Progress:
    """A rich progress bar on rank 0; nothing elsewhere."""

    def __init__(self, console, total: int, done: int):
        self.bar = None
        self.examples, self.seconds = 0, 0.0
        if console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeElapsedColumn, TimeRemainingColumn

            self.bar = RichProgress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                                    TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(),
                                    TextColumn("{task.fields[speed]}"), console=console, transient=False)
            self.task = self.bar.add_task("train", total=total, completed=done, speed="")

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)

    def advance(self, state: "State", examples: int, seconds: float) -> None:
        if self.bar:
            self.examples += examples
            self.seconds += seconds
            self.bar.update(self.task, completed=state.step, speed=f"{self.examples / self.seconds:.1f} samples/s")


# ---------------------------------------------------------------- the results table

def table_columns(evals: list[dict]) -> list[str]:
    metrics = [k for k in scalar_metrics(evals[0]["metrics"]) if k != "loss"] if evals else []
    return ["Training Loss", "Epoch", "Step", "Validation Loss"] + [METRIC_TITLES.get(m, m) for m in metrics]


def table_rows(evals: list[dict]) -> list[list[str]]:
    rows = []
    for record in evals:
        metrics = scalar_metrics(record["metrics"])
        loss = record.get("train_loss")
        rows.append(["No log" if loss is None else f"{loss:.4f}", f"{record['epoch']:.2f}", str(record["step"]),
                     f"{metrics['loss']:.4f}"] + [f"{v:.4f}" for k, v in metrics.items() if k != "loss"])
    return rows


def table_lines(evals: list[dict]) -> tuple[str, list[str]]:
    columns = table_columns(evals)
    widths = [max(len(c), 8) for c in columns]
    header = " | ".join(c.rjust(w) for c, w in zip(columns, widths))
    return header, [" | ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table_rows(evals)]


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(":-----:" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- files written at the end

BASE_MODELS = {"minilm": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
               "bert-base-uncased": ("google-bert/bert-base-uncased", "apache-2.0")}


def write_outputs(run: "Run", summary: dict) -> None:
    folder = run.folder
    folder.write_text("metrics.json", to_json(summary, indent=2))
    evals = run.log.evals
    folder.write_text("results.md", markdown_table(table_columns(evals), table_rows(evals)) + "\n")
    run.log.event("end", **{k: v for k, v in summary.items() if k in ("kept_step", "best_step", "stop_reason")},
                  **summary["train"])
    with folder.recording():
        summary["diagnosis"] = finalise(run.out)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise BertfitError(f"'{path}' is damaged ({first_line(err, 120)}); rerun the training, or restore the "
                           "file from a copy") from None


def read_events(path: Path) -> list[dict]:
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "event" not in record:
            raise BertfitError(f"{path}:{number}: not a bertfit log line; remove the line (bertfit writes one JSON "
                               "object per event)")
        events.append(record)
    return events


def read_run(folder: Path) -> tuple:
    from bertfit.config import build_config

    needed = [folder / n for n in ("recipe.yaml", "log.jsonl", "metrics.json")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise BertfitError(f"'{folder}' is not a finished bertfit run (missing {', '.join(missing)})")
    cfg = build_config(str(needed[0]))
    events = read_events(needed[1])
    summary = _read_json(needed[2])
    if not isinstance(summary, dict) or not all(isinstance(summary.get(k), dict) for k in ("train", "validation")):
        raise BertfitError(f"'{needed[2]}' is not a bertfit metrics file; rerun the training")
    profile_path = folder / "data_profile.json"
    profile = _read_json(profile_path) if profile_path.is_file() else None
    return cfg, events, summary, profile


def finalise(folder: Path) -> list[dict]:
    """Diagnosis, plots and model card, from the run's files alone (so `bertfit card` can redo them)."""
    from bertfit.diagnose import as_dicts, diagnose
    from bertfit.plots import draw_all

    cfg, events, summary, profile = read_run(folder)
    recipe = cfg.model_dump()
    findings = as_dicts(diagnose(events, profile, summary, recipe))
    atomic_write_text(folder / "diagnosis.json", to_json(findings, indent=2))
    with writing("the plots", folder, "free space and run `bertfit card` on the run"):
        plots = draw_all(folder, events, summary, profile, recipe)
    atomic_write_text(folder / "README.md", model_card(cfg, events, summary, profile, findings, plots))
    return findings


def framework_versions() -> dict:
    import tokenizers
    import transformers

    import bertfit

    versions = {"Transformers": transformers.__version__, "Pytorch": torch.__version__}
    try:
        import datasets
        versions["Datasets"] = datasets.__version__
    except ImportError:
        pass
    versions.update({"Tokenizers": tokenizers.__version__, "bertfit": bertfit.__version__})
    return versions


def hyperparameters(cfg) -> list[str]:
    """In the wording of the seeds' (HF Trainer) model cards."""
    lines = [f"learning_rate: {cfg.lr:g}", f"train_batch_size: {cfg.batch_size}",
             f"eval_batch_size: {cfg.eval_batch_size or max(64, 2 * cfg.batch_size)}", f"seed: {cfg.seed}"]
    if cfg.world_size > 1:
        lines += [f"distributed_type: {'multi-GPU' if torch.cuda.is_available() else 'multi-CPU (gloo)'}",
                  f"num_devices: {cfg.world_size}"]
    if cfg.grad_accum > 1:
        lines.append(f"gradient_accumulation_steps: {cfg.grad_accum}")
    if cfg.effective_batch_size() != cfg.batch_size:
        lines.append(f"total_train_batch_size: {cfg.effective_batch_size()} (train_batch_size is per device: "
                     f"{cfg.batch_size} × {cfg.world_size} devices × {cfg.grad_accum} accumulation steps)")
    lines += [f"optimizer: Adam with betas=({cfg.adam_beta1},{cfg.adam_beta2}) and epsilon={cfg.adam_epsilon:.0e}",
              f"lr_scheduler_type: {cfg.scheduler}"]
    if cfg.warmup_steps or cfg.warmup_ratio:
        lines.append(f"lr_scheduler_warmup_{'steps' if cfg.warmup_steps else 'ratio'}: "
                     f"{cfg.warmup_steps or cfg.warmup_ratio}")
    lines.append(f"training_steps: {cfg.max_steps}" if cfg.max_steps else f"num_epochs: {cfg.epochs:g}")
    if cfg.weight_decay:
        lines.append(f"weight_decay: {cfg.weight_decay:g}")
    if cfg.clip_norm:
        lines.append(f"max_grad_norm: {cfg.clip_norm:g}")
    if cfg.precision in ("fp16", "bf16"):
        lines.append(f"mixed_precision_training: Native AMP ({cfg.precision}; fp32 master weights)")
    else:
        lines.append("training_precision: float32")
    lines += [f"max_length: {cfg.max_length} (truncation: {cfg.truncation})", f"padding: {cfg.padding}",
              f"torch_compile: {bool(cfg.compile)}"]
    return lines


def _front_matter(cfg, dataset: str, summary: dict, result_split: str, metric_names: list[str]) -> list[str]:
    base, license_id = BASE_MODELS.get(cfg.model, (cfg.model, None))
    kind = "token-classification" if cfg.task == "token" else "text-classification"
    lines = ["---", "library_name: transformers", f"license: {license_id or 'other  # unknown: set the license'}",
             f"base_model: {base}", "tags:", "- generated_from_trainer", "- bertfit", "datasets:", f"- {dataset}",
             "metrics:"] + [f"- {m}" for m in metric_names]
    lines += ["model-index:", f"- name: {Path(cfg.output).name}", "  results:", "  - task:", f"      type: {kind}",
              f"      name: {kind.replace('-', ' ').title()}", "    dataset:", f"      name: {dataset}",
              f"      type: {dataset}", f"      split: {cfg.test_split if result_split == 'test' else cfg.eval_split}",
              "    metrics:"]
    for name in metric_names:
        lines += [f"    - name: {METRIC_TITLES.get(name, name)}", f"      type: {name}",
                  f"      value: {summary[result_split][name]:.4f}"]
    return lines + ["---"]


def model_card(cfg, events: list[dict], summary: dict, profile, findings: list[dict], plots: list[str]) -> str:
    from bertfit.inspection import summary_lines

    start = next((e for e in events if e["event"] == "start"), {})
    dataset = start.get("dataset", cfg.data)
    evals = [e for e in events if e["event"] == "eval"]
    result_split = "test" if "test" in summary else "validation"
    metric_names = [k for k in scalar_metrics(summary[result_split]) if k != "loss"]
    labels = ", ".join(cfg.label_names) if cfg.label_names else "a real-valued score"
    base = BASE_MODELS.get(cfg.model, (cfg.model,))[0]
    shown = summary[result_split]
    body = [f"# {Path(cfg.output).name}", "",
            f"This model is a fine-tuned version of [{base}](https://huggingface.co/{base}) on the {dataset} dataset.",
            f"It achieves the following results on the {result_split} set:", "", f"- Loss: {shown['loss']:.4f}"]
    body += [f"- {METRIC_TITLES.get(m, m)}: {shown[m]:.4f}" for m in metric_names]
    sizes = ", ".join(f"{name} {count:,}" for name, count in start.get("examples", {}).items())
    body += ["", "## Model description", "", f"- Base model: {base} (`--model {cfg.model}`)", f"- Task: {cfg.task}",
             f"- Labels ({len(cfg.label_names or [])}): {labels}" if cfg.label_names else f"- Target: {labels}",
             f"- Input: {', '.join(cfg.text_columns)}; target column: {cfg.label_column}", "",
             "## Training and evaluation data", "", f"- Dataset: {dataset}; examples used: {sizes}",
             f"- Splits: train = `{cfg.train_split}`, validation = `{cfg.eval_split}`"
             + (f", test = `{cfg.test_split}`" if cfg.test_split not in (None, "none") else "")]
    body += [f"- Note: {note}" for note in start.get("notes", [])]
    if profile:
        body += ["", "### Data profile", ""] + [f"- {line}" for line in summary_lines(profile)]
    body += ["", "## Training procedure", "", "### Training hyperparameters", "",
             "The following hyperparameters were used during training:", ""]
    body += [f"- {line}" for line in hyperparameters(cfg)]
    body += ["", "### Training results", "", markdown_table(table_columns(evals), table_rows(evals)), ""]
    if summary.get("best_metric") is not None:
        body.append(f"The weights kept are those of step {summary['kept_step']} (best {summary['metric_for_best']} "
                    f"{summary['best_metric']:.4f} at step {summary['best_step']}).")
    if any(e.get("train_accuracy") is not None for e in evals):
        body += ["", "Per evaluation, on the training examples seen since the previous one and on validation:", "",
                 markdown_table(["Epoch", "Step", "Training Loss", "Training Accuracy", "Validation Loss",
                                 "Validation Accuracy"],
                                [[f"{e['epoch']:.2f}", str(e["step"]), f"{e['train_loss']:.4f}",
                                  f"{e['train_accuracy']:.4f}", f"{e['metrics']['loss']:.4f}",
                                  f"{e['metrics'].get('accuracy', float('nan')):.4f}"]
                                 for e in evals if e.get("train_accuracy") is not None])]
    per_type = shown.get("per_type")
    if per_type:
        body += ["", f"### Per entity type ({result_split})", "",
                 markdown_table(["Entity", "Precision", "Recall", "F1", "Support"],
                                [[k, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1']:.4f}", f"{v['support']:,}"]
                                 for k, v in sorted(per_type.items())])]
    train = summary["train"]
    body += ["", "### Hardware and throughput", "", f"- Hardware: {start.get('hardware', hardware())}",
             f"- Training: {train['train_seconds']:.1f} s for {train['steps']} steps, {train['samples_per_second']:.1f} "
             f"samples/s, {train['tokens_per_second']:.0f} real tokens/s; padding {train['padding_ratio']:.1%} of "
             "the tokens computed"]
    if train.get("mfu") is not None:
        body.append(f"- Model FLOP utilisation: {train['mfu']:.1%} of 800 TFLOP/s")
    body.append(f"- Tokenization: {train['tokenize_seconds']:.1f} s (cached for reruns)")
    body += ["", "## Diagnosis", ""]
    if findings:
        for finding in findings:
            body += [f"- **{finding['severity'].upper()} — {finding['title']}.** {finding['evidence']}. "
                     f"*Advice:* {finding['advice']}."]
    else:
        body.append("No problems found: losses, metrics, data and speed look healthy (`bertfit doctor` re-checks).")
    if plots:
        body += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    body += ["", "### Framework versions", ""] + [f"- {k} {v}" for k, v in framework_versions().items()]
    return "\n".join(_front_matter(cfg, dataset, summary, result_split, metric_names) + body) + "\n"


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
