"""`bertfit sweep` on real components: Optuna's journal and a real PostgreSQL server as storages, worker processes
sharing one study, a worker killed mid-trial, the median pruner, and every bad input in one line."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import SAMPLES, free_port, run_cli

from bertfit.config import Config
from bertfit.errors import BertfitError
from bertfit.sweep.space import DEFAULT_SPACE, Dimension, build_space, parse_spec

DATA = SAMPLES / "sst2_200.csv"


def sweep_args(model, out, *extra):
    return ["sweep", "--model", model, "--data", DATA, "--output", out, "--max-steps", 6, "--eval-every", 3, *extra]


def trials_of(out: Path) -> list[dict]:
    with open(out / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------- the space


def test_a_space_is_read_from_specs_and_recipe_blocks_and_checked_against_the_recipe():
    assert parse_spec("lr", "1e-5..1e-4:log") == Dimension("lr", 1e-5, 1e-4, True)
    assert parse_spec("epochs", "1..4").integer and not parse_spec("warmup_ratio", "0..0.1").integer
    assert parse_spec("batch_size", "16,32").choices == (16, 32)
    assert parse_spec("padding", "bucket,dynamic").choices == ("bucket", "dynamic")
    base = Config()
    space = build_space(["lr=1e-5..2e-4:log"], {"batch_size": [16, 32], "epochs": {"low": 1, "high": 2}}, base)
    assert [d.key for d in space] == ["batch_size", "epochs", "lr"]
    assert {d.key for d in build_space([], None, base)} == set(DEFAULT_SPACE)
    # The command line wins over the recipe for the same key; Trainer names are the recipe's.
    (only,) = build_space(["learning_rate=1e-5..1e-3:log"], {"lr": [1e-5]}, base)
    assert only == Dimension("lr", 1e-5, 1e-3, True)


@pytest.mark.parametrize(
    "specs, block, message",
    [
        (["foo=1..2"], None, "unknown recipe key 'foo'"),
        (["lr=1e-4..1e-5"], None, "the range of lr runs from 0.0001 to 1e-05; give LOW..HIGH with LOW below HIGH"),
        (["lr=0..1e-4:log"], None, "a log range of lr cannot reach 0: a log scale needs LOW above 0"),
        (["batch_size=0,16"], None, "the space gives batch_size the value 0, which a recipe refuses"),
        (["output=a,b"], None, "cannot search 'output'"),
        (["lr"], None, "--space expects KEY=SPEC"),
        (["lr=1e-5..x"], None, "a range is LOW..HIGH with numbers"),
        ([], {"lr": {"low": 1e-5}}, "sweep: lr is"),
        ([], {"epochs": []}, "sweep: epochs is an empty list"),
    ],
)
def test_a_bad_space_is_one_line(specs, block, message):
    with pytest.raises(BertfitError, match=None) as caught:
        build_space(specs, block, Config())
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_bad_sweep_inputs_are_one_line_and_start_nothing(tiny_bert, tmp_path, capsys):
    out = tmp_path / "sweep"
    for extra, expected in (
        (["--trials", 0], "--trials 0: a sweep needs at least one trial"),
        (["--space", "foo=1..2"], "--space unknown recipe key 'foo'"),
        (["--space", "lr=1e-4..1e-5"], "give LOW..HIGH with LOW below HIGH"),
        (["--space", "lr=0..1e-4:log"], "a log scale needs LOW above 0"),
        (["--storage", f"postgresql://bertfit@127.0.0.1:{free_port()}/none"], "cannot be reached"),
        (["--seeds", 1], "--seeds 1: confirming a configuration takes two seeds or more"),
    ):
        code, _, stderr = run_cli(sweep_args(tiny_bert, out, "--trials", 2, *extra), capsys)
        assert code == 2 and expected in stderr and len(stderr.strip().splitlines()) == 1, (extra, stderr)
        assert not out.exists(), extra  # nothing started
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    code, _, stderr = run_cli(sweep_args(tiny_bert, tmp_path / "theirs", "--trials", 1), capsys)
    assert code == 2 and "holds files bertfit did not write" in stderr
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- sweeps


@pytest.mark.slow
def test_a_sweep_prunes_confirms_and_leaves_a_best_run_and_a_report(tiny_bert, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = sweep_args(tiny_bert, out, "--trials", 5, "--space", "lr=1e-5..1.0:log", "--set", "metric_for_best=loss")
    code, printed, stderr = run_cli([*args, "--confirm", 1, "--seeds", 2, "--max-steps", 8, "--eval-every", 2], capsys)
    assert code == 0, stderr
    trials = trials_of(out)
    search = [t for t in trials if t["kind"] == "search"]
    assert len(search) == 5 and len({t["folder"] for t in trials}) == len(trials)
    assert search[0]["lr"] == "5e-05"  # the base recipe runs first: what the search must beat
    pruned = [t for t in search if t["state"] == "pruned"]
    assert pruned and all("of its training" in t["verdict"] for t in pruned)
    stopped = json.loads((out / pruned[0]["folder"] / "metrics.json").read_text())
    assert stopped["stop_reason"] == "pruned" and stopped["train"]["steps"] < 8  # a whole run folder, cut short
    confirm = [t for t in trials if t["kind"].startswith("confirm of")]
    assert len(confirm) == 1 and confirm[0]["seed"] == "43"
    # Weights only where they are needed: the best's; checkpoints nowhere.
    assert (out / "best" / "model.safetensors").is_file() and not (out / "best" / "checkpoints").exists()
    assert not list((out / "trials").glob("*/model.safetensors"))[1:] and not list(
        (out / "trials").glob("*/checkpoints")
    )
    # Plots only where they are read: the winner's copy draws them, the trials' cards go without.
    assert (out / "best" / "plots" / "loss.png").is_file() and "![loss](plots/loss.png)" in (
        out / "best" / "README.md"
    ).read_text()
    assert not list((out / "trials").glob("*/plots")) and (out / "trials" / "0000" / "README.md").is_file()
    assert run_cli(["card", out / "trials" / "0000"], capsys)[0] == 0
    assert (out / "trials" / "0000" / "plots" / "loss.png").is_file()
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(out / "best"))
    assert classify("a fine film")[0]["label"] in ("negative", "positive", "LABEL_0", "LABEL_1", "0", "1")
    report = (out / "README.md").read_text()
    assert "## Best" in report and "± " in report and "![history](plots/history.png)" in report
    assert "The base recipe: loss" in report
    assert (out / "best.yaml").is_file() and "lr:" in (out / "best.yaml").read_text()
    assert "of its training" in printed and "best: trial" in printed


@pytest.mark.slow
def test_a_sweep_run_again_continues_its_study_and_a_changed_space_is_refused(tiny_bert, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = sweep_args(tiny_bert, out, "--space", "lr=1e-5..1e-3:log", "--confirm", 0)
    code, _, stderr = run_cli([*args, "--trials", 2], capsys)
    assert code == 0, stderr
    first = (out / "trials" / "0000" / "metrics.json").stat().st_mtime_ns
    code, _, stderr = run_cli([*args, "--trials", 3], capsys)
    assert code == 0, stderr
    assert [t["number"] for t in trials_of(out)] == ["0", "1", "2"]  # one more trial, the first two not run again
    assert (out / "trials" / "0000" / "metrics.json").stat().st_mtime_ns == first
    code, _, stderr = run_cli([*sweep_args(tiny_bert, out, "--space", "lr=1e-4..1e-2:log"), "--trials", 3], capsys)
    assert code == 2 and "searches another space" in stderr


def run_sweep(args, **env):
    return subprocess.Popen(
        [sys.executable, "-m", "bertfit", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


@pytest.mark.slow
def test_two_workers_share_one_study_with_the_trial_count_exact(tiny_bert, tmp_path):
    out = tmp_path / "sweep"
    args = sweep_args(tiny_bert, out, "--trials", 5, "--space", "lr=1e-5..1e-3:log", "--confirm", 0)
    process = run_sweep([*args, "--workers", 2])
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()[-3000:]
    trials = trials_of(out)
    assert len([t for t in trials if t["kind"] == "search" and t["state"] == "complete"]) == 5
    assert len({t["lr"] for t in trials}) == 5  # no trial run twice
    import optuna

    study = optuna.load_study(
        study_name="sweep",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))),
    )
    ran = [t for t in study.trials if t.state.name != "FAIL"]
    assert len(ran) == 5  # a trial created after the count was reached is failed at once, never run


def test_a_trial_is_pruned_between_evaluations_never_at_its_last():
    """The median pruner on a real in-memory study: a trial below the others' median is stopped at an evaluation
    before its end, and at its last one told nothing (its training is done: pruning would only lose its score)."""
    import optuna

    from bertfit.runfiles import Scores
    from bertfit.sweep.study import Pruning, _pruner

    study = optuna.create_study(direction="maximize", pruner=_pruner("median"))
    for value in (0.8, 0.9):
        trial, scores = study.ask(), Scores(accuracy=value)
        for done in (0.5, 1.0):
            assert Pruning(trial, "accuracy")(scores, done) is None
        study.tell(trial, value)
    judge = Pruning(study.ask(), "accuracy")
    assert judge(Scores(accuracy=0.6), 0.5) == "pruned" and judge.last == (0.5, 0.6)
    assert Pruning(study.ask(), "accuracy")(Scores(accuracy=0.6), 1.0) is None  # below the median, but done


def test_the_random_start_is_drawn_once_as_tpe_itself_would_draw_it():
    import optuna

    from bertfit.sweep.study import STARTUP, Sweep, startup_trials

    specs = ["lr=1e-5..2e-4:log", "batch_size=16,32", "epochs=1..2", "warmup_ratio=0..0.1"]
    space = build_space(specs, None, Config())
    plan = Sweep(Config(seed=42), space, 12, Path("x"), "x", None, "accuracy", "maximize")
    one_worker = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=42), direction="maximize")
    expected = []
    for _ in range(STARTUP):
        trial = one_worker.ask()
        expected.append({d.key: d.suggest(trial) for d in space})
        one_worker.tell(trial, 0.5)
    assert startup_trials(plan, STARTUP) == expected and len({str(p) for p in expected}) == STARTUP


@pytest.mark.slow
def test_a_sweep_tries_the_same_configurations_on_one_worker_or_two(tiny_bert, tmp_path):
    searched = {}
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}"
        args = sweep_args(tiny_bert, out, "--trials", 4, "--space", "lr=1e-5..1e-3:log", "--confirm", 0)
        process = run_sweep([*args, "--workers", workers])
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr.decode()[-3000:]
        searched[workers] = sorted(float(t["lr"]) for t in trials_of(out))
    assert searched[1] == searched[2] and len(set(searched[1])) == 4


def test_a_cpu_sweep_runs_two_trials_side_by_side_unless_it_cannot(monkeypatch):
    from bertfit.sweep.study import Sweep, default_workers

    def workers(cores, **given):
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        plan = {"space": [], "trials": 12, "folder": Path("x"), "study_name": "x", "storage": None, **given}
        return default_workers(Sweep(base=Config(device="cpu"), metric="accuracy", direction="maximize", **plan))

    assert workers(2) == 2 and workers(16) == 2
    assert workers(1) == 1 and workers(2, trials=1) == 1 and workers(2, nproc=2) == 1


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_run_again(tiny_bert, tmp_path):
    out = tmp_path / "sweep"
    args = sweep_args(tiny_bert, out, "--trials", 3, "--space", "lr=1e-5..1e-3:log", "--confirm", 0, "--workers", 1)
    args[args.index("--max-steps") + 1] = 40
    process = run_sweep(args)
    log = out / "trials" / "0001" / "log.jsonl"
    deadline = time.time() + 300
    while not (log.is_file() and '"event": "train"' in log.read_text()):
        assert process.poll() is None and time.time() < deadline, process.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    restarted = run_sweep(args)
    stdout, stderr = restarted.communicate(timeout=600)
    assert restarted.returncode == 0, stderr.decode()[-3000:]
    assert "trial 1: its worker stopped; queued to run again" in stdout.decode()
    trials = trials_of(out)
    states = {t["number"]: t["state"] for t in trials}
    retried = [t for t in trials if "retry of 1" in t["state"]]
    assert states["1"] == "fail" and len(retried) == 1 and retried[0]["state"].startswith("complete")
    assert retried[0]["lr"] == next(t["lr"] for t in trials if t["number"] == "1")
    assert len([t for t in trials if t["state"].startswith("complete")]) == 3


@pytest.fixture
def postgres(tmp_path: Path):
    """The URL of a PostgreSQL server of the machine's own installation, in a temporary folder, on loopback."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    initdb = shutil.which("initdb") or (str(bins[-1] / "initdb") if bins else None)
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    bin_dir = Path(initdb).parent
    port, user = free_port(), "bertfit"
    run_as = [] if os.geteuid() != 0 else ["runuser", "-u", "nobody", "--"]
    # initdb refuses root: then the server runs as an unprivileged user, in a folder it can reach and owns.
    data = Path(tempfile.mkdtemp(prefix="bertfit-pg-", dir="/tmp" if run_as else tmp_path)) / "data"
    if run_as:
        os.chmod(data.parent, 0o755)
        data.mkdir()
        shutil.chown(data, "nobody")
    subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust"], check=True, capture_output=True
    )
    server = subprocess.Popen(
        [*run_as, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"postgresql://{user}@127.0.0.1:{port}/postgres"
    import sqlalchemy

    deadline = time.time() + 60
    while True:
        try:
            sqlalchemy.create_engine(url).connect().close()
            break
        except Exception:
            assert time.time() < deadline and server.poll() is None, "PostgreSQL did not start"
            time.sleep(0.3)
    yield url
    # `runuser` does not pass a signal on to its child: the server is stopped by its own control program.
    subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "fast"], capture_output=True)
    server.wait(timeout=60)
    shutil.rmtree(data.parent, ignore_errors=True)


