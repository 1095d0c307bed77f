"""Side-by-side benchmark: the HF Trainer and bertfit on the same data, model, recipe and machine, in one run.

    python benchmarks/compare.py cpu          # minilm, SST-2 8,000 seeded examples, 1 epoch, bs 32: Trainer fp32 and
                                              # bf16 vs bertfit's defaults (2-core CPU target)
    python benchmarks/compare.py cpu-throughput  # bert-base-sized random-init model, IMDB at 128 tokens, CPU
    python benchmarks/compare.py ner          # minilm, CoNLL-2003, run_ner-style Trainer vs bertfit (F1 side by side)
    python benchmarks/compare.py multilabel   # minilm, go_emotions (28 labels) 12,000 seeded examples, 1 epoch, bs 16:
                                              # the Trainer's multi-label head at threshold 0.5 vs bertfit
    python benchmarks/compare.py gpu          # minilm, full IMDB, seed recipe (lr 2e-5, bs 16, 3 epochs, linear, AMP)
    python benchmarks/compare.py throughput   # bert-base-sized random-init model, IMDB-length data, bs 16 and 32 (GPU)
    python benchmarks/compare.py cpu --set max_train_samples=4000 --seeds 3   # the same recipe over 3 seeds a side:
                                              # means ± std, and whether bertfit is below the Trainer beyond the noise

Each side runs in its own process (so peak memory is its own) and reports tokenize, train and eval seconds,
train samples/s and real (non-pad) tokens/s, eval samples/s, peak memory and final metrics. The result is
printed and appended, dated, with machine, command and versions, to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = {
    "cpu": {
        "model": "minilm",
        "data": "sst2",
        "max_train_samples": 8000,
        "epochs": 1,
        "batch_size": 32,
        "eval_batch_size": 64,
        "lr": 5e-5,
        "max_length": 128,
        "scheduler": "linear",
        "seed": 42,
        "precision": "auto",
        "eval_split": "validation",
    },
    "ner": {
        "model": "minilm",
        "data": "conll2003",
        "epochs": 1,
        "batch_size": 16,
        "eval_batch_size": 64,
        "lr": 1e-4,
        "max_length": 128,
        "scheduler": "linear",
        "seed": 42,
        "precision": "fp32",
        "eval_split": "validation",
        "test_split": "test",
    },
    "multilabel": {
        "model": "minilm",
        "data": "go_emotions",
        "max_train_samples": 12000,
        "epochs": 1,
        "batch_size": 16,
        "eval_batch_size": 64,
        "lr": 1e-4,
        "max_length": 128,
        "scheduler": "linear",
        "seed": 42,
        "precision": "auto",
        "eval_split": "validation",
        "test_split": "test",
    },
    "gpu": {
        "model": "minilm",
        "data": "imdb",
        "epochs": 3,
        "batch_size": 16,
        "eval_batch_size": 16,
        "lr": 2e-5,
        "max_length": 512,
        "scheduler": "linear",
        "seed": 42,
        "precision": "auto",
        "eval_split": "test",
    },
    # Throughput only: a random-init bert-base-sized model on IMDB-length data, seed recipe (AMP), bs 16 and 32.
    "throughput": {
        "model": "random-bert",
        "tokenizer": "minilm",
        "layers": 12,
        "hidden": 768,
        "data": "imdb",
        "max_steps": 600,
        "batch_size": 16,
        "lr": 2e-5,
        "max_length": 512,
        "scheduler": "linear",
        "seed": 42,
        "precision": "auto",
        "eval_split": "test",
    },
    "cpu-throughput": {
        "model": "random-bert",
        "tokenizer": "minilm",
        "layers": 12,
        "hidden": 768,
        "data": "imdb",
        "max_steps": 20,
        "batch_size": 16,
        "lr": 2e-5,
        "max_length": 128,
        "scheduler": "linear",
        "seed": 42,
        "precision": "auto",
        "eval_split": "test",
    },
}
# The sides compared in each mode: the Trainer as a user would run it (and, on CPU, with its bf16 switch on).
MODE_SIDES = {"cpu": ("hf", "hf-bf16", "bertfit"), "cpu-throughput": ("hf", "hf-bf16", "bertfit")}
SIDE_TITLES = {"hf": "HF Trainer", "hf-bf16": "HF Trainer bf16=True", "bertfit": "bertfit"}


# ---------------------------------------------------------------- shared: the same examples on both sides


def load_frames(recipe: dict) -> tuple[dict, object]:
    """Both sides train and score on exactly these rows (bertfit's loaders and seeded subsets)."""
    from bertfit import tasks
    from bertfit.data import sources

    splits = sources.load_splits(recipe["data"])
    spec = tasks.detect(splits, "train", "auto", None, None, None)
    splits, train, eval_split, test = sources.choose_splits(
        tasks.normalise(splits, spec), "train", recipe.get("eval_split"), recipe.get("test_split"), recipe["seed"], 0.1
    )
    frames = {
        "train": sources.subsample(splits.frames[train], recipe.get("max_train_samples"), recipe["seed"]),
        "validation": splits.frames[eval_split],
    }
    if test:
        frames["test"] = splits.frames[test]
    return frames, spec


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the HF Trainer side (run_glue / run_ner style)


def hf_side(recipe: dict, bf16: bool = False) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from bertfit.models import quiet_transformers, resolve_model
    from bertfit.tasks import build_task
    from bertfit.tasks.classification import classification_metrics
    from bertfit.tasks.multilabel import multi_label_metrics
    from bertfit.tasks.token import token_metrics

    quiet_transformers()
    started = time.perf_counter()
    frames, spec = load_frames(recipe)
    path = resolve_model(recipe["model"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    token_task, multi_label = spec.task == "token", spec.task == "multi_label"
    names = spec.label_names
    tokenize_started = time.perf_counter()

    def encode(frame):
        if token_task:
            words = [list(w) for w in frame[spec.text_columns[0]]]
            enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=recipe["max_length"])
            index = {n: i for i, n in enumerate(names)}
            labels = []
            for row, tags in enumerate(frame[spec.label_column]):
                previous, row_labels = None, []
                for word in enc.word_ids(row):
                    row_labels.append(-100 if word is None or word == previous else index[tags[word]])
                    previous = word
                labels.append(row_labels)
            return Dataset.from_dict(
                {
                    "input_ids": enc["input_ids"],
                    "attention_mask": enc["attention_mask"],
                    "token_type_ids": enc["token_type_ids"],
                    "labels": labels,
                }
            )
        columns = [frame[c].astype(str).tolist() for c in spec.text_columns]
        enc = tokenizer(*columns, truncation=True, max_length=recipe["max_length"])
        if multi_label:  # float 0/1 targets per label, as BCEWithLogitsLoss takes them
            targets = build_task(spec.task, spec.text_columns, spec.label_column, names, 512).label_ids(frame)
            return Dataset.from_dict({**enc, "labels": targets.astype("float32").tolist()})
        return Dataset.from_dict({**enc, "labels": frame[spec.label_column].astype(int).tolist()})

    datasets = {name: encode(frame) for name, frame in frames.items()}
    tokenize_seconds = time.perf_counter() - tokenize_started
    if token_task:
        model = AutoModelForTokenClassification.from_pretrained(
            path,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            dtype=torch.float32,
        )
        collator = DataCollatorForTokenClassification(tokenizer)
    else:
        # fp32 master weights, as bertfit loads them: the staged GPU model is fp16, which AMP cannot train.
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(names),
            dtype=torch.float32,
            **({"problem_type": "multi_label_classification"} if multi_label else {}),
        )
        collator = DataCollatorWithPadding(tokenizer)

    def compute_metrics(prediction):
        logits, labels = prediction
        if multi_label:  # the usual recipe: a sigmoid per label, cut at 0.5
            decided = 1 / (1 + np.exp(-logits)) >= 0.5
            return {k: v for k, v in multi_label_metrics(labels >= 0.5, decided, names).items() if k != "per_label"}
        predicted = np.argmax(logits, axis=-1)
        if not token_task:
            return classification_metrics(labels, predicted, len(names), False)
        true = [[names[label] for label in row if label != -100] for row in labels]
        pred = [[names[p] for p, label in zip(prow, lrow) if label != -100] for prow, lrow in zip(predicted, labels)]
        return {k: v for k, v in token_metrics(true, pred).items() if k != "per_type"}

    cuda = torch.cuda.is_available()
    amp = recipe["precision"] == "auto" and cuda
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        learning_rate=recipe["lr"],
        per_device_train_batch_size=recipe["batch_size"],
        per_device_eval_batch_size=recipe["eval_batch_size"],
        num_train_epochs=recipe["epochs"],
        seed=recipe["seed"],
        lr_scheduler_type=recipe["scheduler"],
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        fp16=amp,
        bf16=bf16,
        use_cpu=not cuda,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=datasets["train"], data_collator=collator, compute_metrics=compute_metrics
    )
    train_started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_started
    results = {}
    eval_seconds = 0.0
    for split in [s for s in ("validation", "test") if s in datasets]:
        eval_started = time.perf_counter()
        metrics = trainer.evaluate(datasets[split])
        eval_seconds += time.perf_counter() - eval_started
        results[split] = {
            k.removeprefix("eval_"): v for k, v in metrics.items() if not k.endswith(("runtime", "per_second", "epoch"))
        }
    n_train = len(frames["train"]) * recipe["epochs"]
    real_tokens = sum(len(x) for x in datasets["train"]["input_ids"]) * recipe["epochs"]
    n_eval = sum(len(frames[s]) for s in results)
    return {
        "tokenize_seconds": tokenize_seconds,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "total_seconds": time.perf_counter() - started,
        "train_samples_per_second": n_train / train_seconds,
        "train_tokens_per_second": real_tokens / train_seconds,
        "eval_samples_per_second": n_eval / eval_seconds,
        "peak_memory_mb": peak_memory_mb(),
        "metrics": results,
    }


