"""Which examples to flag: AUM's own threshold (threshold samples, Pleiss et al. 2020) against cleanlab's confident
learning, which bertfit uses. #30's first idea, measured.

The paper moves N/(C+1) training examples into a fake class C+1, trains, and takes the 99th percentile of those
examples' area under the margin as the line under which a real example is called mislabeled: a margin an example
cannot beat is one no better than a label that is certainly wrong. It does this twice, with two disjoint sets of
threshold samples, so each example is judged in a run where it kept its label. This runs exactly that on
benchmarks/mislabeled.py's noisy data (same rows, flips and recipe), and scores the flagged set as that benchmark
does; bertfit's own list (one run, confident learning) is the reference row, from benchmarks/mislabeled_ensembles.py's
seed-42 run on the same folder when there is one.

    python benchmarks/mislabeled_threshold.py --scratch /tmp/ensembles         # SST-2 and TweetEval at 5%
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

RUNS, PERCENTILE = 2, 99


def prepare(name: str, noise: float, folder: Path, env: dict) -> None:
    """The noisy data, bertfit's one-run list (seed 42), and RUNS runs with their own threshold samples."""
    import mislabeled
    import pandas as pd
    from mislabeled_ensembles import linked_data

    if not (folder / "flipped.npy").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        flipped, _ = mislabeled.noisy(name, noise, folder)
        np.save(folder / "flipped.npy", flipped)
    train = pd.read_parquet(folder / "train.parquet")
    fake = int(train["label"].max()) + 1
    share = len(train) // (fake + 1)
    order = np.random.default_rng(mislabeled.SEED).permutation(len(train))
    runs = [(folder / "seed42", None)] + [
        (folder / f"threshold{r}", order[r * share : (r + 1) * share]) for r in range(RUNS)
    ]
    for sub, samples in runs:
        if samples is None:
            linked_data(sub, folder)
        else:
            sub.mkdir(parents=True, exist_ok=True)
            moved = train.copy()
            moved.loc[samples, "label"] = fake
            moved.to_parquet(sub / "train.parquet")
            linked_data(sub, folder, names=("validation.parquet",))
            np.save(sub / "samples.npy", samples)
        if not (sub / "sums.npz").is_file():
            command = [sys.executable, str(REPO / "benchmarks" / "mislabeled_ensembles.py"), "--record", str(sub), "42"]
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def run_facts(sub: Path) -> tuple[np.ndarray, np.ndarray, float, float]:
    sums = np.load(sub / "sums.npz")
    metrics = json.loads((sub / "run" / "metrics.json").read_text())
    aum = sums["final_margin"] / np.maximum(sums["final_seen"], 1)
    probabilities = sums["final_prob"] / np.maximum(sums["final_seen"], 1)[:, None]
    return aum, probabilities, metrics["validation"]["accuracy"], metrics["train"]["train_seconds"]


def scores(folder: Path) -> list[dict]:
    import mislabeled
    import pandas as pd
    from cleanlab.filter import find_label_issues

    flipped = np.load(folder / "flipped.npy")
    labels = pd.read_parquet(folder / "train.parquet")["label"].to_numpy()
    aum, probabilities, accuracy, seconds = run_facts(folder / "seed42")
    normalized = probabilities / probabilities.sum(1, keepdims=True)
    flagged = np.flatnonzero(find_label_issues(labels, normalized, filter_by="prune_by_noise_rate", n_jobs=1))
    rows = [
        {
            "flagged by": "cleanlab's confident learning, one run (bertfit's list)",
            **mislabeled.scored(flipped, flagged, flagged[np.argsort(aum[flagged], kind="stable")]),
            "accuracy": accuracy,
            "train_seconds": seconds,
        }
    ]
    negative = np.flatnonzero(aum < 0)
    rows.append(
        {
            "flagged by": "a margin below 0, one run",
            **mislabeled.scored(flipped, negative, negative[np.argsort(aum[negative], kind="stable")]),
            "accuracy": accuracy,
            "train_seconds": seconds,
        }
    )
    # Each example judged in the runs where it kept its label: its mean margin there against those runs' lines.
    total, lines, judged = np.zeros(len(labels)), np.zeros(len(labels)), np.zeros(len(labels))
    accuracies, spent = [], 0.0
    for r in range(RUNS):
        sub = folder / f"threshold{r}"
        margin, _, run_accuracy, run_seconds = run_facts(sub)
        samples = np.load(sub / "samples.npy")
        kept = np.ones(len(labels), dtype=bool)
        kept[samples] = False
        total[kept] += margin[kept]
        lines[kept] += np.percentile(margin[samples], PERCENTILE)
        judged[kept] += 1
        accuracies.append(run_accuracy)
        spent += run_seconds
    mean = total / np.maximum(judged, 1)
    below = np.flatnonzero((judged > 0) & (mean <= lines / np.maximum(judged, 1)))
    rows.append(
        {
            "flagged by": f"AUM's threshold samples ({RUNS} runs, {PERCENTILE}th percentile)",
            **mislabeled.scored(flipped, below, below[np.argsort(mean[below], kind="stable")]),
            "accuracy": float(np.mean(accuracies)),
            "train_seconds": spent,
        }
    )
    return rows


def main() -> None:
    from mislabeled import SCORED, publish, study_options, study_table

    args = study_options(__doc__).parse_args()
    columns = [
        ("flagged by", "flagged by", ""),
        ("flagged", "flagged", "d"),
        *SCORED,
        ("validation accuracy", "accuracy", ".4f"),
        ("training s", "train_seconds", ".0f"),
    ]
    lines = study_table(args, "bertfit-threshold-", prepare, scores, columns)
    about = (
        f"benchmarks/mislabeled.py's data ({args.noise:.0%} of 4,000 labels flipped, seed 7) and recipe (minilm, "
        "3 epochs, max_length 64, seed 42); threshold samples: N/(C+1) examples moved to a fake class in each of "
        "two runs, disjoint; validation accuracy: the run's (the mean of the two threshold runs)"
    )
    publish("Mislabeled examples: AUM's threshold samples against confident learning", about, lines, args.no_write)


if __name__ == "__main__":
    main()
