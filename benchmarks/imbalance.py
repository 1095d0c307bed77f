"""Class weights on imbalanced data: an SST-2 training subset made 95/5 (seeded: 3,800 positive, 200 negative),
minilm, trained with and without `class_weights: balanced`; scored on SST-2's own (balanced) validation split, where
recall of the rare class shows what the weights change.

    python benchmarks/imbalance.py          # appends a table to BENCHMARKS.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import sections
import yaml

REPO = Path(__file__).resolve().parents[1]
MAJORITY, MINORITY, SEED = 3800, 200, 0
RECIPE = ["--model", "minilm", "--epochs", "2", "--batch-size", "32", "--lr", "5e-5", "--max-length", "64"]


def imbalanced_data(folder: Path) -> Path:
    import pandas as pd

    sys.path.insert(0, str(REPO))
    from bertfit.data import sources

    splits = sources.load_splits("sst2")
    train = splits.frames["train"]
    positive = train[train["label"] == 1].sample(MAJORITY, random_state=SEED)
    negative = train[train["label"] == 0].sample(MINORITY, random_state=SEED)
    subset = pd.concat([positive, negative]).sample(frac=1, random_state=SEED)
    subset.to_csv(folder / "train.csv", index=False)
    splits.frames["validation"].to_csv(folder / "validation.csv", index=False)
    return folder


def run(data: Path, out: Path, weights: str | None) -> dict:
    args = [sys.executable, "-m", "bertfit", "train", "--data", str(data), "--output", str(out), *RECIPE]
    args += ["--no-find-mislabeled"] + (["--class-weights", weights] if weights else [])
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    validation = json.loads((out / "metrics.json").read_text())["validation"]
    matrix = validation["confusion_matrix"]
    recalls = [row[i] / sum(row) for i, row in enumerate(matrix)]
    precisions = [matrix[i][i] / max(1, sum(row[i] for row in matrix)) for i in range(len(matrix))]
    f1s = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precisions, recalls)]
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())["class_weights"]
    return {
        "weights": weights or "none",
        "resolved": ", ".join(f"{w:g}" for w in resolved) if resolved else "–",
        "accuracy": validation["accuracy"],
        "minority_recall": recalls[0],
        "majority_recall": recalls[1],
        "macro_f1": sum(f1s) / len(f1s),
    }


def main() -> None:
    os.environ.setdefault("BERTFIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory(prefix="bertfit-imbalance-") as work:
        data = imbalanced_data(Path(work))
        results = [run(data, Path(work) / f"run-{w or 'none'}", w) for w in (None, "balanced")]
    for result in results:
        print(json.dumps(result))

    lines = [
        f"- machine: {sections.machine()}",
        f"- command: `python benchmarks/imbalance.py`: SST-2 train subset of {MAJORITY:,} positive and {MINORITY:,} "
        f"negative (seed {SEED}), `{' '.join(RECIPE)}`; scored on SST-2 validation (428 negative, 444 positive)",
        "",
        "| class_weights | resolved weights (negative, positive) | accuracy | negative (minority) recall "
        "| positive recall "
        "| macro F1 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['weights']} | {r['resolved']} | {r['accuracy']:.4f} | {r['minority_recall']:.4f} | "
        f"{r['majority_recall']:.4f} | {r['macro_f1']:.4f} |"
        for r in results
    ]
    sections.append("class weights on 95/5 data", lines)


if __name__ == "__main__":
    main()