# ---------------------------------------------------------------- the bertfit side


def bertfit_side(recipe: dict) -> dict:
    from bertfit.cli import fit as train
    from bertfit.config import build_config

    os.environ["BERTFIT_CACHE"] = tempfile.mkdtemp()  # cold: tokenization is timed, not read from a cache
    started = time.perf_counter()
    out = tempfile.mkdtemp()
    cfg = build_config(None, {**recipe, "output": out, "eval_every": "epoch", "keep_best": False, "log_every": 10**6})
    summary = train(cfg, overwrite=True).metrics
    total = time.perf_counter() - started
    events = [json.loads(line) for line in Path(out, "log.jsonl").read_text().splitlines()]
    examples = events[0]["examples"]
    results = {"validation": summary.validation.scalars()}
    eval_seconds = summary.validation.runtime
    n_eval = examples["validation"]
    if summary.test is not None:
        results["test"] = summary.test.scalars()
        eval_seconds += summary.test.runtime
        n_eval += examples["test"]
    train_stats = summary.train.dump()
    return {
        "tokenize_seconds": train_stats["tokenize_seconds"],
        "train_seconds": train_stats["train_seconds"],
        "eval_seconds": eval_seconds,
        "total_seconds": total,
        "train_samples_per_second": train_stats["samples_per_second"],
        "train_tokens_per_second": train_stats["tokens_per_second"],
        "eval_samples_per_second": n_eval / eval_seconds,
        "padding_ratio": train_stats["padding_ratio"],
        "peak_memory_mb": peak_memory_mb(),
        "metrics": results,
        "precision": events[0]["precision"],
    }


