"""How well bertfit finds mislabeled training examples, side by side with cleanlab, and what fixing them is worth.

A seeded share of the labels of 4,000 training examples is flipped (to another class at random; for go_emotions,
multi-label, one of the example's labels is dropped), all-MiniLM-L6-v2 is trained on them with bertfit's
defaults, and the list bertfit writes (mislabeled.jsonl, most likely first) is scored against the rows made wrong.
Beside it, in the same run:
- cleanlab (`find_label_issues`, its defaults, ranked by its label quality scores; its multi-label module for
  go_emotions) on out-of-fold
  probabilities of (a) a logistic regression on the frozen model's sentence embeddings (sentence-transformers,
  5 folds) and (b) 5-fold fine-tuned minilm (five bertfit runs, each scoring the fold it did not train on);
- the cost: the same bertfit run with `find_mislabeled: false`;
- what a review is worth: the run retrained with its top-k suggestions accepted (`--corrections`, the decisions file
  `bertfit review` writes), against the noisy run and a run on the clean labels.

    python benchmarks/mislabeled.py                  # SST-2, TweetEval sentiment, go_emotions; 5% and 10% noise
    python benchmarks/mislabeled.py --data sst2 --noise 0.05

Each cell's result is kept in benchmarks/results/mislabeled.jsonl, so an interrupted run goes on where it stopped;
--fresh recomputes. k is the number of examples made wrong; precision@k counts them among the k ranked first.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "mislabeled.jsonl"
DATA = Path(os.environ.get("BERTFIT_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = {"sst2": "sentence", "tweet_sentiment": "text", "go_emotions": "text"}
MULTI_LABEL = {"go_emotions"}
METHODS = ("bertfit", "bertfit-off", "clean", "cleanlab-embeddings", "cleanlab-5fold")
ROWS, SEED, FOLDS = 4_000, 7, 5
RECIPE = ["--model", "minilm", "--seed", "42", "--max-length", "64", "--method", "finetune", "--no-probe"]


def noisy(name: str, noise: float, folder: Path) -> tuple[np.ndarray, list]:
    """Writes train.parquet (a seeded share of its examples mislabeled: the label flipped to another class, or for
    a multi-label set, one of its labels dropped) and validation.parquet into `folder`; returns the rows made wrong
    and the clean labels."""
    import pandas as pd

    column = DATASETS[name]
    train = pd.read_parquet(DATA / name / "train.parquet").sample(ROWS, random_state=SEED).reset_index(drop=True)
    validation = pd.read_parquet(DATA / name / "validation.parquet")
    rng = np.random.default_rng(SEED)
    label = "labels" if name in MULTI_LABEL else "label"
    clean = [list(value) if name in MULTI_LABEL else value for value in train[label]]
    if name in MULTI_LABEL:
        candidates = np.flatnonzero([len(value) > 0 for value in clean])
        wrong = np.sort(rng.choice(candidates, int(ROWS * noise), replace=False))
        noisy_sets = list(clean)
        for row in wrong:
            kept = list(clean[row])
            kept.pop(rng.integers(len(kept)))
            noisy_sets[row] = kept
        train[label] = noisy_sets
    else:
        wrong = np.sort(rng.choice(ROWS, int(ROWS * noise), replace=False))
        classes = np.unique(train[label])
        for row in wrong:
            others = classes[classes != clean[row]]
            train.loc[row, label] = others[rng.integers(len(others))]
    rename = {column: "text"}
    train[[column, label]].rename(columns=rename).to_parquet(folder / "train.parquet")
    validation[[column, label]].rename(columns=rename).to_parquet(folder / "validation.parquet")
    return wrong, clean


def targets(train) -> tuple[object, list, np.ndarray]:
    """The given labels as cleanlab takes them (class ids, or lists of label ids), the classes in order, and a
    0/1 (or class id) array for scikit-learn."""
    if "labels" in train.columns:
        classes = sorted({name for names in train["labels"] for name in names})
        index = {name: i for i, name in enumerate(classes)}
        given = [[index[name] for name in names] for names in train["labels"]]
        matrix = np.zeros((len(given), len(classes)), dtype=int)
        for row, ids in enumerate(given):
            matrix[row, ids] = 1
        return given, classes, matrix
    labels = train["label"].to_numpy()
    classes = sorted(np.unique(labels).tolist())
    return labels, classes, labels


def bertfit_runner(recipe: list[str]):
    """`bertfit train` of a recipe on a data folder, as a function of the data, the output and extra options; it
    returns the validation score of the kept weights (under `accuracy`, whichever the metric) and the seconds."""

    def run(data: Path, out: Path, *extra: str) -> dict:
        command = [sys.executable, "-m", "bertfit", "train", *recipe, "--data", str(data), "--output", str(out), *extra]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        metrics = json.loads((out / "metrics.json").read_text())
        metric = metrics["metric_for_best"]
        return {
            "accuracy": metrics["validation"][metric],
            "metric": metric,
            "train_seconds": metrics["train"]["train_seconds"],
            "seconds": time.perf_counter() - started,
        }

    return run


bertfit = bertfit_runner(RECIPE)


# scored()'s measures as a study's table shows them (study_table's columns)
SCORED = [
    ("precision", "precision", ".3f"),
    ("recall", "recall", ".3f"),
    ("F1", "f1", ".3f"),
    ("precision@k", "precision_at_k", ".3f"),
]


def scored(flipped: np.ndarray, flagged, ranked) -> dict:
    """Precision, recall and F1 of the flagged set, and precision among the k ranked first (k = flips)."""
    truth, flagged = set(flipped.tolist()), {int(row) for row in flagged}
    hits = len(truth & flagged)
    precision, recall = hits / max(len(flagged), 1), hits / len(truth)
    return {
        "flagged": len(flagged),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "precision_at_k": len(truth & {int(row) for row in ranked[: len(truth)]}) / len(truth),
    }


def accept_first(found: list[dict], k: int, path: Path) -> Path:
    """A decisions file, as `bertfit review` writes it, that accepts the suggestions of the first k listed."""
    from bertfit.runfiles import Decision, text_hash

    with open(path, "w", encoding="utf-8") as handle:
        for suspect in found[:k]:
            decision = Decision(
                row=suspect["row"],
                text_sha256=text_hash(suspect["text"]),
                label=suspect["label"],
                action="relabel",
                new_label=suspect["suspected"],
                time=time.time(),
            )
            handle.write(decision.model_dump_json() + "\n")
    return path


def bertfit_cell(data: Path, scratch: Path, flipped: np.ndarray) -> dict:
    """bertfit's own list, then the run retrained with its top-k suggestions accepted as a reviewer would."""
    run = bertfit(data, scratch / "run")
    found = [json.loads(line) for line in (scratch / "run" / "mislabeled.jsonl").read_text().splitlines()]
    result = {**run, **scored(flipped, [s["row"] for s in found], [s["row"] for s in found])}
    decisions = accept_first(found, len(flipped), scratch / "decisions.jsonl")
    result["retrained_accuracy"] = bertfit(data, scratch / "retrained", "--corrections", str(decisions))["accuracy"]
    return result


