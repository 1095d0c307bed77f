"""bertfit at real data sizes: N-row training sets synthesised from the SST-2 mirror, trained for a fixed number of
steps, measuring load, tokenization and profile time, time per step, and the peak RSS of the whole process.

    python benchmarks/scale.py 10000 1000000      # one run per size, side by side; appends to BENCHMARKS.md
    python benchmarks/scale.py --synth 10000000   # only write the data (CSV), to time or inspect it separately

Rows are SST-2 training sentences cycled with a variation (a number appended), so every row is distinct; the
validation split is SST-2's own 872 sentences. Each size runs cold (empty feature cache), in its own process.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("BERTFIT_SCALE_DATA", tempfile.gettempdir())) / "bertfit-scale"
STEPS = 200


def synth(rows: int) -> Path:
    """A folder with train.csv (rows lines) and validation.csv; written once, in chunks."""
    sys.path.insert(0, str(REPO))
    from bertfit.data import sources

    folder = DATA_ROOT / f"sst2-{rows}"
    if (folder / "train.csv").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    splits = sources.load_splits("sst2")
    base = splits.frames["train"]
    sentences, labels = base["sentence"].tolist(), base["label"].tolist()
    tmp = folder / "train.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "label"])
        for row in range(rows):
            k = row % len(sentences)
            writer.writerow([f"{sentences[k].strip()} {row // len(sentences)}", labels[k]])
    tmp.rename(folder / "train.csv")
    splits.frames["validation"].to_csv(folder / "validation.csv", index=False)
    return folder


def run(rows: int, baseline: str | None = None) -> dict:
    """`baseline`: a checkout of an earlier bertfit to run instead (put first on PYTHONPATH), for a side by side."""
    folder = synth(rows)
    with tempfile.TemporaryDirectory(prefix="bertfit-scale-") as work:
        out, cache = Path(work) / "run", Path(work) / "cache"
        args = [
            sys.executable,
            "-m",
            "bertfit",
            "train",
            "--model",
            "minilm",
            "--data",
            str(folder),
            "--output",
            str(out),
            "--max-length",
            "64",
            "--batch-size",
            "32",
            "--max-steps",
            str(STEPS),
            "--eval-every",
            str(STEPS),
            "--set",
            "log_every=10",
        ] + ([] if baseline else ["--no-find-mislabeled"])
        started, launched = time.perf_counter(), time.time()
        env = {**os.environ, "BERTFIT_CACHE": str(cache), **({"PYTHONPATH": baseline} if baseline else {})}
        done = subprocess.run(args, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    train = [e for e in events if e["event"] == "train"]
    # Steps 50..200: warm-up excluded; the clock between log lines, which wait for the device.
    first = next(e for e in train if e["step"] >= 50)
    step_ms = (train[-1]["time"] - first["time"]) / (train[-1]["step"] - first["step"]) * 1000
    return {
        "rows": rows,
        "code": "baseline" if baseline else "this",
        "load_s": start["load_seconds"],
        "tokenize_s": start["tokenize_seconds"],
        "first_step_s": train[0]["time"] - launched,  # launch to the first logged step (10)
        "step_ms": step_ms,
        "peak_rss_mb": peak_mb,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sizes", nargs="*", type=int)
    parser.add_argument("--synth", type=int)
    parser.add_argument("--baseline", help="an earlier bertfit checkout to run too, each size after this one")
    options = parser.parse_args()
    os.environ.setdefault("BERTFIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    if options.synth:
        print(synth(options.synth))
        return
    results = []
    # Smallest first, the baseline (which needs more memory) after: RUSAGE_CHILDREN keeps the largest peak so far.
    for rows in sorted(options.sizes):
        for baseline in [None] + ([options.baseline] if options.baseline else []):
            results.append(run(rows, baseline))
            print(json.dumps(results[-1]), flush=True)
    import torch

    lines = [
        f"### data at scale: {datetime.date.today().isoformat()}",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}",
        f"- command: `python benchmarks/scale.py {' '.join(map(str, options.sizes))}`: minilm, max_length 64, "
        f"batch 32, {STEPS} steps, cold feature cache; rows synthesised from SST-2 train",
        "",
        "| rows | code | load s | tokenize s | launch to step 10, s | ms per step (50..200) | peak RSS MB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['rows']:,} | {r['code']} | {r['load_s']:.1f} | {r['tokenize_s']:.1f} | {r['first_step_s']:.1f} | "
        f"{r['step_ms']:.0f} | {r['peak_rss_mb']:.0f} |"
        for r in results
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(REPO / "BENCHMARKS.md", "a", encoding="utf-8") as handle:
        handle.write("\n" + text)


if __name__ == "__main__":
    main()
