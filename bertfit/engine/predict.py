"""Using a finished run: score it on any split, predict labels, scores or entity spans."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertfit import models, tasks
from bertfit.config import Config, build_config
from bertfit.data import readers, sources
from bertfit.engine import fewshot
from bertfit.engine.device import default_device, inference_precision
from bertfit.engine.evaluation import Scorer, evaluate, infer, packs
from bertfit.errors import BertfitError
from bertfit.files import atomic_write, to_json
from bertfit.runfiles import Scores
from bertfit.runfolder import claim_file
from bertfit.tasks import Task, task_for


@dataclass
class LoadedRun:
    cfg: Config
    task: Task
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    precision: str

    def scorer(self, batch_size: int, pad_multiple: int | None = None) -> Scorer:
        return Scorer(
            self.model,
            self.task,
            batch_size,
            self.device,
            self.precision,
            self.tokenizer.pad_token_id,
            packed=packs(self.cfg, self.device),
            pad_multiple=pad_multiple,
        )


def load_run(run_dir: str, precision: str = "auto") -> LoadedRun:
    """`precision`: auto (as the run trained, fp16 only on a GPU), or fp32 / bf16 / fp16 to choose."""
    folder = Path(run_dir)
    adapter, setfit = models.is_adapter(folder), fewshot.is_setfit(folder)
    if not (folder / "recipe.yaml").is_file() or not ((folder / "config.json").is_file() or adapter or setfit):
        raise BertfitError(
            f"'{run_dir}' is not a finished bertfit run (no recipe.yaml and config.json); "
            "point at the --output folder of `bertfit train`"
        )
    cfg = build_config(str(folder / "recipe.yaml"))
    task = task_for(cfg)
    device = default_device()
    precision = inference_precision(cfg.precision if precision == "auto" else precision, device)
    if adapter:  # a LoRA adapter saved alone: the base model's tokenizer, and the adapter folded into its weights
        tokenizer = models.load_tokenizer(models.resolve_model(cfg.model), cfg.trust_remote_code)
        model = models.load_adapter(folder, cfg.model, task.auto_model, task.head_config(), cfg.trust_remote_code)
    elif setfit:  # `method: setfit`: the encoder in body/, under its linear head
        tokenizer = models.load_tokenizer(str(folder / fewshot.BODY))
        model = fewshot.load(folder, lambda path: models.load_model(path, "AutoModel", {}))
    elif models.is_onnx(folder):  # `bertfit export`: onnxruntime on the CPU, in the precision it was exported in
        tokenizer, model = models.load_tokenizer(str(folder)), models.load_onnx(folder)
        device, precision = torch.device("cpu"), "fp32"
    else:
        tokenizer = models.load_tokenizer(str(folder))
        model = models.load_model(str(folder), task.auto_model, task.head_config())
    model = model.to(device).eval()
    task.restore(model.config)
    return LoadedRun(cfg, task, model, tokenizer, device, precision)


def evaluate_run(run_dir: str, source: str, split: str, batch_size: int = 64, precision: str = "auto") -> Scores:
    run = load_run(run_dir, precision)
    splits = sources.load_splits(source)
    if split not in splits.frames:
        raise BertfitError(f"dataset '{source}' has no split '{split}' (it has: {', '.join(splits.frames)})")
    frame = split_frame(run.cfg, splits, source, split)
    return evaluate(run.scorer(batch_size), run.task.encode(frame, run.tokenizer), frame)


def split_frame(cfg: Config, splits: sources.Splits, source: str, split: str):
    """A split of new data read as the run read its own: the run's task, columns and labels, checked row by row
    (one class is enough here), in the form the task encodes."""
    spec = tasks.detect(
        splits,
        split,
        cfg.task,
        cfg.text_columns,
        cfg.label_column,
        cfg.label_names,
        training=False,
        label_columns=cfg.label_columns,
        delimiter=cfg.label_delimiter,
    )
    if spec.label_names is not None and list(spec.label_names) != list(cfg.label_names):
        raise BertfitError(f"labels in '{source}' ({spec.label_names}) differ from the model's ({cfg.label_names})")
    return tasks.normalise(splits, spec).frames[split]


def predict(run: LoadedRun, rows: list[list[str]], batch_size: int = 64, pad_multiple: int | None = None) -> list[dict]:
    """`rows` holds one text (or text pair) per example; token tasks get entity spans with character offsets."""
    frame, context = run.task.prediction_frame(rows)
    features = run.task.encode(frame, run.tokenizer)
    scores = infer(run.scorer(batch_size, pad_multiple), features, run.task.scores).outputs
    return run.task.decode(features, context, scores)


def read_inputs(path: str, columns: list[str]) -> list[list[str]]:
    """Texts to predict from CSV/TSV/JSONL/Parquet (the run's text columns) or a plain text file (one per line)."""
    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "is not a regular file" if file.exists() else "not found"
        raise BertfitError(f"input file '{path}' {what}; give a CSV, TSV, JSONL, Parquet or TXT file of texts")
    if file.suffix.lower() == ".txt":
        rows = [[line] for line in readers.read_text(file).splitlines() if line.strip()]
    else:
        frame = readers.read_file(file)
        missing = [c for c in columns if c not in frame.columns]
        if missing and len(columns) == 1 and "text" in frame.columns:
            columns = ["text"]
        elif missing:
            raise BertfitError(
                f"input file '{path}' lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, frame.columns))})"
            )
        values = frame[columns].to_numpy().tolist()
        rows = [[" ".join(map(str, v)) if isinstance(v, (list, np.ndarray)) else str(v) for v in row] for row in values]
    if not rows:
        raise BertfitError(f"input file '{path}' has no texts; write one text per line (or row)")
    return rows


def claim_output(path: str, overwrite: bool, run_dir: str, input: str | None) -> None:
    """Before any work: a predictions file goes somewhere bertfit may write, and never over what it reads (the
    input, the run, the run's training data)."""
    data = None
    recipe = Path(run_dir) / "recipe.yaml"
    if recipe.is_file():
        data = sources.local_path(build_config(str(recipe)).data or "")
    claim_file(
        Path(path),
        overwrite,
        {
            "the --input file": Path(input) if input else None,
            "the run folder": Path(run_dir),
            "the training data": data,
        },
    )


def write_predictions(path: str, task: Task, rows: list[list[str]], predictions: list[dict]) -> None:
    lines = [to_json(task.prediction_record(row, prediction)) + "\n" for row, prediction in zip(rows, predictions)]
    atomic_write(Path(path), "".join(lines), "free space or choose another --output")