def cleanlab_rows(flipped: np.ndarray, labels, probabilities: np.ndarray) -> dict:
    """cleanlab's defaults: its multi-label filter and scores where the labels are sets."""
    if isinstance(labels, list):
        from cleanlab.multilabel_classification.filter import find_label_issues
        from cleanlab.multilabel_classification.rank import get_label_quality_scores

        flagged = np.flatnonzero(find_label_issues(labels, probabilities))
        ranked = np.argsort(get_label_quality_scores(labels, probabilities), kind="stable")
    else:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        flagged = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
        ranked = np.argsort(get_label_quality_scores(labels, probabilities, method="self_confidence"), kind="stable")
    return scored(flipped, flagged, ranked)


def embeddings_cell(data: Path, flipped: np.ndarray) -> dict:
    import pandas as pd
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier

    from bertfit.models import resolve_model

    train = pd.read_parquet(data / "train.parquet")
    labels, _, y = targets(train)
    started = time.perf_counter()
    vectors = SentenceTransformer(resolve_model("minilm"), device="cpu").encode(list(train["text"]), batch_size=64)
    model = LogisticRegression(max_iter=1000)
    if isinstance(labels, list):
        model = OneVsRestClassifier(model)
    probabilities = cross_val_predict(model, vectors, y, cv=FOLDS, method="predict_proba")
    return {**cleanlab_rows(flipped, labels, probabilities), "seconds": time.perf_counter() - started}


