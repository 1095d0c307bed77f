"""Long documents: IMDB reviews (a seeded subset) with minilm cut at 128 tokens, so that most reviews are longer
than the model reads: truncation head, head+tail and windows (mean of the window logits) side by side, scored on a
seeded subset of IMDB's test split.

    python benchmarks/long_documents.py          # appends a table to BENCHMARKS.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import sections

REPO = Path(__file__).resolve().parents[1]
TRAIN, TEST, SEED = 3000, 2000, 0
RECIPE = ["--model", "minilm", "--epochs", "1", "--batch-size", "16", "--lr", "5e-5", "--max-length", "128"]
MODES = ("head", "head+tail", "windows")


def imdb_subset(folder: Path) -> Path:
    """IMDB is sorted by label: shuffled (seeded) before taking the subsets."""
    sys.path.insert(0, str(REPO))
    from bertfit.data import sources

    splits = sources.load_splits("imdb")
    splits.frames["train"].sample(TRAIN, random_state=SEED).to_parquet(folder / "train.parquet")
    splits.frames["test"].sample(TEST, random_state=SEED).to_parquet(folder / "validation.parquet")
    return folder


def run(data: Path, out: Path, truncation: str) -> dict:
    args = [sys.executable, "-m", "bertfit", "train", "--data", str(data), "--output", str(out), *RECIPE]
    args += ["--truncation", truncation, "--no-find-mislabeled"]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    metrics = json.loads((out / "metrics.json").read_text())
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    tokens = json.loads((out / "data_profile.json").read_text())["splits"]["train"]["tokens"]
    return {
        "truncation": truncation,
        "accuracy": metrics["validation"]["accuracy"],
        "f1": metrics["validation"]["f1"],
        "longer_share": tokens["truncated_share"],
        "train_features": start["features"]["train"],
        "train_seconds": metrics["train"]["train_seconds"],
        "eval_seconds": metrics["validation"]["runtime"],
    }


def main() -> None:
    os.environ.setdefault("BERTFIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory(prefix="bertfit-long-") as work:
        data = imdb_subset(Path(work))
        results = [run(data, Path(work) / f"run-{mode.replace('+', '-')}", mode) for mode in MODES]
    for result in results:
        print(json.dumps(result))

    lines = [
        f"- machine: {sections.machine()}",
        f"- command: `python benchmarks/long_documents.py`: IMDB train subset of {TRAIN:,} and test subset of "
        f"{TEST:,} reviews (seed {SEED}), `{' '.join(RECIPE)}`; {results[0]['longer_share']:.1%} of the training "
        "reviews are longer than 128 tokens",
        "",
        "| truncation | accuracy | F1 | training features | train s | eval s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['truncation']} | {r['accuracy']:.4f} | {r['f1']:.4f} | {r['train_features']:,} | "
        f"{r['train_seconds']:.1f} | {r['eval_seconds']:.1f} |"
        for r in results
    ]
    sections.append("long documents", lines)


if __name__ == "__main__":
    main()
