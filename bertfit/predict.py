"""Using a finished run: evaluate it on any split, predict labels, scores or entity spans."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bertfit import data, models
from bertfit.config import Config, build_config
from bertfit.errors import BertfitError
from bertfit.files import atomic_write_text, to_json
from bertfit.tasks import Task, build_task

# Words as BERT's pre-tokenizer sees them: runs of word characters, or single punctuation marks.
WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class LoadedRun:
    cfg: Config
    task: Task
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    precision: str


def load_run(run_dir: str) -> LoadedRun:
    folder = Path(run_dir)
    if not (folder / "recipe.yaml").is_file() or not (folder / "config.json").is_file():
        raise BertfitError(f"'{run_dir}' is not a finished bertfit run (no recipe.yaml and config.json); "
                           "point at the --output folder of `bertfit train`")
    cfg = build_config(str(folder / "recipe.yaml"))
    task = build_task(cfg.task, cfg.text_columns, cfg.label_column, cfg.label_names, cfg.max_length, cfg.truncation,
                      tuple(cfg.metrics), cfg.stride, cfg.label_all_subtokens)
    from bertfit.train import inference_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = models.load_model(str(folder), cfg.task, None).to(device).eval()
    return LoadedRun(cfg, task, model, models.load_tokenizer(str(folder)), device,
                     inference_precision(cfg.precision, device))


def evaluate_run(run_dir: str, source: str, split: str, batch_size: int = 64) -> dict:
    from bertfit.train import Dist, evaluate

    run = load_run(run_dir)
    splits = data.load_splits(source)
    if split not in splits.frames:
        raise BertfitError(f"dataset '{source}' has no split '{split}' (it has: {', '.join(splits.frames)})")
    cfg = run.cfg
    spec = data.detect(splits, split, cfg.task, cfg.text_columns, cfg.label_column, cfg.label_names, training=False)
    if spec.label_names is not None and list(spec.label_names) != list(cfg.label_names):
        raise BertfitError(f"labels in '{source}' ({spec.label_names}) differ from the model's ({cfg.label_names})")
    frame = splits.frames[split]
    features = run.task.encode(frame, run.tokenizer)
    return evaluate(run.model, run.task, features, frame, batch_size, run.device, run.precision, Dist(),
                    run.tokenizer.pad_token_id)


@torch.no_grad()
def _probabilities(run: LoadedRun, features, batch_size: int) -> list[np.ndarray]:
    from bertfit.batching import eval_batches
    from bertfit.train import autocast

    out: list = [None] * len(features)
    for indices in eval_batches(features.lengths, batch_size):
        batch = {k: v.to(run.device) for k, v in run.task.collate(features, indices, run.tokenizer.pad_token_id).items()}
        batch.pop("labels")
        with autocast(run.device, run.precision):
            logits = run.model(**batch).logits.float()
        scores = (logits if run.task.kind == "regression" else logits.softmax(-1)).cpu().numpy()
        for row, index in enumerate(indices):
            out[index] = scores[row, : features.lengths[index]] if scores.ndim == 3 else scores[row]
    return out


def predict(run: LoadedRun, rows: list[list[str]], batch_size: int = 64) -> list[dict]:
    """`rows` holds one text (or text pair) per example; token tasks get entity spans with character offsets."""
    cfg, task = run.cfg, run.task
    if task.kind == "token":
        return _predict_entities(run, [r[0] for r in rows], batch_size)
    if len(rows[0]) != len(cfg.text_columns):
        raise BertfitError(f"this model reads {len(cfg.text_columns)} text(s) per example "
                           f"({', '.join(cfg.text_columns)}); got {len(rows[0])}")
    frame = pd.DataFrame(rows, columns=cfg.text_columns)
    scores = _probabilities(run, task.encode(frame, run.tokenizer), batch_size)
    if task.kind == "regression":
        return [{"score": float(s[0])} for s in scores]
    return [{"label": cfg.label_names[int(s.argmax())], "score": float(s.max())} for s in scores]


def _predict_entities(run: LoadedRun, texts: list[str], batch_size: int) -> list[dict]:
    task = run.task
    spans = [[m.span() for m in WORD.finditer(text)] for text in texts]
    frame = pd.DataFrame({task.text_columns[0]: [[t[a:b] for a, b in s] or ["."] for t, s in zip(texts, spans)]})
    features = task.encode(frame, run.tokenizer)
    probabilities = _probabilities(run, features, batch_size)
    word_probs = [np.zeros((len(s), len(task.label_names))) for s in spans]
    for feature, probs in enumerate(probabilities):
        word_here = features.word_ids[feature]
        where = word_here >= 0
        example = features.example_ids[feature]
        if len(spans[example]):
            word_probs[example][word_here[where]] = probs[where]
    results = []
    for text, offsets, probs in zip(texts, spans, word_probs):
        tags = [task.label_names[i] for i in probs.argmax(-1)] if len(offsets) else []
        results.append({"text": text, "entities": entity_spans(text, offsets, tags, probs.max(-1) if len(offsets) else [])})
    return results


def entity_spans(text: str, offsets: list[tuple[int, int]], tags: list[str], scores) -> list[dict]:
    """IOB2/BIOES word tags → entity spans; an I-X that does not continue an X entity starts one."""
    entities, current = [], None
    for (start, end), tag, score in zip(offsets, tags, scores):
        prefix, _, kind = tag.partition("-")
        continues = current is not None and prefix in ("I", "E") and current["entity_group"] == kind
        if continues:
            current["end"], current["scores"] = end, current["scores"] + [float(score)]
        else:
            if current:
                entities.append(current)
            current = {"entity_group": kind, "start": start, "end": end, "scores": [float(score)]} \
                if prefix in ("B", "I", "S", "E") and kind else None
        if current is not None and prefix in ("E", "S"):
            entities.append(current)
            current = None
    if current:
        entities.append(current)
    return [{"entity_group": e["entity_group"], "word": text[e["start"]:e["end"]], "start": e["start"],
             "end": e["end"], "score": float(np.mean(e["scores"]))} for e in entities]


def read_inputs(path: str, columns: list[str]) -> list[list[str]]:
    """Texts to predict from CSV/TSV/JSONL/Parquet (the run's text columns) or a plain text file (one per line)."""
    file = Path(path)
    if not file.is_file():
        raise BertfitError(f"input file '{path}' not found")
    if file.suffix.lower() == ".txt":
        rows = [[line] for line in data.read_text(file).splitlines() if line.strip()]
    else:
        frame = data.read_file(file)
        missing = [c for c in columns if c not in frame.columns]
        if missing and len(columns) == 1 and "text" in frame.columns:
            columns = ["text"]
        elif missing:
            raise BertfitError(f"input file '{path}' lacks column(s) {', '.join(missing)} (has: "
                               f"{', '.join(map(str, frame.columns))})")
        values = frame[columns].to_numpy().tolist()
        rows = [[" ".join(map(str, v)) if isinstance(v, (list, np.ndarray)) else str(v) for v in row]
                for row in values]
    if not rows:
        raise BertfitError(f"input file '{path}' has no texts; write one text per line (or row)")
    return rows


def check_output_path(path: str) -> None:
    """Before any work: a predictions file needs a place to go."""
    target = Path(path)
    if target.is_dir():
        raise BertfitError(f"--output '{path}' is a folder; give a file name such as '{target / 'predictions.jsonl'}'")
    if not target.parent.is_dir():
        raise BertfitError(f"the folder of --output '{path}' does not exist; create '{target.parent}' first")


def write_predictions(path: str, rows: list[list[str]], predictions: list[dict]) -> None:
    lines = []
    for row, prediction in zip(rows, predictions):
        record = prediction if "entities" in prediction else {"text": row if len(row) > 1 else row[0], **prediction}
        lines.append(to_json(record) + "\n")
    atomic_write_text(Path(path), "".join(lines), "free space or choose another --output")
