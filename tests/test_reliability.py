"""Exact resume after SIGKILL, SIGTERM checkpoints, disk-full, NaN guard, safe loading."""

import errno
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import STEPS, killed_at_step, recipe_args, run_cli, sample_run_args, spawn, wait_for_step
from safetensors.torch import load_file
from test_train_tiny import log_without_timings

from bertfit.runfiles import RunMetrics

# Training subprocesses, servers and process groups: the full suite runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow


# Killed before the first evaluation (step 12), and after the second, with the best score and early stopping's
# count to restore; a kill between the two adds nothing the second does not (dropped for the suite's time).
@pytest.mark.parametrize("kill_at", [4, 29])
def test_sigkill_then_resume_is_bit_identical(uninterrupted, tiny_bert, tmp_path, kill_at):
    out = tmp_path / "run"
    killed_after = killed_at_step(recipe_args(tiny_bert, out), out, kill_at)
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert checkpoints, "no checkpoint before the kill"
    assert not (out / "metrics.json").exists()
    resumed = spawn(recipe_args(tiny_bert, out) + ["--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    # Bit for bit: the final weights of the resumed run equal those of the uninterrupted one.
    ours, theirs = load_file(out / "model.safetensors"), load_file(uninterrupted / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), killed_after
    assert log_without_timings(out / "log.jsonl") == log_without_timings(uninterrupted / "log.jsonl")
    resumed_scores, whole_scores = (
        RunMetrics.model_validate_json((folder / "metrics.json").read_text()).validation.scalars()
        for folder in (out, uninterrupted)
    )
    assert resumed_scores == whole_scores
    # The margins behind the mislabeled list are checkpointed too: the same examples, the same margins.
    assert (out / "mislabeled.jsonl").read_text() == (uninterrupted / "mislabeled.jsonl").read_text()


def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(tiny_bert, tmp_path):
    out = tmp_path / "run"
    process = spawn(recipe_args(tiny_bert, out))
    wait_for_step(process, out / "log.jsonl", 5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err.decode()[-2000:]
    assert "stopped by SIGTERM; resume with --resume" in err.decode()
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    assert (newest / "training_state.pt").is_file() and not list((out / "checkpoints").glob(".bertfit-tmp-*"))
    resumed = spawn(["resume", out])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == STEPS


def test_disk_full_stops_cleanly_and_the_previous_checkpoint_loads(tiny_bert, tmp_path, capsys, monkeypatch):
    from bertfit.engine import checkpoint

    real_save, calls = checkpoint.save_model, {"n": 0}

    def full_disk(model, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(model, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_model", full_disk)
    out = tmp_path / "run"
    code, _, stderr = run_cli(recipe_args(tiny_bert, out), capsys)
    assert code == 2 and "disk full while writing checkpoint step-00000006" in stderr
    assert len(stderr.strip().splitlines()) == 1
    survivors = checkpoint.complete(out / "checkpoints")
    assert [p.name for p in survivors] == ["step-00000003"] and not list((out / "checkpoints").glob(".bertfit-tmp-*"))
    state = checkpoint.load_state(survivors[0])
    assert state["state"]["step"] == 3
    monkeypatch.setattr(checkpoint, "save_model", real_save)
    code, _, stderr = run_cli(recipe_args(tiny_bert, out) + ["--resume"], capsys)
    assert code == 0, stderr


def test_non_finite_steps_never_reach_the_weights(tiny_bert, tmp_path, capsys, monkeypatch):
    from bertfit.engine import checkpoint
    from bertfit.tasks import ClassificationTask

    real_loss, calls = ClassificationTask.loss_sum, {"n": 0}

    def poisoned(self, logits, labels):
        calls["n"] += 1
        loss = real_loss(self, logits, labels)
        return loss * float("nan") if calls["n"] > 7 else loss

    monkeypatch.setattr(ClassificationTask, "loss_sum", poisoned)
    out = tmp_path / "run"
    code, _, stderr = run_cli(recipe_args(tiny_bert, out) + ["--set", "max_bad_steps=4", "--eval-every", 30], capsys)
    assert code == 2 and "training stopped at step 11: 4 consecutive steps had non-finite loss" in stderr, stderr
    last_good = checkpoint.complete(out / "checkpoints")[-1]
    weights = load_file(last_good / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    diagnosis = json.loads((out / "diagnosis.json").read_text())["findings"]
    assert diagnosis[0]["id"] == "non_finite" and "the run stopped" in diagnosis[0]["evidence"]
    bad = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"bad_step"' in line]
    assert [b["step"] for b in bad] == [8, 9, 10, 11]


def test_resume_refuses_a_changed_recipe_and_foreign_pickles(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    args = recipe_args(tiny_bert, out)
    args[args.index("--max-steps") + 1] = 6
    args[args.index("--eval-every") + 1] = 3
    assert run_cli(args, capsys)[0] == 0
    code, _, stderr = run_cli(args + ["--resume", "--lr", "2e-3"], capsys)
    assert code == 2 and "the recipe changed (lr: 0.001 in the checkpoint, 0.002 now)" in stderr
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state": Payload()}, newest / "training_state.pt")
    code, _, stderr = run_cli(args + ["--resume"], capsys)
    assert code == 2 and "holds objects other than tensors and plain values" in stderr


def test_rotation_keeps_the_newest_and_never_the_best_away(tiny_bert, tmp_path):
    from bertfit.config import Config
    from bertfit.engine import checkpoint
    from bertfit.models import load_model
    from bertfit.runfolder import RunFolder
    from bertfit.tasks import build_task

    task = build_task("classification", ["text"], "label", ["a", "b"], 64)
    model = load_model(tiny_bert, task.auto_model, task.head_config())
    with RunFolder.claim(tmp_path / "run") as run:
        run.begin(resume=False, overwrite=False)
        for step in range(1, 6):
            checkpoint.save(run, step, model, {"step": step}, Config(), keep=2, best_step=1)
    folder = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoint.complete(folder)] == ["step-00000001", "step-00000004", "step-00000005"]
    (folder / ".bertfit-tmp-step-00000006").mkdir()  # a write torn by a crash is never taken for a checkpoint
    assert checkpoint.complete(folder)[-1].name == "step-00000005"


def test_a_second_signal_exits_at_once_and_leaves_no_torn_checkpoint(tiny_bert, tmp_path):
    out = tmp_path / "run"
    process = spawn(recipe_args(tiny_bert, out))
    wait_for_step(process, out / "log.jsonl", 5)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 143
    from bertfit.engine import checkpoint

    for complete in checkpoint.complete(out / "checkpoints"):
        checkpoint.load_state(complete)  # whatever has its final name loads
    resumed = spawn(recipe_args(tiny_bert, out) + ["--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]


def test_a_skipped_step_leaves_weights_and_optimizer_state_untouched():
    from types import SimpleNamespace

    from bertfit.engine.loop import NonFiniteGuard
    from bertfit.engine.setup import State

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    guard = NonFiniteGuard(torch.device("cpu"), capacity=4, limit=2, step=0)
    events = []
    run = SimpleNamespace(state=State(), log=SimpleNamespace(event=events.append))

    def step(grad_value):
        for p in model.parameters():
            p.grad = torch.full_like(p, grad_value)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        guard.step(optimizer, scaler, norm)
        optimizer.zero_grad(set_to_none=True)

    step(0.5)
    weights = [p.detach().clone() for p in model.parameters()]
    moments = [optimizer.state[p]["exp_avg"].clone() for p in model.parameters()]
    step(float("nan"))
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters()))
    assert all(torch.equal(m, optimizer.state[p]["exp_avg"]) for m, p in zip(moments, model.parameters()))
    assert all(optimizer.state[p]["step"].item() == 1 for p in model.parameters())
    step(0.5)
    assert not all(torch.equal(w, p) for w, p in zip(weights, model.parameters()))
    step(float("inf"))
    assert events == [] and guard.full  # nothing read back yet
    guard.settle(run)
    assert [e.step for e in events] == [2, 4] and run.state.bad_steps == 1 and run.state.stop_reason is None
    step(float("nan"))
    guard.settle(run)
    assert run.state.bad_steps == 2 and run.state.stop_reason == "diverged" and events[-1].step == 5


def test_the_host_waits_for_the_device_per_log_line_not_per_step(tiny_bert, tmp_path, capsys, monkeypatch):
    """Counts bertfit's tensor read-backs in a run: doubling the steps adds reads only for the extra log lines.
    (Eager transformers checks each attention mask on the host; compiled runs, the GPU default, trace it away.)"""
    package = str(Path(__file__).resolve().parents[1] / "bertfit")
    reads = {"n": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads["n"] += sys._getframe(1).f_code.co_filename.startswith(package)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads_for(steps):
        args = recipe_args(tiny_bert, tmp_path / f"run{steps}")
        for flag, value in (("--max-steps", steps), ("--eval-every", steps), ("--checkpoint-every", steps)):
            args[args.index(flag) + 1] = value
        args[args.index("log_every=1")] = "log_every=10"
        args.append("--no-probe")  # one forward pass before training, and fitted once per process: not per step
        reads["n"] = 0
        assert run_cli(args, capsys)[0] == 0
        return reads["n"]

    extra = reads_for(40) - reads_for(20)
    assert 0 < extra <= 2 * 2, f"{extra} more host reads for 20 more steps (2 more log lines of 2 reads each)"


def epoch_recipe_args(model, out):
    """Length buckets, accumulation and an epoch-based length: the other data-order paths a resume must restore."""
    return sample_run_args(
        model,
        out,
        "--batch-size",
        8,
        "--grad-accum",
        2,
        "--epochs",
        2,
        "--eval-every",
        "epoch",
        "--checkpoint-every",
        5,
        "--lr",
        "1e-3",
        "--set",
        "log_every=1",
        "--max-length",
        128,
        "--padding",
        "bucket",
    )


@pytest.fixture(scope="module")
def uninterrupted_epochs(tmp_path_factory, tiny_bert):
    out = tmp_path_factory.mktemp("whole-epochs") / "run"
    process = spawn(epoch_recipe_args(tiny_bert, out))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()[-2000:]
    return out


@pytest.mark.parametrize("kill_at", [7, 16])  # inside the first epoch, and after its evaluation
def test_sigkill_then_resume_is_bit_identical_with_buckets_accumulation_and_epochs(
    uninterrupted_epochs, tiny_bert, tmp_path, kill_at
):
    out = tmp_path / "run"
    killed_at_step(epoch_recipe_args(tiny_bert, out), out, kill_at)
    assert not (out / "metrics.json").exists()
    resumed = spawn(epoch_recipe_args(tiny_bert, out) + ["--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    ours, theirs = load_file(out / "model.safetensors"), load_file(uninterrupted_epochs / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert log_without_timings(out / "log.jsonl") == log_without_timings(uninterrupted_epochs / "log.jsonl")
    summary = json.loads((out / "metrics.json").read_text())
    assert (
        summary["train"]["steps"] == json.loads((uninterrupted_epochs / "metrics.json").read_text())["train"]["steps"]
    )


def test_killed_during_the_first_checkpoint_then_resumed_starts_again_cleanly(uninterrupted, tiny_bert, tmp_path):
    out = tmp_path / "run"
    process = spawn(recipe_args(tiny_bert, out))
    wait_for_step(process, out / "log.jsonl", 4)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # As a kill inside the first checkpoint leaves it: torn under its temporary name, and none complete.
    for complete in (out / "checkpoints").glob("step-*"):
        torn = complete.rename(complete.with_name(f".bertfit-tmp-{complete.name}"))
        (torn / "model.safetensors").write_bytes(b"\x08torn")
    resumed = spawn(recipe_args(tiny_bert, out) + ["--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert "no complete checkpoint in" in err.decode() and "starting the run from the beginning" in err.decode()
    ours, theirs = load_file(out / "model.safetensors"), load_file(uninterrupted / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert log_without_timings(out / "log.jsonl") == log_without_timings(uninterrupted / "log.jsonl")
    assert not list(out.rglob(".bertfit-tmp-*"))


def test_resume_refuses_data_that_changed_since_the_interruption(tiny_bert, tmp_path, capsys):
    data = tmp_path / "data.csv"
    rows = [(f"sentence {i} is fine", i % 2) for i in range(40)]
    data.write_text("sentence,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    out = tmp_path / "run"
    args = sample_run_args(tiny_bert, out, "--batch-size", 8, "--max-steps", 4, "--eval-every", 2, data=data)
    assert run_cli(args, capsys)[0] == 0
    data.write_text("sentence,label\n" + "".join(f"{text},{1 - label}\n" for text, label in rows))  # labels flipped
    code, _, stderr = run_cli([*args, "--resume"], capsys)
    assert code == 2 and stderr.strip().endswith(
        f"the data changed since the run was interrupted (its training or validation rows in '{data}' differ); "
        "resume with the data it started on, pass --allow-data-change to go on with the new data, or start a new run"
    ), stderr
    assert run_cli(["resume", out, "--allow-data-change"], capsys)[0] == 0