@pytest.mark.slow
def test_a_postgresql_storage_holds_the_study(tiny_bert, tmp_path, capsys, postgres):
    out = tmp_path / "sweep"
    args = sweep_args(tiny_bert, out, "--trials", 2, "--space", "lr=1e-5..1e-3:log", "--confirm", 0)
    code, _, stderr = run_cli([*args, "--storage", postgres, "--study-name", "pg"], capsys)
    assert code == 0, stderr
    import optuna

    study = optuna.load_study(study_name="pg", storage=postgres)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 2
    assert not (out / "study.journal").exists() and len(trials_of(out)) == 2


@pytest.mark.slow
def test_with_mlflow_each_trial_is_a_child_of_the_sweeps_run(tiny_bert, tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow keeps a database store's artifacts in ./mlruns

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "sweep"
    args = sweep_args(tiny_bert, out, "--trials", 2, "--space", "lr=1e-5..1e-3:log", "--confirm", 0)
    code, _, stderr = run_cli([*args, "--report-to", "mlflow", "--mlflow-tracking-uri", store], capsys)
    assert code == 0, stderr
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("bertfit").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("bertfit_sweep") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["0000", "0001"]
    assert "best_accuracy" in parent.data.metrics and parent.data.params["trials"] == "2"


@pytest.mark.slow
def test_data_parallel_trials_report_to_the_pruner_from_their_writing_rank(tiny_bert, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = sweep_args(tiny_bert, out, "--trials", 3, "--space", "lr=1e-5..1.0:log", "--set", "metric_for_best=loss")
    code, _, stderr = run_cli([*args, "--confirm", 0, "--nproc", 2, "--max-steps", 8, "--eval-every", 2], capsys)
    assert code == 0, stderr
    trials = trials_of(out)
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned"], trials
    assert "world_size: 2" in (out / "trials" / "0002" / "recipe.yaml").read_text()
    stopped = json.loads((out / "trials" / "0002" / "metrics.json").read_text())
    assert stopped["stop_reason"] == "pruned" and stopped["train"]["steps"] < 8
    assert not list((out / ".running").glob("*.yaml"))  # the trials' recipes were the sweep's bookkeeping


def test_the_sweep_folder_replaces_only_the_reports_it_wrote(tmp_path):
    from bertfit.sweep.study import claim_folder, write_owned

    folder = tmp_path / "sweep"
    claim_folder(folder)
    (folder / "README.md").write_text("my notes")
    write_owned(folder, "trials.csv", "a,b\n")
    write_owned(folder, "trials.csv", "a,b\n1,2\n")  # its own: replaced
    write_owned(folder, "plots/history.png", b"png")
    assert (folder / "trials.csv").read_text() == "a,b\n1,2\n" and (folder / "plots" / "history.png").is_file()
    with pytest.raises(BertfitError, match="README.md' was not written by bertfit"):
        write_owned(folder, "README.md", "report")
    assert (folder / "README.md").read_text() == "my notes"
