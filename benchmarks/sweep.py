"""Hyperparameter search side by side, in one invocation: `Trainer.hyperparameter_search(backend="optuna")` with
a median pruner against `bertfit sweep`, on the same rows, space, trial count, sampler seed and machine.

    python benchmarks/sweep.py                       # minilm, 3,000 seeded SST-2 sentences, 12 trials (2 CPU cores)
    python benchmarks/sweep.py --trials 3 --train 300   # a quick look
    python benchmarks/sweep.py --reuse trainer          # bertfit's side again, beside the Trainer's last measurement

Each side's result is kept in benchmarks/results/sweep-<side>.json (with when it was measured); `--reuse trainer`
reports the Trainer's from there (it does not depend on bertfit's code, and takes about 20 minutes on 2 cores),
and the report says so.

Space (both sides): lr 1e-5..2e-4 (log), batch size {16, 32}, epochs {1, 2}, warmup ratio 0..0.1; evaluation on
SST-2's validation split (872 sentences) after each epoch, which is where both prune. Each side runs in its own
process. bertfit's winner is then confirmed over 3 seeds (timed apart from the search). Appends a dated section to
BENCHMARKS.md and draws the best-so-far curves of both against wall time to benchmarks/results/sweep.png.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SEED = 42
MAX_LENGTH = 128


def recipe(train_rows: int) -> dict:
    return {"data": "sst2", "max_train_samples": train_rows, "seed": SEED, "eval_split": "validation"}


def trainer_side(trials: int, train_rows: int) -> dict:
    import numpy as np
    import optuna
    import torch
    from compare import load_frames
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from bertfit.models import quiet_transformers, resolve_model
    from bertfit.tasks.classification import classification_metrics

    quiet_transformers()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    frames, spec = load_frames(recipe(train_rows))
    path = resolve_model("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(frame):
        enc = tokenizer(frame[spec.text_columns[0]].astype(str).tolist(), truncation=True, max_length=MAX_LENGTH)
        return Dataset.from_dict({**enc, "labels": frame[spec.label_column].astype(int).tolist()})

    train, validation = encode(frames["train"]), encode(frames["validation"])

    def model_init(trial=None):
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, dtype=torch.float32)

    def compute_metrics(prediction):
        logits, labels = prediction
        return classification_metrics(labels, np.argmax(logits, axis=-1), 2, False)

    def hp_space(trial):
        return {
            "learning_rate": trial.suggest_float("learning_rate", 1e-5, 2e-4, log=True),
            "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [16, 32]),
            "num_train_epochs": trial.suggest_int("num_train_epochs", 1, 2),
            "warmup_ratio": trial.suggest_float("warmup_ratio", 0.0, 0.1),
        }

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_eval_batch_size=64,
        eval_strategy="epoch",
        save_strategy="no",
        seed=SEED,
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        disable_tqdm=True,
        logging_steps=50,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model_init=model_init,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
    )
    journal = Path(tempfile.mkdtemp()) / "trainer.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    search_started = time.perf_counter()
    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=lambda metrics: metrics["eval_accuracy"],
        n_trials=trials,
        direction="maximize",
        backend="optuna",
        sampler=optuna.samplers.TPESampler(seed=SEED),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
        storage=storage,
        study_name="trainer",
    )
    seconds = time.perf_counter() - search_started
    study = optuna.load_study(study_name="trainer", storage=storage)
    return {
        "search_seconds": seconds,
        "total_seconds": time.perf_counter() - started,
        "best": best.objective,
        "params": best.hyperparameters,
        "states": [t.state.name.lower() for t in study.trials],
        "curve": _curve(study, search_started_wall=study.trials[0].datetime_start.timestamp()),
    }


def _curve(study, search_started_wall: float) -> list[tuple[float, float]]:
    """(seconds since the search started, best value so far) at each finished trial."""
    points, best = [], None
    done = [t for t in study.trials if t.datetime_complete and t.value is not None and t.state.name == "COMPLETE"]
    for trial in sorted(done, key=lambda t: t.datetime_complete):
        best = trial.value if best is None else max(best, trial.value)
        points.append((trial.datetime_complete.timestamp() - search_started_wall, best))
    return points


def bertfit_side(trials: int, train_rows: int) -> dict:
    import optuna

    out = Path(tempfile.mkdtemp()) / "sweep"
    base = ["sweep", "--model", "minilm", "--data", "sst2", "--max-train-samples", train_rows, "--seed", SEED]
    base += ["--eval-split", "validation", "--max-length", MAX_LENGTH, "--eval-every", "epoch", "--output", out]
    base += ["--trials", trials, "--space", "lr=1e-5..2e-4:log", "--space", "batch_size=16,32"]
    base += ["--space", "epochs=1..2", "--space", "warmup_ratio=0..0.1", "--pruner", "median"]
    started = time.perf_counter()
    _bertfit(*base, "--confirm", 0)
    search_seconds = time.perf_counter() - started
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    study = optuna.load_study(study_name="sweep", storage=storage)
    search = [t for t in study.trials if "confirms" not in t.user_attrs]
    best = max((t for t in search if t.value is not None and t.state.name == "COMPLETE"), key=lambda t: t.value)
    curve = _curve(study, search_started_wall=search[0].datetime_start.timestamp())
    confirm_started = time.perf_counter()
    _bertfit(*base, "--confirm", 1, "--seeds", 3)  # the same study, continued: the winner run with 2 more seeds
    confirm_seconds = time.perf_counter() - confirm_started
    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    runs = [
        r
        for r in rows
        if r["state"] == "complete" and (r["number"] == str(best.number) or r["kind"] == f"confirm of {best.number}")
    ]
    values = [float(r["accuracy"]) for r in runs]
    import statistics

    return {
        "search_seconds": search_seconds,
        "confirm_seconds": confirm_seconds,
        "best": best.value,
        "params": best.params,
        "states": [t.state.name.lower() for t in search],
        "confirmed_mean": statistics.fmean(values),
        "confirmed_std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "confirmed_seeds": len(values),
        "curve": curve,
        "folder": str(out),
    }


def _bertfit(*args) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bertfit", *map(str, args)], capture_output=True, text=True, env={**os.environ}
    )
    if done.returncode != 0:
        raise SystemExit(f"bertfit sweep failed:\n{done.stderr[-3000:]}")
    print(done.stdout, file=sys.stderr)


def side_file(side: str) -> Path:
    return REPO / "benchmarks" / "results" / f"sweep-{side}.json"


def run_side(side: str, trials: int, train_rows: int, reuse: bool = False) -> dict:
    if reuse:
        kept = json.loads(side_file(side).read_text())
        if (kept["trials"], kept["train"]) != (trials, train_rows):
            raise SystemExit(f"{side_file(side)} holds {kept['trials']} trials on {kept['train']} rows; run it again")
        return kept
    command = [sys.executable, __file__, "--side", side, "--trials", str(trials), "--train", str(train_rows)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{done.stderr[-3000:]}")
    result = {
        **json.loads(done.stdout.strip().splitlines()[-1]),
        "trials": trials,
        "train": train_rows,
        "measured": datetime.datetime.now().isoformat(timespec="minutes"),
    }
    side_file(side).parent.mkdir(parents=True, exist_ok=True)
    side_file(side).write_text(json.dumps(result) + "\n")
    return result


def plot(hf: dict, ours: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, side, color in (("Trainer.hyperparameter_search", hf, "tab:gray"), ("bertfit sweep", ours, "tab:blue")):
        if side["curve"]:
            x, y = zip(*side["curve"])  # from the first finished trial: no best exists before it
            axis.step(x, y, where="post", label=name, color=color, marker="o")
    axis.set(xlabel="seconds since the search started", ylabel="best validation accuracy so far", title="Search")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def report(hf: dict, ours: dict, trials: int, train_rows: int, command: str) -> str:
    from compare import machine, versions

    def states(side):
        return ", ".join(
            f"{side['states'].count(s)} {s}" for s in ("complete", "pruned", "fail") if s in side["states"]
        )

    speed = hf["search_seconds"] / ours["search_seconds"]
    lines = [
        f"### sweep: {datetime.date.today().isoformat()}",
        "",
        f"- machine: {machine()}; {versions()}",
        f"- command: `{command}`",
        f"- minilm on {train_rows:,} seeded SST-2 training sentences, validation on SST-2's 872; {trials} trials per "
        "side; space lr 1e-5..2e-4 (log), batch size {16, 32}, epochs {1, 2}, warmup ratio 0..0.1; TPE sampler seed "
        "42, median pruner (2 start-up trials), evaluation after each epoch, max_length 128. Each side as a user gets "
        "it: the Trainer in fp32, one trial at a time on both cores, as `hyperparameter_search` runs them; bertfit at "
        "its defaults: bf16 autocast where the CPU has it, and on a CPU two trials side by side, a core each (the "
        "sweep's default `--workers`). bertfit's first 10 trials are TPE's random start drawn once from seed 42 and "
        "queued (the Trainer's TPE draws the same ten); its later proposals come from each worker's TPE (seeds 43 and "
        "44).",
        "",
        "| | Trainer.hyperparameter_search | bertfit sweep |",
        "|---|---:|---:|",
        f"| search wall time | {hf['search_seconds']:.0f} s | {ours['search_seconds']:.0f} s ({speed:.2f}× faster) |",
        f"| measured | {hf['measured']} | {ours['measured']} |",
        f"| trials | {states(hf)} | {states(ours)} |",
        f"| best validation accuracy | {hf['best']:.4f} | {ours['best']:.4f} ({100 * (ours['best'] - hf['best']):+.2f} "
        "points) |",
        f"| best parameters | {json.dumps(hf['params'])} | {json.dumps(ours['params'])} |",
        f"| winner over {ours['confirmed_seeds']} seeds | | {ours['confirmed_mean']:.4f} ± {ours['confirmed_std']:.4f} "
        f"(confirmation {ours['confirm_seconds']:.0f} s) |",
        "",
        "![best so far against wall time](benchmarks/results/sweep.png)",
        "",
        "The Trainer's objective is its last evaluation's accuracy; bertfit's is its best evaluation's (the weights it "
        "keeps). The winner's mean over seeds is the number to quote: one seed's score moves by about the gaps "
        "between configurations on 872 sentences.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=["trainer", "bertfit"], help=argparse.SUPPRESS)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--train", type=int, default=3000, help="training sentences (a seeded subset of SST-2)")
    parser.add_argument("--no-write", action="store_true", help="print the section without appending it")
    parser.add_argument("--reuse", choices=["trainer"], help="report this side's last measurement, not a new one")
    args = parser.parse_args()
    if args.side:
        side = trainer_side if args.side == "trainer" else bertfit_side
        print(json.dumps(side(args.trials, args.train)))
        return
    command = "python benchmarks/sweep.py" + "".join(
        f" --{k} {v}"
        for k, v in (("trials", args.trials), ("train", args.train), ("reuse", args.reuse))
        if v != parser.get_default(k)
    )
    ours = run_side("bertfit", args.trials, args.train)
    hf = run_side("trainer", args.trials, args.train, reuse=args.reuse == "trainer")
    plot(hf, ours, REPO / "benchmarks" / "results" / "sweep.png")
    section = report(hf, ours, args.trials, args.train, command)
    print(section)
    if not args.no_write:
        with open(REPO / "BENCHMARKS.md", "a", encoding="utf-8") as handle:
            handle.write("\n" + section)


if __name__ == "__main__":
    main()
