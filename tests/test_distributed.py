"""torch.distributed (gloo on CPU): two processes equal one with the same effective batch; sharded eval is exact."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SAMPLES, free_port, sample_run_args
from safetensors.torch import load_file
from test_train_tiny import log_without_timings

# Training subprocesses, servers and process groups: the full suite runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow


def train_args(model, out, batch_size, *extra):
    return sample_run_args(
        model,
        out,
        "--batch-size",
        batch_size,
        "--max-steps",
        8,
        "--eval-every",
        4,
        "--lr",
        "1e-3",
        "--padding",
        "dynamic",
        "--max-eval-samples",
        19,
        *extra,
    )


def bertfit(*args):
    done = subprocess.run(
        [sys.executable, "-m", "bertfit", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_gloo_processes_match_one_process_with_the_same_effective_batch(tiny_bert_no_dropout, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    # fp32: the equivalence is of the batch arithmetic, checked at a tolerance bf16 rounding would swamp.
    bertfit(*train_args(tiny_bert_no_dropout, single, 16, "--precision", "fp32"))
    launched = bertfit(*train_args(tiny_bert_no_dropout, double, 8, "--nproc", 2, "--precision", "fp32"))
    assert launched.stdout.count("wrote ") == 1  # only rank 0 reports
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (single, double))
    # Same step batches, same gradients up to float summation order: 1e-4 relative on the losses.
    assert two["validation"]["accuracy"] == one["validation"]["accuracy"]
    assert two["validation"]["loss"] == pytest.approx(one["validation"]["loss"], rel=1e-4)
    for a, b in zip(log_without_timings(single / "log.jsonl"), log_without_timings(double / "log.jsonl")):
        if a["event"] == "eval":
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    weights_one, weights_two = load_file(single / "model.safetensors"), load_file(double / "model.safetensors")
    assert all(torch.allclose(weights_one[k], weights_two[k], atol=1e-5) for k in weights_one)
    recipe = (double / "recipe.yaml").read_text()
    assert "world_size: 2" in recipe
    card = (double / "README.md").read_text()
    assert (
        "num_devices: 2" in card and "total_train_batch_size: 16 (train_batch_size is per device: 8 × 2 devices" in card
    )
    start = json.loads((double / "log.jsonl").read_text().splitlines()[0])
    assert start["effective_batch_size"] == 16 and start["world_size"] == 2
    assert not list(double.glob("*.tmp*")) and sorted(p.name for p in double.iterdir()) == sorted(
        p.name for p in single.iterdir()
    )


def test_two_nodes_through_a_c10d_rendezvous_match_one_process(tiny_bert_no_dropout, tmp_path):
    """Multi-node training is torchrun's: two agents (--nnodes 2, one process each) meet at a c10d rendezvous on
    127.0.0.1, as two machines would at their head node's address, and train as one process with the same
    effective batch does."""
    single, nodes = tmp_path / "single", tmp_path / "nodes"
    bertfit(*train_args(tiny_bert_no_dropout, single, 16, "--precision", "fp32"))
    port = free_port()
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    agent += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "bertfit-two-nodes"]
    command = [*agent, "-m", "bertfit", *map(str, train_args(tiny_bert_no_dropout, nodes, 8, "--precision", "fp32"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agents = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    for process in agents:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err.decode()[-3000:]
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (single, nodes))
    assert two["validation"]["accuracy"] == one["validation"]["accuracy"]
    assert two["validation"]["loss"] == pytest.approx(one["validation"]["loss"], rel=1e-4)
    weights_one, weights_two = load_file(single / "model.safetensors"), load_file(nodes / "model.safetensors")
    assert all(torch.allclose(weights_one[k], weights_two[k], atol=1e-5) for k in weights_one)
    assert "world_size: 2" in (nodes / "recipe.yaml").read_text()


def test_resume_refuses_another_world_size(tiny_bert_no_dropout, tmp_path):
    out = tmp_path / "run"
    bertfit(*train_args(tiny_bert_no_dropout, out, 8, "--nproc", 2))
    done = subprocess.run(
        [sys.executable, "-m", "bertfit", *map(str, train_args(tiny_bert_no_dropout, out, 8)), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "world_size: 2 in the checkpoint, 1 now" in done.stderr


def _sharded_eval(rank, world, port, model_dir, result_file):
    import torch.distributed as dist

    from bertfit import models
    from bertfit.engine.device import Dist
    from bertfit.engine.evaluation import Scorer, evaluate
    from bertfit.tasks import ClassificationTask

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    frame = pd.read_csv(SAMPLES / "sst2_200.csv").iloc[:101]
    task = ClassificationTask(["sentence"], "label", ["0", "1"], 64)
    tokenizer = models.load_tokenizer(model_dir)
    model = models.load_model(model_dir, task.auto_model, task.head_config())
    scorer = Scorer(model, task, 8, torch.device("cpu"), "fp32", tokenizer.pad_token_id, Dist(rank, world))
    result = evaluate(scorer, task.encode(frame, tokenizer), frame)
    if rank == 0:
        with open(result_file, "w") as handle:
            json.dump(result.model_dump(exclude={"runtime", "samples_per_second"}), handle)
    dist.barrier()  # no rank tears gloo down while another still talks to it (a rare SIGABRT under load)
    dist.destroy_process_group()


def test_sharded_eval_counts_every_example_once(tiny_bert, tmp_path):
    import torch.multiprocessing as mp

    results = {}
    for world in (1, 2, 3):
        path = tmp_path / f"eval{world}.json"
        mp.spawn(_sharded_eval, args=(world, free_port(), tiny_bert, str(path)), nprocs=world, join=True)
        results[world] = json.loads(path.read_text())
    assert results[1]["confusion_matrix"] == results[2]["confusion_matrix"] == results[3]["confusion_matrix"]
    assert np.sum(results[3]["confusion_matrix"]) == 101  # 101 is divisible by neither 2 nor 3
    assert results[1]["accuracy"] == results[2]["accuracy"] == results[3]["accuracy"]
    assert results[3]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)


def test_launcher_reports_user_errors_in_one_line(tmp_path):
    for extra, message in (
        (["--data", "nope.csv"], "data file or folder 'nope.csv' not found"),
        (["--data", SAMPLES / "sst2_200.csv", "--lr", "-1"], "invalid value for 'lr'"),
    ):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bertfit",
                "train",
                "--model",
                "minilm",
                "--output",
                tmp_path / "o",
                "--nproc",
                "2",
                *map(str, extra),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()


def test_a_worker_error_after_launch_is_one_line_exit_2(tiny_bert, tmp_path):
    """max_length is checked against the tokenizer, inside the workers: still one line, not one per worker."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertfit",
            "train",
            "--model",
            tiny_bert,
            "--data",
            str(SAMPLES / "sst2_200.csv"),
            "--output",
            str(tmp_path / "o"),
            "--nproc",
            "2",
            "--max-length",
            "1024",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: max_length 1024 is longer than the model accepts (512); lower it"
    ]
    assert not (tmp_path / "o").exists()


