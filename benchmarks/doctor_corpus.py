"""The doctor graded on runs with known faults: each run is provoked (or healthy) on purpose with the real MiniLM
and the mirror's data, then diagnosed; the table counts, per rule, the faults found, missed and falsely reported.

    python benchmarks/doctor_corpus.py            # every case (about 10 minutes on 2 CPU cores)
    python benchmarks/doctor_corpus.py lr-high    # some cases, by name

A case lists the findings it must produce (`required`) and those that are also true of it (`allowed`, e.g. a model
that collapses because its data is imbalanced). A finding of severity warning or error outside both is a false
alarm; info findings are not counted. A report holding both 'lower the learning rate' and 'raise the learning
rate' is a contradiction. Results are printed and appended to BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COMMON = {"model": "minilm", "batch_size": 32, "max_length": 64, "seed": 42, "lr": 5e-5}


def mirror_frame(name: str, split: str) -> pd.DataFrame:
    from bertfit.data import sources

    return sources.load_splits(name).frames[split]


def imbalanced_sst2(folder: Path) -> str:
    """95% positive training sentences; the natural (balanced) validation split."""
    train = mirror_frame("sst2", "train")
    positive = train[train["label"] == 1].sample(1900, random_state=0)
    negative = train[train["label"] == 0].sample(100, random_state=0)
    pd.concat([positive, negative]).sample(frac=1, random_state=0).to_csv(folder / "train.csv", index=False)
    mirror_frame("sst2", "validation").to_csv(folder / "validation.csv", index=False)
    return str(folder)


def leaky_sst2(folder: Path) -> str:
    """A validation split of which a third is copied from training."""
    train = mirror_frame("sst2", "train").sample(3000, random_state=1)
    validation = pd.concat([mirror_frame("sst2", "validation").head(400), train.head(200)])
    train.to_csv(folder / "train.csv", index=False)
    validation.to_csv(folder / "validation.csv", index=False)
    return str(folder)


@dataclass
class Case:
    overrides: dict
    required: set[str]
    allowed: set[str] = field(default_factory=set)
    build: Callable[[Path], str] | None = None  # writes the data; returns the --data value


CASES = {
    # Healthy runs, one per task kind: the doctor should stay silent (info aside).
    "healthy-sst2": Case({"data": "sst2", "max_train_samples": 4000, "epochs": 1, "eval_every": 63}, set()),
    "healthy-stsb": Case({"data": "stsb", "max_train_samples": 3000, "epochs": 3, "eval_every": 94, "lr": 1e-4}, set()),
    "healthy-conll": Case(
        {
            "data": "conll2003",
            "max_train_samples": 4000,
            "epochs": 3,
            "batch_size": 16,
            "max_length": 128,
            "eval_every": 250,
            "lr": 1e-4,
            "max_eval_samples": 1000,
        },
        set(),
    ),
    # Provoked faults.
    "lr-high": Case(
        {"data": "sst2", "max_train_samples": 2000, "max_steps": 120, "eval_every": 40, "lr": 1e-2},
        {"lr_too_high"},
        {"collapse"},
    ),
    "lr-low": Case(
        {"data": "sst2", "max_train_samples": 4800, "max_steps": 150, "eval_every": 75, "lr": 1e-7},
        {"lr_too_low"},
        {"collapse"},
    ),
    "too-short": Case(
        {"data": "sst2", "max_train_samples": 256, "max_steps": 8, "batch_size": 8, "eval_every": 4},
        {"too_short"},
        {"collapse"},
    ),
    "overfit-small": Case(
        {"data": "sst2", "max_train_samples": 400, "epochs": 15, "eval_every": "epoch", "keep_best": True},
        {"overfitting", "small_data"},
    ),
    "tweets-64": Case(
        {
            "data": "tweet_eval/sentiment",
            "max_train_samples": 64,
            "epochs": 20,
            "batch_size": 8,
            "eval_every": 40,
            "max_eval_samples": 1000,
        },
        {"small_data"},
        {"overfitting"},
    ),
    "imbalance": Case({"max_steps": 150, "eval_every": 75}, {"imbalance"}, {"collapse"}, imbalanced_sst2),
    "leakage": Case({"epochs": 1, "eval_every": 47}, {"leakage"}, set(), leaky_sst2),
    "truncation": Case(
        {
            "data": "imdb",
            "max_train_samples": 1500,
            "epochs": 1,
            "batch_size": 16,
            "eval_every": 47,
            "max_eval_samples": 500,
            "lr": 1e-4,
        },
        {"truncation"},
        {"underfitting"},
    ),
    "token-failure": Case(
        {
            "data": "conll2003",
            "max_train_samples": 400,
            "epochs": 1,
            "batch_size": 8,
            "max_length": 128,
            "lr": 2e-5,
            "max_eval_samples": 500,
        },
        {"low_f1"},
        {"too_short"},
    ),
    "divergence": Case(
        {"data": "sst2", "max_train_samples": 1000, "max_steps": 60, "eval_every": 30, "lr": 1e3, "precision": "fp32"},
        {"non_finite"},
        {"lr_too_high", "collapse"},
    ),
}


def run_case(name: str, case: Case, root: Path) -> dict:
    from bertfit.cli import fit
    from bertfit.config import build_config
    from bertfit.errors import BertfitError

    out = root / name
    data_folder = root / f"{name}-data"
    data_folder.mkdir(parents=True, exist_ok=True)
    values = {**COMMON, **case.overrides, "output": str(out)}
    if case.build:
        values["data"] = case.build(data_folder)
    started = time.perf_counter()
    stopped = None
    try:
        fit(build_config(None, values), overwrite=True)
    except BertfitError as err:  # a diverged run stops with an error, and its diagnosis is written first
        stopped = str(err)
    findings = json.loads((out / "diagnosis.json").read_text())["findings"]
    counted = [f for f in findings if f["severity"] in ("warning", "error")]
    found = {f["id"] for f in counted}
    advice = " ".join(f["advice"] for f in findings)
    return {
        "case": name,
        "seconds": time.perf_counter() - started,
        "required": sorted(case.required),
        "found": sorted({f["id"] for f in findings}),
        "missed": sorted(case.required - found),
        "false": sorted(found - case.required - case.allowed),
        "contradiction": "lower the learning rate" in advice and "raise the learning rate" in advice,
        "stopped": stopped,
    }


def per_rule(results: list[dict]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for result in results:
        for rule in result["required"]:
            row = table.setdefault(rule, {"found": 0, "missed": 0, "false": 0})
            row["missed" if rule in result["missed"] else "found"] += 1
        for rule in result["false"]:
            table.setdefault(rule, {"found": 0, "missed": 0, "false": 0})["false"] += 1
    return table


def report(results: list[dict], seconds: float) -> str:
    import torch
    import transformers

    table = per_rule(results)
    found = sum(r["found"] for r in table.values())
    missed = sum(r["missed"] for r in table.values())
    false = sum(r["false"] for r in table.values())
    lines = [
        f"### doctor corpus: {datetime.date.today().isoformat()}",
        "",
        f"- machine: {platform.machine()}, {__import__('os').cpu_count()} cores; torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- command: `python benchmarks/doctor_corpus.py` ({len(results)} runs of all-MiniLM-L6-v2 on the mirror, "
        f"{seconds / 60:.1f} min)",
        f"- recall {found}/{found + missed} provoked faults found; precision {found}/{found + false} (warnings and "
        f"errors outside a case's true findings count as false); contradictions: "
        f"{sum(r['contradiction'] for r in results)}",
        "",
        "| case | must find | found | missed | false alarms |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['case']} | {', '.join(r['required']) or '(healthy)'} | {', '.join(r['found']) or '—'} | "
            f"{', '.join(r['missed']) or '—'} | {', '.join(r['false']) or '—'} |"
        )
    lines += ["", "| rule | found | missed | false alarms |", "|---|---:|---:|---:|"]
    lines += [f"| {rule} | {row['found']} | {row['missed']} | {row['false']} |" for rule, row in sorted(table.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    import os

    os.environ.setdefault("BERTFIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    names = sys.argv[1:] or list(CASES)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bertfit-doctor-") as root:
        for name in names:
            result = run_case(name, CASES[name], Path(root))
            print(json.dumps(result), flush=True)
            results.append(result)
    text = report(results, time.perf_counter() - started)
    print(text)
    if not sys.argv[1:]:
        with open(REPO / "BENCHMARKS.md", "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
