"""bertfit at real data sizes: N-row training sets synthesised from the SST-2 mirror, trained for a fixed number of
steps, measuring load, tokenization and profile time (cold, then warm from the feature cache), time per step, and
the peak RSS of each process; `bertfit inspect` on the same data; and, side by side, the path a user would otherwise
take (`datasets.load_dataset("csv")` + `.map(batched=True)` + the HF Trainer).

    python benchmarks/scale.py 10000 10000000 --inspect     # bertfit cold and warm, and inspect, per size
    python benchmarks/scale.py 1000000 --trainer            # and the HF Trainer path at the same size
    python benchmarks/scale.py --synth 10000000             # only write the data (CSV and Parquet)

Rows are SST-2 training sentences cycled with a variation (a number appended), so every row is distinct; the
validation split is SST-2's own 872 sentences. Every measurement runs in its own process, and its peak RSS is that
process's own (wait4), model included.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("BERTFIT_SCALE_DATA", tempfile.gettempdir())) / "bertfit-scale"
STEPS = 200
MODEL, MAX_LENGTH, BATCH = "minilm", 64, 32


def synth(rows: int) -> Path:
    """A folder with train.csv (rows lines) and validation.csv, and the same as Parquet beside it; written once."""
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
    parquet = folder.with_name(folder.name + "-parquet")
    parquet.mkdir(exist_ok=True)
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    for split in ("train", "validation"):
        pq.write_table(pacsv.read_csv(folder / f"{split}.csv"), parquet / f"{split}.parquet")
    return folder


def child(args: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Run one process; its stdout, wall seconds and its own peak RSS in MB."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(args, stdout=out, stderr=err, env={**os.environ, **(env or {})}, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"{' '.join(args[:4])} failed:\n{err.read()[-3000:]}")
        return out.read(), wall, usage.ru_maxrss / 1024


def bertfit_run(folder: Path, cache: Path, warm: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bertfit-scale-") as work:
        out = Path(work) / "run"
        args = [sys.executable, "-m", "bertfit", "train", "--model", MODEL, "--data", str(folder)]
        args += ["--output", str(out), "--max-length", str(MAX_LENGTH), "--batch-size", str(BATCH)]
        args += ["--max-steps", str(STEPS), "--eval-every", str(STEPS), "--set", "log_every=10"]
        launched = time.time()
        _, wall, peak = child(args, {"BERTFIT_CACHE": str(cache)})
        events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    train = [e for e in events if e["event"] == "train"]
    # Steps 50..200: warm-up excluded; the clock between log lines, which wait for the device.
    first = next(e for e in train if e["step"] >= 50)
    return {
        "tool": "bertfit (warm cache)" if warm else "bertfit",
        "data_s": start["load_seconds"] + start["tokenize_seconds"] + start["profile_seconds"],
        "detail": f"load {start['load_seconds']:.0f} + tokenize {start['tokenize_seconds']:.0f} + profile "
        f"{start['profile_seconds']:.0f}",
        "first_step_s": train[0]["time"] - launched,  # launch to the first logged step (10)
        "step_ms": (train[-1]["time"] - first["time"]) / (train[-1]["step"] - first["step"]) * 1000,
        "peak_rss_mb": peak,
        "wall_s": wall,
    }


def inspect_run(folder: Path, cache: Path) -> dict:
    args = [sys.executable, "-m", "bertfit", "inspect", "--data", str(folder)]
    args += ["--model", MODEL, "--max-length", str(MAX_LENGTH)]
    _, wall, peak = child(args, {"BERTFIT_CACHE": str(cache)})
    return {"tool": "bertfit inspect", "data_s": wall, "detail": "whole command", "peak_rss_mb": peak, "wall_s": wall}


def trainer_run(folder: Path) -> dict:
    stdout, wall, peak = child([sys.executable, __file__, "--trainer-child", str(folder)])
    return {**json.loads(stdout.strip().splitlines()[-1]), "tool": "HF Trainer", "peak_rss_mb": peak, "wall_s": wall}


def trainer_child(folder: str) -> None:
    """The HF examples' path (run_glue.py): load_dataset("csv"), map(batched=True), Trainer; same recipe."""
    launched = time.time()
    import datasets
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    sys.path.insert(0, str(REPO))
    from bertfit import models

    path = models.resolve_model(MODEL)
    cache = tempfile.mkdtemp(prefix="hf-datasets-")  # cold, as bertfit's run is
    started = time.perf_counter()
    data = datasets.load_dataset(
        "csv", data_files={s: f"{folder}/{s}.csv" for s in ("train", "validation")}, cache_dir=cache
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = data.map(
        lambda batch: tokenizer(batch["sentence"], truncation=True, max_length=MAX_LENGTH),
        batched=True,
        remove_columns=["sentence"],
    )
    data_seconds = time.perf_counter() - started
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, dtype=torch.float32)
    times: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % 10 == 0:
                times[state.global_step] = time.time()

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        learning_rate=2e-5,
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        logging_steps=10**6,
    )
    Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[Clock()],
    ).train()
    print(
        json.dumps(
            {
                "data_s": data_seconds,
                "detail": "load_dataset + map",
                "first_step_s": times[10] - launched,
                "step_ms": (times[STEPS] - times[50]) / (STEPS - 50) * 1000,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sizes", nargs="*", type=int)
    parser.add_argument("--synth", type=int)
    parser.add_argument("--parquet", action="store_true", help="read the Parquet copy of the data instead of CSV")
    parser.add_argument("--inspect", action="store_true", help="time `bertfit inspect` on each size too")
    parser.add_argument("--trainer", action="store_true", help="run the HF Trainer path on each size too")
    parser.add_argument("--trainer-child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    os.environ.setdefault("BERTFIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    if options.trainer_child:
        trainer_child(options.trainer_child)
        return
    if options.synth:
        print(synth(options.synth))
        return
    results = []
    for rows in options.sizes:
        folder = synth(rows)
        if options.parquet:
            folder = folder.with_name(folder.name + "-parquet")
        with tempfile.TemporaryDirectory(prefix="bertfit-scale-cache-") as cache:
            measured = [bertfit_run(folder, Path(cache), warm=False), bertfit_run(folder, Path(cache), warm=True)]
            measured += [inspect_run(folder, Path(cache) / "inspect")] if options.inspect else []
            measured += [trainer_run(folder)] if options.trainer else []
        for result in measured:
            results.append({"rows": rows, "format": "parquet" if options.parquet else "csv", **result})
            print(json.dumps(results[-1]), flush=True)
    import torch

    flags = " ".join(f"--{f}" for f in ("parquet", "inspect", "trainer") if getattr(options, f))
    lines = [
        f"### data at scale: {datetime.date.today().isoformat()}",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}",
        f"- command: `python benchmarks/scale.py {' '.join(map(str, options.sizes))} {flags}`: {MODEL}, max_length "
        f"{MAX_LENGTH}, batch {BATCH}, {STEPS} steps; rows synthesised from SST-2 train; each line its own process",
        "",
        "| rows | format | tool | data s (load + tokenize + profile) | launch to step 10, s | ms per step (50..200) "
        "| peak RSS MB | wall s |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]

    def number(value, digits=1):
        return "" if value is None else f"{value:.{digits}f}"

    lines += [
        f"| {r['rows']:,} | {r['format']} | {r['tool']} | {r['data_s']:.1f} ({r['detail']}) | "
        f"{number(r.get('first_step_s'))} | {number(r.get('step_ms'), 0)} | {r['peak_rss_mb']:.0f} | "
        f"{r['wall_s']:.0f} |"
        for r in results
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(REPO / "BENCHMARKS.md", "a", encoding="utf-8") as handle:
        handle.write("\n" + text)


if __name__ == "__main__":
    main()