def test_ddp_sigterm_then_resume_matches_the_uninterrupted_run(tiny_bert, tmp_path):
    import signal
    import time

    args = [
        "--model",
        tiny_bert,
        "--data",
        SAMPLES / "sst2_200.csv",
        "--batch-size",
        4,
        "--max-steps",
        24,
        "--eval-every",
        12,
        "--checkpoint-every",
        5,
        "--set",
        "log_every=1",
        "--padding",
        "dynamic",
        "--no-probe",  # what is checked is training resumed across ranks
    ]
    whole = tmp_path / "whole"
    bertfit("train", "--output", whole, "--nproc", 2, *args)
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "bertfit", "train", "--output", str(out), "--nproc", "2", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (out / "log.jsonl").is_file() and '"step": 8' in (out / "log.jsonl").read_text()
    ):
        time.sleep(0.01)
    os.killpg(launcher.pid, signal.SIGTERM)  # as a scheduler preempting the job; torchrun passes it on once
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 143 and stderr.decode().splitlines() == ["stopped by SIGTERM; resume with --resume"]
    assert not (out / "metrics.json").exists() and list((out / "checkpoints").glob("step-*"))
    bertfit("train", "--output", out, "--nproc", 2, "--resume", *args)
    ours, theirs = load_file(out / "model.safetensors"), load_file(whole / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert log_without_timings(out / "log.jsonl") == log_without_timings(whole / "log.jsonl")


def test_packed_on_two_gloo_processes_matches_one_process(tiny_bert_no_dropout, tmp_path):
    """Each rank packs its share of the step batch into its own stream; DDP averages as for padded batches."""
    single, double = tmp_path / "single", tmp_path / "double"
    packed = ("--precision", "fp32", "--padding", "packed")
    bertfit(*train_args(tiny_bert_no_dropout, single, 16, *packed))
    bertfit(*train_args(tiny_bert_no_dropout, double, 8, "--nproc", 2, *packed))
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (single, double))
    assert two["validation"]["loss"] == pytest.approx(one["validation"]["loss"], rel=1e-4)
    assert two["train"]["padding_ratio"] == one["train"]["padding_ratio"] == 0
    weights_one, weights_two = load_file(single / "model.safetensors"), load_file(double / "model.safetensors")
    assert all(torch.allclose(weights_one[k], weights_two[k], atol=1e-5) for k in weights_one)
