"""How well bertfit finds mislabeled training examples: flip a seeded 5% of the labels of an SST-2 subset, train
all-MiniLM-L6-v2 on it, and score the examples bertfit flags (negative area under the margin) against the flipped
ones. The same run without tracking (`find_mislabeled: false`) gives the cost.

    python benchmarks/mislabeled.py            # 4,000 sentences, 2 epochs; appends to BENCHMARKS.md
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROWS, NOISE, SEED, EPOCHS = 4000, 0.05, 7, 2


def noisy_sst2(folder: Path) -> set[int]:
    """Writes train.csv (labels of a seeded 5% flipped) and validation.csv; returns the flipped rows."""
    from bertfit.data import sources

    splits = sources.load_splits("sst2")
    train = splits.frames["train"].sample(ROWS, random_state=SEED).reset_index(drop=True)
    flipped = np.random.default_rng(SEED).choice(ROWS, int(ROWS * NOISE), replace=False)
    train.loc[flipped, "label"] = 1 - train.loc[flipped, "label"]
    train.to_csv(folder / "train.csv", index=False)
    splits.frames["validation"].to_csv(folder / "validation.csv", index=False)
    return {int(row) for row in flipped}


def train(folder: Path, out: Path, find: bool) -> dict:
    from bertfit.cli import fit
    from bertfit.config import build_config

    cfg = build_config(
        None,
        {
            "model": "minilm",
            "data": str(folder),
            "output": str(out),
            "epochs": EPOCHS,
            "batch_size": 32,
            "lr": 5e-5,
            "max_length": 64,
            "seed": 42,
            "find_mislabeled": find,
            "eval_every": "epoch",
        },
    )
    started = time.perf_counter()
    summary = fit(cfg, overwrite=True).metrics.dump()
    return {"summary": summary, "seconds": time.perf_counter() - started}


def main() -> None:
    import torch

    os.environ.setdefault("BERTFIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory(prefix="bertfit-noise-") as root:
        folder = Path(root) / "data"
        folder.mkdir()
        flipped = noisy_sst2(folder)
        without = train(folder, Path(root) / "plain", find=False)
        tracked = train(folder, Path(root) / "tracked", find=True)
        found = [json.loads(line) for line in (Path(root) / "tracked" / "mislabeled.jsonl").read_text().splitlines()]
    flagged = {example["row"] for example in found}
    hits = len(flagged & flipped)
    top = {example["row"] for example in found[: len(flipped)]}
    train_s = (without["summary"]["train"]["train_seconds"], tracked["summary"]["train"]["train_seconds"])
    lines = [
        f"### mislabeled examples: {datetime.date.today().isoformat()}",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}",
        f"- command: `python benchmarks/mislabeled.py`: all-MiniLM-L6-v2, {ROWS:,} seeded SST-2 training sentences "
        f"with {len(flipped)} labels ({NOISE:.0%}) flipped at random (seed {SEED}), {EPOCHS} epochs, batch 32, "
        "lr 5e-5, max_length 64",
        "- method: area under the margin (Pleiss et al. 2020), accumulated during training; flagged when negative",
        "",
        "| flagged | flipped among them | precision | recall | precision of the lowest "
        f"{len(flipped)} | train s without / with | validation accuracy without / with |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {len(flagged)} | {hits} | {hits / max(1, len(flagged)):.3f} | {hits / len(flipped):.3f} | "
        f"{len(top & flipped) / len(flipped):.3f} | {train_s[0]:.1f} / {train_s[1]:.1f} | "
        f"{without['summary']['validation']['accuracy']:.4f} / {tracked['summary']['validation']['accuracy']:.4f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(REPO / "BENCHMARKS.md", "a", encoding="utf-8") as handle:
        handle.write("\n" + text)


if __name__ == "__main__":
    main()