def five_fold_cell(data: Path, scratch: Path, flipped: np.ndarray) -> dict:
    """Out-of-fold probabilities from FOLDS bertfit runs, each scoring the fold it left out through
    `transformers.pipeline()` (every class's probability; a sigmoid per label for multi-label)."""
    import pandas as pd
    from sklearn.model_selection import KFold, StratifiedKFold
    from transformers import pipeline

    train = pd.read_parquet(data / "train.parquet")
    labels, classes, y = targets(train)
    folds = (
        KFold(FOLDS, shuffle=True, random_state=SEED)
        if isinstance(labels, list)
        else StratifiedKFold(FOLDS, shuffle=True, random_state=SEED)
    )
    probabilities = np.zeros((len(train), len(classes)))
    started, train_seconds = time.perf_counter(), 0.0
    for fold, (fit_rows, held_rows) in enumerate(folds.split(train, y)):
        folder = scratch / f"fold{fold}"
        folder.mkdir()
        train.iloc[fit_rows].to_parquet(folder / "train.parquet")
        (folder / "validation.parquet").symlink_to(data / "validation.parquet")
        train_seconds += bertfit(folder, folder / "run", "--set", "find_mislabeled=false")["train_seconds"]
        classify = pipeline("text-classification", model=str(folder / "run"), top_k=None, device="cpu")
        held = classify(list(train["text"].iloc[held_rows]), batch_size=64, truncation=True, max_length=64)
        for row, scores in zip(held_rows, held, strict=True):
            by_label = {score["label"]: score["score"] for score in scores}
            probabilities[row] = [by_label.get(str(c), 0.0) for c in classes]
    return {
        **cleanlab_rows(flipped, labels, probabilities),
        "seconds": time.perf_counter() - started,
        "train_seconds": train_seconds,
    }


def cell(method: str, name: str, noise: float) -> dict:
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="bertfit-noise-") as root:
        scratch, data = Path(root), Path(root) / "data"
        data.mkdir()
        flipped, clean = noisy(name, noise, data)
        result: dict = {"flips": len(flipped)}
        if method == "bertfit":
            result.update(bertfit_cell(data, scratch, flipped))
        elif method == "bertfit-off":
            result.update(bertfit(data, scratch / "run", "--set", "find_mislabeled=false"))
        elif method == "clean":
            import pandas as pd

            train = pd.read_parquet(data / "train.parquet")
            train[train.columns[-1]] = clean
            train.to_parquet(data / "train.parquet")
            result.update(bertfit(data, scratch / "run", "--set", "find_mislabeled=false"))
        elif method == "cleanlab-embeddings":
            result.update(embeddings_cell(data, flipped))
        else:
            result.update(five_fold_cell(data, scratch, flipped))
    return result