# ---------------------------------------------------------------- throughput only (bert-base-sized, random init)


def random_bert(recipe: dict) -> str:
    """bert-base geometry (or smaller, for a smoke test) with bert-base-uncased's vocabulary (that of the
    `tokenizer` recipe key, minilm's by default), random weights."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bertfit.models import resolve_model

    folder = tempfile.mkdtemp()
    torch.manual_seed(recipe["seed"])
    hidden = recipe["hidden"]
    config = BertConfig(
        num_hidden_layers=recipe["layers"],
        hidden_size=hidden,
        num_attention_heads=hidden // 64,
        intermediate_size=4 * hidden,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model(recipe["tokenizer"])).save_pretrained(folder)
    return folder


def mfu(parameters: int, tokens_per_second: float):
    """Model FLOP utilisation against the GPU's datasheet peak (bertfit's table); None on CPUs and unlisted GPUs."""
    from bertfit.engine.device import default_device, peak_flops

    peak = peak_flops(default_device())
    return 6 * parameters * tokens_per_second / peak if peak else None


def steady_rate(times: list[tuple[int, float]], batch_size: int) -> float:
    """Samples/s between the step at 20% of the run and the last one: compile and warm-up excluded."""
    first = next(p for p in times if p[0] >= times[-1][0] * 0.2)
    last = times[-1]
    return (last[0] - first[0]) * batch_size / (last[1] - first[1])


def hf_throughput_side(recipe: dict, bf16: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    path = random_bert(recipe)
    frames, spec = load_frames(recipe)
    tokenizer = AutoTokenizer.from_pretrained(path)
    enc = tokenizer(frames["train"]["text"].tolist(), truncation=True, max_length=recipe["max_length"])
    dataset = Dataset.from_dict({**enc, "labels": frames["train"]["label"].tolist()})
    times: list[tuple[int, float]] = []
    every = max(1, recipe["max_steps"] // 30)

    class Clock(TrainerCallback):
        """Reads the clock every `every` steps (bertfit's log lines, which wait for the device, read it as often)."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every and state.global_step != args.max_steps:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append((state.global_step, time.perf_counter()))

    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=recipe["batch_size"],
        learning_rate=recipe["lr"],
        max_steps=recipe["max_steps"],
        seed=recipe["seed"],
        fp16=torch.cuda.is_available(),
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        logging_steps=10**6,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[Clock()],
    )
    trainer.train()
    rate = steady_rate(times, recipe["batch_size"])
    mean_tokens = sum(len(x) for x in enc["input_ids"]) / len(enc["input_ids"])
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "train_samples_per_second": rate,
        "train_tokens_per_second": rate * mean_tokens,
        "mfu": mfu(parameters, rate * mean_tokens),
        "peak_memory_mb": peak_memory_mb(),
        "precision": "bf16" if bf16 else "fp16" if torch.cuda.is_available() else "fp32",
    }


