"""Small data, side by side: bertfit (fine-tuning, and its SetFit method) against the `setfit` library and a frozen
probe, on balanced subsets of SST-2 and TweetEval sentiment, scored on each full validation split.

    python benchmarks/small_data.py                       # 64, 256 and 1,024 examples, 3 seeds, all methods
    python benchmarks/small_data.py --sizes 64 --seeds 1  # a quick look

Methods (each cell in its own process, 2 threads, minilm):
- probe: sentence-transformers' mean-pooled embeddings of the frozen model + scikit-learn LogisticRegression
  (neither is bertfit's code).
- setfit: the `setfit` library's defaults (batch 16, one pass over its "oversampling" pairs, body lr 2e-5, logistic
  regression head), with its pair count capped at PAIR_BUDGET where its default would take hours on 2 cores (1,024
  examples give 523,776 unique pairs); the cap is written in the table.
- finetune / bertfit setfit: `bertfit train --method finetune` (plain fine-tuning with bertfit's defaults: at least
  400 steps with warmup on little data) and `--method setfit`; finetune-3-epochs: fine-tuning as it was before
  that rule, 3 epochs and no warmup (`--epochs 3`), the "today's" the targets are counted from. `method: auto`,
  the default, resolves to one of the two by the number of training examples, so the "bertfit default" row of the
  report is the column the rule picks at that size.

Each cell's result is kept in benchmarks/results/small_data.jsonl (method, data, size, seed, accuracy, seconds), so
a run interrupted goes on where it stopped; --fresh recomputes. The report (table and plot) goes to BENCHMARKS.md
and benchmarks/results/small_data.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "small_data.jsonl"
PLOT = REPO / "benchmarks" / "results" / "small_data.png"
DATA = Path(os.environ.get("BERTFIT_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = {"sst2": "sentence", "tweet_sentiment": "text"}
METHODS = ("probe", "setfit", "finetune-3-epochs", "finetune", "bertfit-setfit")
PAIR_BUDGET = 2_560  # SetFit's own count for 64 examples at num_iterations=20 (20 x 64 x 2 pairs)


def subset(name: str, size: int, seed: int):
    """`size` training examples, as many of each class (seeded), and the whole validation split."""
    import pandas as pd

    column = DATASETS[name]
    train = pd.read_parquet(DATA / name / "train.parquet")
    validation = pd.read_parquet(DATA / name / "validation.parquet")
    classes = sorted(train["label"].unique())
    per_class = size // len(classes)
    chosen = pd.concat([train[train["label"] == c].sample(per_class, random_state=seed) for c in classes])
    chosen = chosen.sample(frac=1, random_state=seed)
    rename = {column: "text"}
    return (
        chosen[[column, "label"]].rename(columns=rename).reset_index(drop=True),
        validation[[column, "label"]].rename(columns=rename).reset_index(drop=True),
    )


def probe_cell(train, validation, seed: int) -> dict:
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    from bertfit.models import resolve_model

    encoder = SentenceTransformer(resolve_model("minilm"), device="cpu")
    started = time.perf_counter()
    head = LogisticRegression(max_iter=1000, random_state=seed).fit(encoder.encode(list(train["text"])), train["label"])
    predictions = head.predict(encoder.encode(list(validation["text"])))
    return {
        "accuracy": float((predictions == validation["label"].to_numpy()).mean()),
        "seconds": time.perf_counter() - started,
    }


def setfit_cell(train, validation, seed: int) -> dict:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from setfit.sampler import ContrastiveDataset

    from bertfit.models import resolve_model

    pairs = len(ContrastiveDataset(list(train["text"]), list(train["label"]), multilabel=False))
    capped = pairs > PAIR_BUDGET
    args = TrainingArguments(seed=seed, max_steps=PAIR_BUDGET // 16 if capped else -1, report_to="none")
    model = SetFitModel.from_pretrained(resolve_model("minilm"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # the library's Trainer writes checkpoints to ./checkpoints
        Trainer(model=model, args=args, train_dataset=Dataset.from_pandas(train)).train()
    predictions = model.predict(list(validation["text"])).numpy()
    return {
        "accuracy": float((predictions == validation["label"].to_numpy()).mean()),
        "seconds": time.perf_counter() - started,
        "pairs": PAIR_BUDGET if capped else pairs,
        "default_pairs": pairs,
    }


def bertfit_cell(train, validation, seed: int, method: str, *extra: str) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        data.mkdir()
        train.to_parquet(data / "train.parquet")
        validation.to_parquet(data / "validation.parquet")
        out = Path(scratch) / "run"
        command = [sys.executable, "-m", "bertfit", "train", "--model", "minilm", "--data", str(data)]
        command += ["--output", str(out), "--seed", str(seed), "--method", method, "--no-probe"]
        command += ["--set", "find_mislabeled=false", *extra]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        metrics = json.loads((out / "metrics.json").read_text())
    return {
        "accuracy": metrics["validation"]["accuracy"],
        "seconds": seconds,
        "train_seconds": metrics["train"]["train_seconds"],
    }


def cell(method: str, name: str, size: int, seed: int) -> dict:
    import torch

    torch.set_num_threads(2)
    train, validation = subset(name, size, seed)
    if method == "probe":
        return probe_cell(train, validation, seed)
    if method == "setfit":
        return setfit_cell(train, validation, seed)
    if method == "finetune-3-epochs":
        return bertfit_cell(train, validation, seed, "finetune", "--epochs", "3")
    return bertfit_cell(train, validation, seed, "setfit" if method == "bertfit-setfit" else "finetune")


def load_results() -> dict:
    results = {}
    if RESULTS.is_file():
        for line in RESULTS.read_text().splitlines():
            row = json.loads(line)
            results[(row["method"], row["data"], row["size"], row["seed"])] = row
    return results


def compute(methods, names, sizes, seeds, fresh: bool) -> dict:
    results = {} if fresh else load_results()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        for size in sizes:
            for seed in seeds:
                for method in methods:
                    key = (method, name, size, seed)
                    if key in results:
                        continue
                    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
                    done = subprocess.run(
                        [sys.executable, __file__, "--cell", method, name, str(size), str(seed)],
                        capture_output=True,
                        text=True,
                        env=env,
                    )
                    if done.returncode != 0:
                        sys.exit(f"{method} {name} {size} seed {seed} failed:\n{done.stderr[-3000:]}")
                    line = done.stdout.strip().splitlines()[-1]
                    row = {"method": method, "data": name, "size": size, "seed": seed, **json.loads(line)}
                    results[key] = row
                    with open(RESULTS, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    return results


def auto_method(size: int) -> str:
    """The method bertfit's default (`method: auto`) resolves to for `size` training examples."""
    from bertfit.engine.setup import auto_method as rule

    return "bertfit-setfit" if rule(size, few_shot=True) == "setfit" else "finetune"