def compute(methods, names, noises, fresh: bool) -> dict:
    results = {}
    if RESULTS.is_file() and not fresh:
        for line in RESULTS.read_text().splitlines():
            row = json.loads(line)
            results[(row["method"], row["data"], row["noise"])] = row
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        for noise in noises:
            for method in methods:
                if (method, name, noise) in results:
                    continue
                env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
                done = subprocess.run(
                    [sys.executable, __file__, "--cell", method, name, str(noise)],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                if done.returncode != 0:
                    sys.exit(f"{method} {name} {noise} failed:\n{done.stderr[-3000:]}")
                row = {
                    "method": method,
                    "data": name,
                    "noise": noise,
                    **json.loads(done.stdout.strip().splitlines()[-1]),
                }
                results[(method, name, noise)] = row
                with open(RESULTS, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    return results


TITLES = {
    "bertfit": "bertfit (default)",
    "cleanlab-embeddings": "cleanlab on frozen embeddings + logistic regression (5-fold)",
    "cleanlab-5fold": "cleanlab on 5-fold fine-tuned minilm",
}


def report(results: dict, names, noises, command: str) -> list[str]:
    from sections import machine

    lines = [
        f"- machine: {machine()}",
        f"- command: `{command}`: all-MiniLM-L6-v2, {ROWS:,} seeded training examples (seed {SEED}) with the stated "
        "share made wrong (a label flipped to another class at random; go_emotions: one of an example's labels "
        "dropped), bertfit's default recipe (3 epochs, batch 16, lr 5e-5) at max_length 64; k = the examples made "
        "wrong; seconds are training seconds (bertfit: with the detection, and without it in the same recipe)",
        "",
        "| data | noise (k) | detector | flagged | precision | recall | F1 | precision@k | seconds |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        for noise in noises:
            for method in TITLES:
                row = results.get((method, name, noise))
                if row is None:
                    continue
                seconds = row.get("train_seconds", row["seconds"])
                if method == "bertfit":
                    off = results.get(("bertfit-off", name, noise))
                    extra = f"{seconds:.0f} (without: {off['train_seconds']:.0f})" if off else f"{seconds:.0f}"
                else:
                    extra = f"{seconds:.0f}"
                lines.append(
                    f"| {name} | {noise:.0%} ({row['flips']}) | {TITLES[method]} | {row['flagged']} | "
                    f"{row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['precision_at_k']:.3f} | "
                    f"{extra} |"
                )
    lines += [
        "",
        "Fixing what the list shows (validation accuracy; micro-F1 for go_emotions): the noisy run, the same run "
        "retrained with its top-k "
        "suggestions accepted (`--corrections`, as `bertfit review` writes them), and the run on the clean labels.",
        "",
        "| data | noise | noisy | retrained after review | clean labels |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        for noise in noises:
            ours, off, clean = (results.get((m, name, noise)) for m in ("bertfit", "bertfit-off", "clean"))
            if ours and off and clean:
                lines.append(
                    f"| {name} | {noise:.0%} | {off['accuracy']:.4f} | {ours['retrained_accuracy']:.4f} | "
                    f"{clean['accuracy']:.4f} |"
                )
    overheads = [
        results[("bertfit", n, x)]["train_seconds"] / results[("bertfit-off", n, x)]["train_seconds"] - 1
        for n in names
        for x in noises
        if ("bertfit", n, x) in results and ("bertfit-off", n, x) in results
    ]
    if overheads:
        lines += [
            "",
            f"Training time with the detection on, against off: {statistics.mean(overheads):+.1%} on average.",
        ]
    lines += [
        "",
        "Against the targets (precision@k at least 0.6 at 5% noise and 0.7 at 10%; F1 at least the best "
        "cleanlab row's):",
        "",
    ]
    for name in names:
        for noise in noises:
            ours = results.get(("bertfit", name, noise))
            theirs = [results[(m, name, noise)] for m in TITLES if m != "bertfit" and (m, name, noise) in results]
            if ours is None or not theirs:
                continue
            wanted = 0.6 if noise <= 0.05 else 0.7
            best = max(row["f1"] for row in theirs)
            lines.append(
                f"- {name} {noise:.0%}: precision@k {ours['precision_at_k']:.3f} "
                f"({'met' if ours['precision_at_k'] >= wanted else 'not met'}, target {wanted}); "
                f"F1 {ours['f1']:.3f} against cleanlab's best {best:.3f} ({'met' if ours['f1'] >= best else 'not met'})"
            )
    return lines


# ---------------------------------------------------------------- what the studies of bertfit's list share
# (mislabeled_signals.py, mislabeled_ensembles.py, mislabeled_threshold.py: other signals, pools and thresholds on
# this benchmark's noisy data)


def study_options(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["sst2", "tweet_sentiment"])
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--scratch", help="keep the runs here (a run whose sums.npz is there is not run again)")
    parser.add_argument("--no-write", action="store_true", help="print the section without appending it")
    return parser


def study_table(args, prefix: str, prepare, scores, columns: list[tuple[str, str, str]]) -> list[str]:
    """The study's table over --data: each data set's runs made in SCRATCH/NAME-NOISE by `prepare(name, noise,
    folder, env)` (--scratch keeps them; else a new temporary folder), then a row per entry of `scores(folder)`,
    printed as JSON as it comes. `columns`: (title, key, format) after the data set's name; format "" is text."""
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix=prefix))
    env = {**os.environ, "BERTFIT_DATA_DIR": str(DATA), "OMP_NUM_THREADS": "2"}
    lines = [
        "| data | " + " | ".join(title for title, _, _ in columns) + " |",
        "|---|" + "|".join("---" if fmt == "" else "---:" for _, _, fmt in columns) + "|",
    ]
    for name in args.data:
        folder = scratch / f"{name}-{args.noise}"
        prepare(name, args.noise, folder, env)
        for row in scores(folder):
            print(json.dumps({"data": name, **row}), flush=True)
            lines.append(f"| {name} | " + " | ".join(format(row[key], fmt) for _, key, fmt in columns) + " |")
    return lines


def publish(title: str, about: str, lines: list[str], no_write: bool) -> None:
    """The section: the machine, the command that ran (with `about` after it), the table; appended unless no_write."""
    from sections import append, machine

    command = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    header = [f"- machine: {machine()}", f"- command: `{command}`: {about}", ""]
    if no_write:
        print("\n".join(header + lines))
    else:
        append(title, header + lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", nargs=3, metavar=("METHOD", "DATA", "NOISE"), help=argparse.SUPPRESS)
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.10])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--fresh", action="store_true", help="recompute every cell")
    parser.add_argument("--no-report", action="store_true", help="compute the cells only")
    parser.add_argument("--cached", action="store_true", help="report the cells computed so far, compute none")
    args = parser.parse_args()
    if args.cell:
        method, name, noise = args.cell
        print(json.dumps(cell(method, name, float(noise))))
        return
    os.environ.setdefault("BERTFIT_DATA_DIR", str(DATA))
    results = compute([] if args.cached else args.methods, args.data, args.noise, args.fresh)
    if args.no_report:
        return
    sys.path.insert(0, str(REPO / "benchmarks"))
    from sections import append

    command = "python benchmarks/mislabeled.py " + " ".join(sys.argv[1:])
    append("Mislabeled examples: bertfit against cleanlab", report(results, args.data, args.noise, command))


if __name__ == "__main__":
    main()