def bertfit_throughput_side(recipe: dict, padding: str = "bucket") -> dict:
    from bertfit.cli import fit as train
    from bertfit.config import build_config

    path = random_bert(recipe)
    out = tempfile.mkdtemp()
    steps = recipe["max_steps"]
    cfg = build_config(
        None,
        {
            "model": path,
            "data": recipe["data"],
            "output": out,
            "max_steps": steps,
            "eval_every": steps,
            "max_eval_samples": 256,
            "batch_size": recipe["batch_size"],
            "lr": recipe["lr"],
            "max_length": recipe["max_length"],
            "seed": recipe["seed"],
            "precision": recipe["precision"],
            "eval_split": recipe["eval_split"],
            "log_every": max(1, steps // 30),
            "keep_best": False,
            "padding": padding,
        },
    )
    trained = train(cfg, overwrite=True).metrics.train
    events = [json.loads(line) for line in Path(out, "log.jsonl").read_text().splitlines()]
    times = [(e["step"], e["time"]) for e in events if e["event"] == "train"]
    rate = steady_rate(times, recipe["batch_size"])
    tokens_per_sample = trained.tokens_per_second / trained.samples_per_second
    from bertfit.models import load_model

    parameters = sum(p.numel() for p in load_model(out, "AutoModelForSequenceClassification", {}).parameters())
    return {
        "train_samples_per_second": rate,
        "train_tokens_per_second": rate * tokens_per_sample,
        "mfu": mfu(parameters, rate * tokens_per_sample),
        "padding_ratio": trained.padding_ratio,
        "peak_memory_mb": peak_memory_mb(),
        "precision": events[0]["precision"],
    }


def throughput_report(recipe: dict, rows: dict, command: str) -> str:
    lines = [
        f"### throughput: {datetime.date.today().isoformat()}",
        "",
        f"- machine: {machine()}; {versions()}",
        f"- command: `{command}`",
        f"- model: random-init BERT, {recipe['layers']} layers, hidden {recipe['hidden']}; data: {recipe['data']} "
        f"train, max_length {recipe['max_length']}; {recipe['max_steps']} steps; steady state after 20% of steps",
        "",
        "| batch | side | samples/s | real tokens/s | MFU (of the GPU's bf16 peak) | peak memory MB "
        "| bertfit / Trainer |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    titles = {
        "hf": "HF Trainer (fp16 AMP, dynamic padding)",
        "bertfit": "bertfit (defaults)",
        "bertfit-packed": "bertfit (padding packed: FlexAttention on a GPU)",
    }
    for batch, sides in rows.items():
        hf = sides["hf"]
        for key, side in sides.items():
            name = titles[key]
            ratio = f"{side['train_samples_per_second'] / hf['train_samples_per_second']:.2f}×" if key != "hf" else ""
            shown_mfu = "n/a" if side["mfu"] is None else f"{side['mfu']:.1%}"
            lines.append(
                f"| {batch} | {name} | {side['train_samples_per_second']:.1f} | "
                f"{side['train_tokens_per_second']:.0f} | {shown_mfu} | {side['peak_memory_mb']:.0f} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- running both and reporting

SIDES = {"hf": hf_side, "hf-bf16": lambda recipe: hf_side(recipe, bf16=True), "bertfit": bertfit_side}
THROUGHPUT_SIDES = {
    "hf": hf_throughput_side,
    "hf-bf16": lambda recipe: hf_throughput_side(recipe, bf16=True),
    "bertfit": bertfit_throughput_side,
    "bertfit-packed": lambda recipe: bertfit_throughput_side(recipe, padding="packed"),
}


def run_side(side: str, mode: str, overrides: list[str]) -> dict:
    command = [sys.executable, __file__, mode, "--side", side, *sum((["--set", o] for o in overrides), [])]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def versions() -> str:
    import tokenizers
    import torch
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}"


def machine() -> str:
    from bertfit.engine.device import default_device, hardware

    device = default_device()
    return hardware(device) if device.type == "cpu" else f"{hardware(device)}, {os.cpu_count()} CPU cores"


REPORTED_METRICS = (
    "accuracy",
    "f1",
    "precision",
    "recall",
    "micro_f1",
    "macro_f1",
    "micro_precision",
    "micro_recall",
    "subset_accuracy",
    "hamming_loss",
)
# What each side reports, in the tables' order: title, key, format.
MEASURES = [
    ("tokenize s", "tokenize_seconds", ".1f"),
    ("train s", "train_seconds", ".1f"),
    ("eval s", "eval_seconds", ".1f"),
    ("end-to-end s", "total_seconds", ".1f"),
    ("train samples/s", "train_samples_per_second", ".1f"),
    ("train real tokens/s", "train_tokens_per_second", ".0f"),
    ("eval samples/s", "eval_samples_per_second", ".1f"),
    ("peak memory MB", "peak_memory_mb", ".0f"),
]


def report(mode: str, recipe: dict, hf: dict, ours: dict, command: str) -> str:
    lines = [
        f"### {mode}: {datetime.date.today().isoformat()}",
        "",
        f"- machine: {machine()}; {versions()}",
        f"- command: `{command}`",
        f"- recipe: {json.dumps(recipe)}",
        "",
        "| measure | HF Trainer | bertfit | bertfit / Trainer |",
        "|---|---:|---:|---:|",
    ]
    for title, key, fmt in MEASURES:
        ratio = ours[key] / hf[key] if hf[key] else float("nan")
        if key.endswith("seconds") and ours[key]:
            speedup = hf[key] / ours[key]
            ratio_text = f"{speedup:.2f}× faster" if speedup >= 1 else f"{1 / speedup:.2f}× slower"
        else:
            ratio_text = f"{ratio:.2f}×"
        lines.append(f"| {title} | {hf[key]:{fmt}} | {ours[key]:{fmt}} | {ratio_text} |")
    for split_name in [s for s in ("validation", "test") if s in hf["metrics"]]:
        for metric in [m for m in REPORTED_METRICS if m in hf["metrics"][split_name]]:
            a, b = hf["metrics"][split_name][metric], ours["metrics"][split_name][metric]
            lines.append(f"| {split_name} {metric} | {a:.4f} | {b:.4f} | {100 * (b - a):+.2f} points |")
    lines.append(f"| bertfit padding share | | {ours.get('padding_ratio', 0):.1%} | |")
    return "\n".join(lines) + "\n"


def multi_report(mode: str, recipe: dict, results: dict, command: str) -> str:
    """One column per side, and bertfit's ratio to each Trainer setting."""
    names = list(results)
    ours = results["bertfit"]
    others = [n for n in names if n != "bertfit"]
    header = ["measure"] + [SIDE_TITLES[n] for n in names] + [f"bertfit / {SIDE_TITLES[n]}" for n in others]
    lines = [
        f"### {mode}: {datetime.date.today().isoformat()}",
        "",
        f"- machine: {machine()}; {versions()}",
        f"- command: `{command}`",
        f"- recipe: {json.dumps(recipe)}",
        f"- bertfit's precision: {ours.get('precision', recipe.get('precision'))}",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for title, key, fmt in MEASURES:
        if not all(key in results[n] for n in names):
            continue
        cells = [f"{results[n][key]:{fmt}}" for n in names]
        for other in others:
            theirs = results[other][key]
            if key.endswith("seconds"):
                cells.append(f"{theirs / ours[key]:.2f}× faster" if ours[key] else "")
            else:
                cells.append(f"{ours[key] / theirs:.2f}×" if theirs else "")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    for split_name in [s for s in ("validation", "test") if s in ours.get("metrics", {})]:
        for metric in [m for m in ("accuracy", "f1") if m in ours["metrics"][split_name]]:
            values = [results[n]["metrics"][split_name][metric] for n in names]
            deltas = [
                f"{100 * (ours['metrics'][split_name][metric] - results[o]['metrics'][split_name][metric]):+.2f} points"
                for o in others
            ]
            lines.append(
                f"| {split_name} {metric} | "
                + " | ".join(f"{v:.4f}" for v in values)
                + " | "
                + " | ".join(deltas)
                + " |"
            )
    return "\n".join(lines) + "\n"


def seeds_report(mode: str, recipe: dict, results: dict[str, list[dict]], seeds: list[int], command: str) -> str:
    """Each side's metrics over seeds: mean ± std and every seed's value, and whether bertfit's mean is below the
    Trainer's by more than a standard deviation (the question one run of each cannot answer)."""
    import statistics

    hf, ours = results["hf"], results["bertfit"]
    lines = [
        f"### {mode}, {len(seeds)} seeds: {datetime.date.today().isoformat()}",
        "",
        f"- machine: {machine()}; {versions()}",
        f"- command: `{command}`",
        f"- recipe: {json.dumps({k: v for k, v in recipe.items() if k != 'seed'})}; seeds {seeds}",
        "",
        "| metric | HF Trainer (mean ± std) | bertfit (mean ± std) | difference | Trainer per seed "
        "| bertfit per seed |",
        "|---|---:|---:|---:|---|---|",
    ]
    verdicts = []
    for split in [s for s in ("validation", "test") if s in hf[0]["metrics"]]:
        for metric in [m for m in REPORTED_METRICS if m in hf[0]["metrics"][split] and m in ours[0]["metrics"][split]]:
            a = [r["metrics"][split][metric] for r in hf]
            b = [r["metrics"][split][metric] for r in ours]
            mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
            std_a, std_b = statistics.stdev(a), statistics.stdev(b)
            lines.append(
                f"| {split} {metric} | {mean_a:.4f} ± {std_a:.4f} | {mean_b:.4f} ± {std_b:.4f} | "
                f"{100 * (mean_b - mean_a):+.2f} points | {', '.join(f'{v:.4f}' for v in a)} | "
                f"{', '.join(f'{v:.4f}' for v in b)} |"
            )
            if metric in ("accuracy", "f1"):
                spread = max(std_a, std_b)
                below = mean_a - mean_b > spread
                verdicts.append(
                    f"{split} {metric}: bertfit's mean is {'below' if below else 'within'} the Trainer's "
                    f"{'by more than' if below else 'by at most'} one standard deviation ({spread:.4f})"
                )
    speed = statistics.fmean(r["train_seconds"] for r in hf) / statistics.fmean(r["train_seconds"] for r in ours)
    lines += ["", f"- training {speed:.2f}× faster than the Trainer (mean over seeds)", *(f"- {v}" for v in verdicts)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--side", choices=sorted({*SIDES, *THROUGHPUT_SIDES}), help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE recipe override for both sides")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to BENCHMARKS.md")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="K > 1: the Trainer and bertfit each run with seeds 42 .. 42+K-1; "
        "means and standard deviations of the metrics",
    )
    args = parser.parse_args()
    os.environ.setdefault("BERTFIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    from bertfit.config import parse_set_overrides

    recipe = {**MODES[args.mode], **parse_set_overrides(args.set)}
    if args.side:
        sides = THROUGHPUT_SIDES if "throughput" in args.mode else SIDES
        print(json.dumps(sides[args.side](recipe), default=float))
        return
    command = "python benchmarks/compare.py " + " ".join(sys.argv[1:])
    if args.seeds > 1:
        seeds = [recipe["seed"] + k for k in range(args.seeds)]
        results = {
            side: [run_side(side, args.mode, args.set + [f"seed={seed}"]) for seed in seeds]
            for side in ("hf", "bertfit")
        }
        text = seeds_report(args.mode, recipe, results, seeds, command)
    elif args.mode in MODE_SIDES:
        results = {side: run_side(side, args.mode, args.set) for side in MODE_SIDES[args.mode]}
        text = multi_report(args.mode, recipe, results, command)
    elif args.mode == "throughput":
        batches = [recipe["batch_size"]] if any(o.startswith("batch_size=") for o in args.set) else [16, 32]
        rows = {
            b: {
                side: run_side(side, args.mode, args.set + [f"batch_size={b}"])
                for side in ("hf", "bertfit", "bertfit-packed")
            }
            for b in batches
        }
        text = throughput_report(recipe, rows, command)
    else:
        text = report(
            args.mode, recipe, run_side("hf", args.mode, args.set), run_side("bertfit", args.mode, args.set), command
        )
    print(text)
    if not args.no_write:
        with open(REPO / "BENCHMARKS.md", "a") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
