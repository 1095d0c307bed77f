"""LoRA against full fine-tuning: minilm on 8,000 seeded SST-2 sentences, one epoch, batch 32, each run in its own
process; accuracy on SST-2's validation split, trainable parameters, time per step and peak memory (RSS).

Full fine-tuning uses the cpu comparison's learning rate (5e-5); LoRA the ten times higher rate adapters take
(5e-4, rank 8, alpha 16, peft's query/value targets).

    python benchmarks/lora.py          # appends a table to BENCHMARKS.md
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
COMMON = ["--model", "minilm", "--data", "sst2", "--max-train-samples", "8000", "--epochs", "1", "--batch-size", "32"]
COMMON += ["--max-length", "128", "--seed", "42", "--no-find-mislabeled"]
SIDES = {"full fine-tuning": ["--lr", "5e-5"], "LoRA r=8": ["--lr", "5e-4", "--lora"]}


def run(out: Path, extra: list[str]) -> dict:
    process = subprocess.Popen([sys.executable, "-m", "bertfit", "train", "--output", str(out), *COMMON, *extra])
    _, status, usage = os.wait4(process.pid, 0)  # this process's own peak RSS
    if status:
        raise SystemExit(f"bertfit failed: {' '.join(extra)}")
    metrics = json.loads((out / "metrics.json").read_text())
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    train = metrics["train"]
    return {
        "accuracy": metrics["validation"]["accuracy"],
        "trainable": start["trainable_parameters"],
        "parameters": start["parameters"],
        "step_ms": 1000 * train["train_seconds"] / train["steps"],
        "samples_per_second": train["samples_per_second"],
        "peak_mb": usage.ru_maxrss / 1024,
    }


def main() -> None:
    os.environ.setdefault("BERTFIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    results = {}
    with tempfile.TemporaryDirectory(prefix="bertfit-lora-") as work:
        for name in SIDES:
            results[name] = run(Path(work) / name.split()[0], SIDES[name])

    lines = [
        f"- machine: {sections.machine()}",
        f"- command: `python benchmarks/lora.py`: `{' '.join(COMMON)}`; full: `--lr 5e-5`; LoRA: `--lr 5e-4 --lora` "
        "(rank 8, alpha 16, dropout 0.1, query and value)",
        "",
        "| training | validation accuracy | trainable parameters | ms per step | train samples/s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in SIDES:
        r = results[name]
        lines.append(
            f"| {name} | {r['accuracy']:.4f} | {r['trainable']:,} of {r['parameters']:,} "
            f"({r['trainable'] / r['parameters']:.2%}) | {r['step_ms']:.0f} | {r['samples_per_second']:.1f} | "
            f"{r['peak_mb']:.0f} |"
        )
    sections.append("LoRA vs full fine-tuning", lines)


if __name__ == "__main__":
    main()
