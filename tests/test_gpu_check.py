"""The GPU check (benchmarks/gpu_check.py, #28) rehearsed on the CPU at tiny sizes, so that the one prepared run a
GPU slot allows does not find it broken: staging of the data slice, every part in order, the rows it writes."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the Trainer and bertfit on minilm, a throughput run on a random model
def test_the_gpu_check_runs_every_part_in_order_on_the_cpu(tmp_path):
    script = REPO / "benchmarks" / "gpu_check.py"
    staged = tmp_path / "carry"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, script, "stage", "--dest", staged, "--train", "48", "--test", "16", "--no-wheels"],
        check=True,
        env=env,
    )
    assert len(pd.read_parquet(staged / "data" / "imdb" / "train.parquet")) == 48
    out = tmp_path / "out"
    env["BERTFIT_DATA_DIR"] = str(staged / "data")
    done = subprocess.run(
        [sys.executable, script, "run", out, "--dry-run"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    log = (out / "check.log").read_text()
    assert done.returncode == 0, log[-4000:] + done.stderr[-2000:]
    rows = (out / "rows.md").read_text()
    titles = [line for line in rows.splitlines() if line.startswith("### ")]
    assert [title.split(":")[0] for title in titles] == [
        "### GPU check, correctness",
        "### gpu",
        "### throughput",
        "### GPU check, profile",
    ], titles
    assert "packed against padded, bf16: **ok**" in rows and "skips a non-finite step: **ok**" in rows
    assert "host synchronisations while training: **ok**" in rows  # on a CPU, the run without the counting
    assert "3 tests collected" in rows  # the CUDA tests it runs on a GPU still exist
    assert "bertfit (padding packed" in rows and "HF Trainer" in rows
    assert "# done: 0 part(s) failed" in log
