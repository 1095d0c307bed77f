"""The run folder end to end, with real processes and real file systems: the lock, inputs never written over,
what --overwrite may remove, resuming a copied or moved run, a real full disk, a read-only file system, and a
damaged newest checkpoint."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import recipe_args, run_cli, sample_run_args, spawn, wait_for_step
from safetensors.torch import load_file

# Training subprocesses, servers and process groups: the full suite runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow


def weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def same_weights(a: Path, b: Path) -> bool:
    ours, theirs = weights(a), weights(b)
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def tree(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_bert):
    """A run stopped by SIGTERM after a few checkpoints: copied by each test that needs one."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    process = spawn(recipe_args(tiny_bert, out))
    wait_for_step(process, out / "log.jsonl", 8)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err.decode()[-2000:]
    return out


def test_a_second_process_on_the_same_output_is_refused_and_the_first_goes_on(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    long_run = recipe_args(tiny_bert, out)
    for flag, value in (("--max-steps", 100_000), ("--eval-every", 100_000), ("--checkpoint-every", 500)):
        long_run[long_run.index(flag) + 1] = value
    first = spawn(long_run)
    wait_for_step(first, out / "log.jsonl", 2)
    for args in (long_run + ["--overwrite"], long_run + ["--resume"], ["card", out], ["resume", out]):
        code, _, stderr = run_cli(args, capsys)
        assert code == 2, stderr
        assert stderr.strip() == (
            f"error: run folder '{out}' is in use by another bertfit process (pid "
            f"{first.pid}); wait for it to finish or choose another --output"
        )
    reached = wait_for_step(first, out / "log.jsonl", 1)
    assert wait_for_step(first, out / "log.jsonl", reached + 5) > reached  # still training, untouched
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err.decode()[-2000:]
    assert not (out / ".bertfit.lock").exists()
    from bertfit.engine import checkpoint

    newest = checkpoint.complete(out / "checkpoints")[-1]
    assert checkpoint.load_state(newest)["state"]["step"] > reached


def test_a_killed_run_leaves_no_lock_behind(tiny_bert, tmp_path):
    out = tmp_path / "run"
    process = spawn(recipe_args(tiny_bert, out))
    wait_for_step(process, out / "log.jsonl", 4)  # after the first checkpoint (step 3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / ".bertfit.lock").exists()  # the file stays, but the kernel released its lock with the process
    resumed = spawn(recipe_args(tiny_bert, out) + ["--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]


def test_a_run_whose_folder_is_removed_mid_training_ends_in_one_line(tiny_bert, tmp_path):
    out = tmp_path / "run"
    process = spawn(recipe_args(tiny_bert, out))
    wait_for_step(process, out / "log.jsonl", 4)
    shutil.rmtree(out)
    _, err = process.communicate(timeout=300)
    lines = err.decode().strip().splitlines()
    assert process.returncode == 2 and len(lines) == 1, err.decode()[-2000:]
    assert f"the run folder '{out}' was removed while the run was writing it" in lines[0]


def test_overwrite_removes_only_what_bertfit_wrote(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    args = sample_run_args(
        tiny_bert,
        out,
        "--batch-size",
        32,
        "--max-steps",
        2,
        "--eval-every",
        2,
    )
    assert run_cli(args, capsys)[0] == 0
    marker = json.loads((out / ".bertfit-run.json").read_text())["owned"]
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "checkpoints",
        "checkpoints/step-00000002/model.safetensors",
        "plots",
        "plots/loss.png",
        "log.jsonl",
        "README.md",
    } <= set(marker)
    # Every file and folder, at every depth, and nothing else.
    assert set(marker) == {p.relative_to(out).as_posix() for p in out.rglob("*") if not p.name.startswith(".bertfit")}
    assert run_cli(args + ["--overwrite", "--seed", "7"], capsys)[0] == 0
    assert "seed: 7" in (out / "recipe.yaml").read_text()
    # A file of the user's in the run folder: --overwrite refuses rather than deciding whose it is.
    (out / "notes.txt").write_text("mine")
    code, _, stderr = run_cli(args + ["--overwrite"], capsys)
    assert code == 2 and "holds files bertfit did not write (notes.txt)" in stderr
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()


def test_a_file_put_into_the_output_during_setup_is_never_deleted(tiny_bert, tmp_path, capsys, monkeypatch):
    from bertfit import models

    out = tmp_path / "run"
    real = models.load_tokenizer

    def meanwhile(*args, **kwargs):  # another program writes into the folder while data and model load
        (out / "theirs.txt").write_text("not bertfit's")
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_tokenizer", meanwhile)
    args = sample_run_args(
        tiny_bert,
        out,
        "--batch-size",
        32,
        "--max-steps",
        2,
    )
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and f"output folder '{out}' is not empty" in stderr
    assert {p.name for p in out.iterdir()} == {"theirs.txt"}


def test_resume_of_a_copy_writes_the_copy_and_leaves_the_original_alone(interrupted, uninterrupted, tmp_path):
    original = tree(interrupted)
    copy = Path(shutil.copytree(interrupted, tmp_path / "copy"))
    resumed = spawn(["resume", copy])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert tree(interrupted) == original
    assert same_weights(copy, uninterrupted)
    assert f"output: {copy}" in (copy / "recipe.yaml").read_text()
    # A moved run resumes where it now is.
    moved = tmp_path / "moved"
    shutil.copytree(interrupted, tmp_path / "staging")
    (tmp_path / "staging").rename(moved)
    resumed = spawn(["resume", moved])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert same_weights(moved, uninterrupted)


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(interrupted, uninterrupted, tmp_path):
    run = Path(shutil.copytree(interrupted, tmp_path / "run"))
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert len(checkpoints) >= 2
    newest = checkpoints[-1]
    weights_file = newest / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    resumed = spawn(["resume", run])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    warning = [line for line in err.decode().splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and f"checkpoint '{newest}' has damaged weights" in warning[0]
    assert f"resuming from {checkpoints[-2].name}" in warning[0]
    assert (run / "checkpoints" / f"damaged-{newest.name}").is_dir()
    assert same_weights(run, uninterrupted)


# ---------------------------------------------------------------- real small file systems (tmpfs, as root)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a real tmpfs of the size asked for; skipped (with the reason) where mounting is not allowed."""
    mounts = []

    def mount(size_mb: int, read_only: bool = False) -> Path:
        point = tmp_path / f"fs{len(mounts)}"
        point.mkdir()
        options = f"size={size_mb}m" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); needs root")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


def used_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).used


def test_a_real_full_disk_at_a_checkpoint_is_one_line_and_leaves_nothing_torn(
    tiny_bert, tmpfs, tmp_path, uninterrupted
):
    disk = tmpfs(20)  # a checkpoint of the tiny model is ~12 MB: the first fits, the second does not
    out = disk / "run"
    process = spawn(recipe_args(tiny_bert, out))
    _, err = process.communicate(timeout=300)
    lines = err.decode().strip().splitlines()
    assert process.returncode == 2, err.decode()[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: disk full while writing checkpoint step-00000006")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000003"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".bertfit-tmp")]
    checkpoint_bytes = sum(p.stat().st_size for p in (out / "checkpoints").rglob("*") if p.is_file())
    assert used_bytes(disk) < checkpoint_bytes + (2 << 20), "the torn write still holds the disk"
    # Room again (the run copied to a larger disk): it resumes and ends bit-identical.
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    resumed = spawn(["resume", copy])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert same_weights(copy, uninterrupted)


def test_a_real_full_disk_at_the_final_save_keeps_the_checkpoint_to_resume_from(tiny_bert, tmpfs, tmp_path):
    disk = tmpfs(15)  # one ~12 MB checkpoint fits; the model folder written after it does not
    out = disk / "run"
    args = sample_run_args(
        tiny_bert,
        out,
        "--batch-size",
        16,
        "--max-steps",
        4,
        "--eval-every",
        4,
        "--set",
        "keep_checkpoints=1",
    )
    process = spawn(args)
    _, err = process.communicate(timeout=300)
    lines = err.decode().strip().splitlines()
    assert process.returncode == 2, err.decode()[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: disk full while writing the model in '{out}'")
    assert f"bertfit resume {out}" in lines[0]
    assert not (out / "model.safetensors").exists() and not list(out.glob(".bertfit-tmp*"))
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    resumed = spawn(["resume", copy])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert (copy / "model.safetensors").is_file() and (copy / "README.md").is_file()


def test_a_read_only_file_system_is_one_line(tiny_bert, tmpfs, capsys):
    disk = tmpfs(5, read_only=True)
    args = sample_run_args(
        tiny_bert,
        disk / "run",
        "--max-steps",
        2,
    )
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert f"error: read-only file system while writing the run folder in '{disk}'" in stderr


def test_a_full_disk_under_the_feature_cache_trains_from_memory_and_leaves_nothing(
    tiny_bert, tmpfs, tmp_path, capsys, monkeypatch
):
    """12 KB left: the cache entry's files fail when closed (their buffers flush), and so would closing them
    again in the cleanup; the run trains from memory, exit 0, and leaves no temporary entry, attempt after
    attempt."""
    cache = tmpfs(1)
    (cache / "filler").write_bytes(b"\0" * ((1 << 20) - (12 << 10)))
    monkeypatch.setenv("BERTFIT_CACHE", str(cache))
    data = tmp_path / "data.csv"
    data.write_text("sentence,label\n" + "".join(f"sentence {i} is fine and long enough,{i % 2}\n" for i in range(300)))
    out = tmp_path / "run"
    for _attempt in range(2):
        code, _, stderr = run_cli(sample_run_args(tiny_bert, out, "--max-steps", 2, "--overwrite", data=data), capsys)
        assert code == 0, stderr
        assert not list((cache / "features").iterdir())  # no entry, whole or torn
    assert (out / "model.safetensors").is_file()


def test_doctor_reads_a_read_only_run_and_card_says_so_in_one_line(tiny_bert, tmpfs, tmp_path, capsys):
    disk = tmpfs(40)
    out = disk / "run"
    assert run_cli(sample_run_args(tiny_bert, out, "--max-steps", 2), capsys)[0] == 0
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    before = tree(out)
    code, stdout, stderr = run_cli(["doctor", out], capsys)
    assert code == 0, stderr
    assert "[" in stdout or "no problems found" in stdout
    code, _, stderr = run_cli(["card", out], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"error: read-only file system while writing the run folder in '{out}'")
    assert tree(out) == before


def test_a_full_disk_under_export_and_card_names_the_fix_and_leaves_nothing(tiny_bert, tmpfs, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(sample_run_args(tiny_bert, out, "--max-steps", 2), capsys)[0] == 0
    disk = tmpfs(1)  # the tiny model's ONNX file is ~4 MB: it cannot fit
    code, _, stderr = run_cli(["export", out, "--output", disk / "onnx"], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith(f"error: disk full while writing the ONNX export in '{disk / 'onnx'}'; free space")
    assert not list(disk.iterdir())
    # The card of a run on a full disk: one line, and the files it had are whole.
    run = disk / "reports"
    run.mkdir()
    for name in ("recipe.yaml", "log.jsonl", "metrics.json", "data_profile.json"):
        shutil.copy(out / name, run / name)
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(0, free - (8 << 10)))
    before = tree(run)
    code, _, stderr = run_cli(["card", run], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error: disk full while writing") and "free space" in stderr, stderr
    assert {k: v for k, v in tree(run).items() if not k.startswith(".bertfit")} == before


def test_every_file_of_a_run_follows_the_umask(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    old = os.umask(0o027)
    try:
        code, _, stderr = run_cli(sample_run_args(tiny_bert, out, "--max-steps", 2), capsys)
    finally:
        os.umask(old)
    assert code == 0, stderr
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o640}, modes  # model.safetensors too, which safetensors writes 0600