def summary(results: dict, method: str, name: str, size: int, seeds) -> tuple[float, float, float] | None:
    rows = [results[(method, name, size, s)] for s in seeds if (method, name, size, s) in results]
    if not rows:
        return None
    scores = [r["accuracy"] for r in rows]
    spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
    return statistics.mean(scores), spread, statistics.mean(r["seconds"] for r in rows), len(rows)


def report(results: dict, names, sizes, seeds, command: str) -> list[str]:
    from sections import machine

    labels = {
        "probe": "frozen probe (sentence-transformers + LogisticRegression)",
        "setfit": f"SetFit library defaults (pairs capped at {PAIR_BUDGET:,})",
        "finetune-3-epochs": "bertfit --method finetune --epochs 3 (today's fine-tuning)",
        "finetune": "bertfit --method finetune (at least 400 steps, warmup)",
        "bertfit-setfit": "bertfit --method setfit",
    }
    lines = [
        f"Machine: {machine()}. Command: `{command}`. minilm; balanced training subsets drawn per seed; accuracy on "
        f"the full validation split (SST-2 872, TweetEval 2,000); mean ± std over seeds {list(seeds)}; seconds per "
        "run, wall, including loading.",
        "",
        "| data | examples | method | accuracy | seconds |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        for size in sizes:
            default = auto_method(size)
            for method in METHODS:
                value = summary(results, method, name, size, seeds)
                if value is None:
                    continue
                mean, spread, seconds, count = value
                tag = " **(bertfit's default)**" if method == default else ""
                short = f" (n={count})" if count < len(seeds) else ""
                lines.append(
                    f"| {name} | {size:,} | {labels[method]}{tag} | {mean:.4f} ± {spread:.4f}{short} | {seconds:.0f} |"
                )
    lines += ["", "The targets, per row (bertfit's default against each; points of accuracy, means over seeds):", ""]
    for name in names:
        for size in sizes:
            means = {m: summary(results, m, name, size, seeds) for m in METHODS}
            default = means[auto_method(size)]
            if default is None or means["setfit"] is None or means["probe"] is None:
                continue
            line = (
                f"- {name} {size:,}: default − SetFit {100 * (default[0] - means['setfit'][0]):+.1f}, "
                f"default − probe {100 * (default[0] - means['probe'][0]):+.1f}"
            )
            if means["finetune-3-epochs"] is not None:
                line += f", default − today's fine-tuning {100 * (default[0] - means['finetune-3-epochs'][0]):+.1f}"
            lines.append(line)
    return lines


def plot(results: dict, names, sizes, seeds) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names):
        for method in METHODS:
            points = [(size, summary(results, method, name, size, seeds)) for size in sizes]
            points = [(size, value) for size, value in points if value is not None]
            if points:
                axis.errorbar(
                    [p[0] for p in points],
                    [p[1][0] for p in points],
                    yerr=[p[1][1] for p in points],
                    marker="o",
                    capsize=3,
                    label=method,
                )
        axis.set_xscale("log", base=2)
        axis.set_xlabel("training examples")
        axis.set_ylabel("validation accuracy")
        axis.set_title(name)
        axis.legend()
    figure.tight_layout()
    figure.savefig(PLOT, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", nargs=4, metavar=("METHOD", "DATA", "SIZE", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--fresh", action="store_true", help="recompute every cell")
    parser.add_argument("--no-report", action="store_true", help="compute the cells only")
    parser.add_argument("--cached", action="store_true", help="report the cells computed so far, compute none")
    parser.add_argument("--remark", default="", help="a sentence for the report on how the cells ran")
    args = parser.parse_args()
    if args.cell:
        method, name, size, seed = args.cell
        print(json.dumps(cell(method, name, int(size), int(seed))))
        return
    seeds = list(range(args.seeds))
    results = load_results() if args.cached else compute(args.methods, args.data, args.sizes, seeds, args.fresh)
    if args.no_report:
        return
    sys.path.insert(0, str(REPO / "benchmarks"))
    from sections import append

    plot(results, args.data, args.sizes, seeds)
    command = "python benchmarks/small_data.py " + " ".join(sys.argv[1:])
    lines = report(results, args.data, args.sizes, seeds, command)
    title = "Small data: bertfit against SetFit and a frozen probe"
    append(title, [*lines, *(["", args.remark] if args.remark else [])])


if __name__ == "__main__":
    main()
