"""`bertfit sweep`: a hyperparameter search on Optuna, whose storages already share one study between processes and
machines. Written here is only what makes the search better than a loop of `Trainer`s: trials that stop when the
pruner judges them hopeless and still leave a whole run folder with the doctor's verdict, configurations confirmed
over several seeds before one is called the best, weights kept only where they are needed, and a worker killed
mid-trial noticed by its released lock and its trial run again.

The sweep folder (`--output`) holds the study's journal, `trials/NNNN` (one run folder per trial), `best/` (the
winner's run folder), `best.yaml`, `trials.csv` and the `README.md` report."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import yaml

from bertfit.config import Config
from bertfit.errors import BertfitError, first_line
from bertfit.files import atomic_write, writing
from bertfit.runfiles import Finding, RunMetrics, Scores
from bertfit.runfolder import RunFolder, check_location
from bertfit.sweep import SWEEP_SEED, SWEEP_TRIAL
from bertfit.sweep.space import Dimension, space_key

MARKER = ".bertfit-sweep.json"
JOURNAL = "study.journal"
RUNNING = ".running"  # a lock file per trial in progress, held by the worker running it
STALE_START = 60  # seconds a trial may run without its lock file (between Optuna creating it and the worker locking)
POLL = 2.0  # seconds between looks at the study while other workers finish
WEIGHTS = ("model.safetensors", "adapter_model.safetensors")


class Surplus(Exception):
    """A trial created after the study had all its trials (two workers asking at once): failed, never counted."""


@dataclass
class Sweep:
    base: Config  # the base recipe; `output` is the sweep folder
    space: list[Dimension]
    trials: int
    folder: Path
    study_name: str
    storage: str | None  # a database URL or a journal file; None: the journal in the folder
    metric: str  # what the study optimises: the recipe's metric_for_best, else the task's main metric
    direction: str  # "maximize" or "minimize"
    pruner: str = "median"
    confirm: int = 0  # configurations re-run with more seeds after the search
    seeds: int = 3  # seeds per confirmed configuration, its search trial's included
    keep_weights: str = "best"  # or "all"
    nproc: int = 1  # processes per trial: above 1, each trial is `bertfit train --nproc N` (torchrun)
    timeout: float | None = None
    started: float = field(default_factory=time.monotonic)
    study: object = None  # the Optuna study, once opened
    sampler_seed: int | None = None  # the seed of this worker's sampler, where it has one

    @property
    def kept(self) -> int:
        """Search trials whose weights are kept while the search runs: those that may still win."""
        return max(1, self.confirm)


# ---------------------------------------------------------------- the folder and the study


def claim_folder(folder: Path) -> None:
    """The sweep folder is bertfit's when it holds its marker; a new one is created; anything else is refused."""
    check_location(folder, {})
    if folder.exists() and not folder.is_dir():
        raise BertfitError(f"sweep output '{folder}' is a file; choose a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise BertfitError(
            f"'{folder}' holds files bertfit did not write (no {MARKER}); choose an empty or new folder for the sweep"
        )
    with writing("the sweep folder", folder if folder.exists() else folder.parent, "free space or choose another"):
        (folder / RUNNING).mkdir(parents=True, exist_ok=True)
        if not (folder / MARKER).is_file():
            atomic_write(folder / MARKER, json.dumps({"bertfit_sweep": 1}))


def write_owned(folder: Path, rel: str, data: str | bytes) -> None:
    """A report file of the sweep folder (README.md, trials.csv, best.yaml, plots/NAME.png): replaced only when the
    folder's marker lists it as bertfit's, so a file of the user's by that name is refused, never overwritten."""
    marker = folder / MARKER
    owned = set(json.loads(marker.read_text(encoding="utf-8")).get("owned", []))
    path = folder / rel
    if (path.exists() or path.is_symlink()) and rel not in owned:
        raise BertfitError(f"'{path}' was not written by bertfit; move it out of the sweep folder and run again")
    if path.parent != folder and not path.parent.is_dir():
        if path.parent.exists():
            raise BertfitError(
                f"'{path.parent}' is not bertfit's folder; move it out of the sweep folder and run again"
            )
        path.parent.mkdir()
    if rel not in owned:  # listed before it is written: a file half-made by a killed process is still ours
        atomic_write(marker, json.dumps({"bertfit_sweep": 1, "owned": sorted(owned | {rel})}))
    atomic_write(path, data)


def open_storage(url: str | None, folder: Path):
    """A database URL (heartbeats: a worker that stops beating has its trial run again), or a journal file: the
    folder's own by default, safe for several processes on one machine and, on a shared filesystem, several."""
    import optuna

    if url and "://" in url:
        from optuna.storages import RDBStorage, RetryFailedTrialCallback

        try:
            return RDBStorage(
                url,
                heartbeat_interval=10,
                grace_period=30,
                failed_trial_callback=RetryFailedTrialCallback(max_retry=3),
                engine_kwargs={"pool_pre_ping": True},
            )
        except Exception as err:  # SQLAlchemy's and the drivers' own errors
            raise BertfitError(
                f"study storage '{url}' cannot be reached ({first_line(err, 160)}); start the database or fix --storage"
            ) from None
    path = Path(url) if url else folder / JOURNAL
    if not path.parent.is_dir():
        raise BertfitError(f"--storage '{url}': folder '{path.parent}' does not exist")
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    with writing("the study journal", path.parent, "free space or choose another --storage"):
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def _pruner(name: str):
    import optuna

    return {
        # Median (the default): trials are few (tens) and each reports a handful of evaluations, so a pruner that
        # needs a schedule of resources (halving, hyperband) has few rungs to act on; median pruning stops a trial
        # whose score is below the median of earlier trials at the same point of training, from the third trial.
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }[name]()


STARTUP = 10  # the random trials before TPE models the results (Optuna's default)


def startup_trials(sweep: Sweep, count: int) -> list[dict]:
    """The search's random first trials, drawn once from the recipe's seed by the sampler TPE itself starts with,
    and queued in the study: whichever worker takes each, the sweep tries the configurations one worker would,
    whatever the number of workers and their timing (drawn by each worker, they depended on both)."""
    import optuna

    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sweep.base.seed))
    drawn = []
    for _ in range(max(0, count)):
        trial = draw.ask()
        drawn.append({d.key: d.suggest(trial) for d in sweep.space})
        draw.tell(trial, 0.0)
    return drawn


def open_study(sweep: Sweep):
    """The study (created, or continued); one of another objective or space under the same name is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(sweep.storage, sweep.folder)
    study = optuna.create_study(
        study_name=sweep.study_name,
        storage=storage,
        direction=sweep.direction,
        pruner=_pruner(sweep.pruner),
        load_if_exists=True,
    )
    identity = {"metric": sweep.metric, "direction": sweep.direction, "space": space_key(sweep.space)}
    found = {k: study.user_attrs.get(k) for k in identity}
    created = not any(found.values())
    # The worker that starts the study samples from the seed after the recipe's and the workers it starts from the
    # seeds after that, so each proposes its own sequence; any other (another machine, a continued study) samples
    # from its own, or two workers would propose the same trials.
    helper_seed = os.environ.get(SWEEP_SEED)
    sweep.sampler_seed = sweep.base.seed + 1 if created else int(helper_seed) if helper_seed else None
    study.sampler = optuna.samplers.TPESampler(seed=sweep.sampler_seed, n_startup_trials=STARTUP)
    if created:
        for key, value in identity.items():
            study.set_user_attr(key, value)
        base = {d.key: getattr(sweep.base, d.key) for d in sweep.space}
        first = []
        if all(d.holds(base[d.key]) for d in sweep.space):  # the base recipe first: what the search must beat
            study.enqueue_trial(base, user_attrs={"base": True})
            first.append(base)
        for params in startup_trials(sweep, min(STARTUP, sweep.trials - len(first))):
            study.enqueue_trial(params)
    elif found != identity:
        changed = next(k for k in identity if found[k] != identity[k])
        raise BertfitError(
            f"study '{sweep.study_name}' in {sweep.storage or sweep.folder / JOURNAL} searches another {changed} "
            f"({found[changed]!r}, not {identity[changed]!r}); give another --study-name or --output"
        )
    return study


# ---------------------------------------------------------------- one trial


def _kind(trial) -> str:
    return "confirm" if "confirms" in trial.user_attrs else "search"


@contextlib.contextmanager
def _running(folder: Path, number: int) -> Iterator[None]:
    """The trial's lock, held while it runs: the kernel drops it if the worker dies, which is how the others know."""
    path = folder / RUNNING / f"{number:04d}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def _alive(folder: Path, number: int) -> bool | None:
    """True while a worker holds the trial's lock, False once none does, None when no lock file exists."""
    path = folder / RUNNING / f"{number:04d}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def reap(study, sweep: Sweep) -> list[int]:
    """Running trials whose worker died (their lock released, or never taken a minute after they started): failed,
    and their parameters queued to run again. Database storages do this themselves through heartbeats."""
    from optuna.trial import TrialState

    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        alive = _alive(sweep.folder, trial.number)
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        if alive or (alive is None and time.time() - started < STALE_START):
            continue
        with contextlib.suppress(Exception):  # another worker failed it first
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={**trial.user_attrs, "retry_of": trial.number})
            (sweep.folder / RUNNING / f"{trial.number:04d}.lock").unlink(missing_ok=True)
            reaped.append(trial.number)
    return reaped


def _counted(study, before: int | None = None) -> int:
    """Search trials that count towards --trials: all but the failed (a failed trial's retry counts in its place),
    numbered before `before` if given."""
    from optuna.trial import TrialState

    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if _kind(t) == "search" and t.state != TrialState.FAIL and (before is None or t.number < before)
    )


def trial_recipe(sweep: Sweep, params: dict, number: int, seed: int) -> Config:
    return Config.model_validate(
        {**sweep.base.model_dump(), **params, "seed": seed, "output": str(sweep.folder / "trials" / f"{number:04d}")}
    )


class Pruning:
    """Tells Optuna each evaluation's score at the share of the trial's training it was reached (in percent), and
    ends the run when the pruner says so, never at its last evaluation: the training is done there, so pruning would
    save nothing and throw a finished score away (where the Trainer's search still prunes).
    The share, not the epoch: the learning rate decays over each trial's own length, so one epoch into a two-epoch
    trial it is still high while a one-epoch trial has annealed; compared at the same epoch, as the Trainer's search
    does, the longer trials look worse than they will end."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric
        self.last: tuple[float, float] | None = None  # the share of training and the score last reported

    def __call__(self, scores: Scores, done: float) -> str | None:
        value = scores.metric(self.metric)
        if value is None or not math.isfinite(value):
            return None
        self.last = (done, value)
        self.trial.report(value, round(done * 100))
        return "pruned" if done < 1 and self.trial.should_prune() else None


def verdict(findings: list[Finding]) -> str:
    serious = [f"{f.severity}: {f.id}" for f in findings if f.severity in ("error", "warning")]
    return "; ".join(serious) or "healthy"


def objective(sweep: Sweep, study, trial) -> float:
    import optuna

    kind = _kind(trial)
    fixed = trial.user_attrs.get("retry_of") is not None or kind == "confirm" or trial.user_attrs.get("base")
    if not fixed and _counted(study, before=trial.number) >= sweep.trials:
        raise Surplus
    params = {d.key: d.suggest(trial) for d in sweep.space}
    seed = trial.user_attrs.get("seed", sweep.base.seed)
    cfg = trial_recipe(sweep, params, trial.number, seed)
    trial.set_user_attr("seed", seed)
    trial.set_user_attr("folder", f"trials/{trial.number:04d}")
    judge = Pruning(trial, sweep.metric) if kind == "search" and sweep.pruner != "none" else None
    started = time.perf_counter()
    with _running(sweep.folder, trial.number):
        try:
            outcome = _train(cfg, judge) if sweep.nproc == 1 else _train_launched(sweep, study, trial, cfg, judge)
        except BertfitError as err:  # a trial that diverged or failed: its line is its verdict
            trial.set_user_attr("verdict", first_line(err, 300))
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
            _shed(sweep, trial.number, keep=False)
            raise
    summary = outcome.metrics
    trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
    trial.set_user_attr("steps", summary.train.steps)
    trial.set_user_attr("verdict", verdict(outcome.findings))
    pruned = summary.stop_reason == "pruned"
    _shed(sweep, trial.number, keep=not pruned and _may_win(sweep, study, summary.best_metric, kind))
    if pruned:
        done, value = judge.last
        trial.set_user_attr("pruned_at", f"{done:.0%} of its training ({sweep.metric} {value:.4f})")
        raise optuna.TrialPruned()
    if summary.best_metric is None or not math.isfinite(summary.best_metric):
        raise BertfitError(f"trial {trial.number} scored no {sweep.metric}")
    return summary.best_metric


def _train(cfg: Config, judge: Pruning | None):
    """A trial's run, as `bertfit train` runs it, quiet (the sweep prints a line per trial), its reports without
    plots: the winner's copy in `best/` draws them (`bertfit card` draws any trial's)."""
    from bertfit.engine.loop import train
    from bertfit.report import write_reports

    return train(cfg, overwrite=True, reporter=partial(write_reports, plots=False), judge=judge)


def _train_launched(sweep: Sweep, study, trial, cfg: Config, judge: Pruning | None):
    """A trial as `bertfit train RECIPE --nproc N`: its recipe in the sweep's bookkeeping folder, the study and the
    trial in the environment, so the trial's writing rank reports to the pruner itself (and every rank stops where
    it says). Its outcome is read back from the files it wrote."""
    import subprocess
    import sys

    from bertfit.engine.loop import Outcome
    from bertfit.runfiles import Diagnosis, read_file

    recipe = sweep.folder / RUNNING / f"{trial.number:04d}.yaml"
    atomic_write(recipe, cfg.to_yaml())
    reporting = {
        "storage": _storage_address(sweep),
        "study": sweep.study_name,
        "trial": trial._trial_id,
        "pruner": sweep.pruner,  # a pruner is not stored with the study: the trial's judge builds the sweep's
    }
    env = {**os.environ, SWEEP_TRIAL: json.dumps({**reporting, "metric": sweep.metric if judge else None})}
    command = [sys.executable, "-m", "bertfit", "train", str(recipe), "--overwrite", "--nproc", str(sweep.nproc)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    finally:
        recipe.unlink(missing_ok=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise BertfitError(lines[-1].removeprefix("error: ") if lines else f"the trial exited with {done.returncode}")
    folder = Path(cfg.output)
    metrics = read_file(folder / "metrics.json", RunMetrics)
    if judge is not None and metrics.stop_reason == "pruned":  # where the trial's own judge stopped it
        values = study._storage.get_trial(trial._trial_id).intermediate_values
        last = max(values, default=0)
        judge.last = (last / 100, values.get(last, float("nan")))
    return Outcome(metrics, read_file(folder / "diagnosis.json", Diagnosis).findings)


def _storage_address(sweep: Sweep) -> str:
    return sweep.storage if sweep.storage else str(sweep.folder / JOURNAL)


def trial_judge(reporting: str, writer: bool):
    """The pruner's judge for a trial run by `bertfit train --nproc N` for a sweep (`_train_launched`): the writing
    rank's reports to the study; every other rank has one too, which never judges but makes it take part in hearing
    the writer's verdict (ranks with and without a judge would wait for each other forever)."""
    import optuna

    spec = json.loads(reporting)
    if spec.get("metric") is None:
        return None
    if not writer:
        return _follower
    address = spec["storage"]
    if "://" in address:
        storage = optuna.storages.RDBStorage(address)
    else:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        storage = optuna.storages.JournalStorage(JournalFileBackend(address, lock_obj=JournalFileOpenLock(address)))
    study = optuna.load_study(study_name=spec["study"], storage=storage, pruner=_pruner(spec["pruner"]))
    return Pruning(optuna.trial.Trial(study, spec["trial"]), spec["metric"])


def _follower(scores: Scores, done: float) -> None:
    """A rank's judge that is not the writer's: the loop asks only the writer's, and this rank hears its verdict."""
    return None


def _better(sweep: Sweep, a: float, b: float) -> bool:
    return a < b if sweep.direction == "minimize" else a > b


def _may_win(sweep: Sweep, study, value: float | None, kind: str) -> bool:
    """Whether a finished trial is among the best `kept` search trials so far (a confirmation run never is: its
    configuration's search trial keeps the weights)."""
    from optuna.trial import TrialState

    if sweep.keep_weights == "all":
        return True
    if kind != "search" or value is None:
        return False
    others = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _kind(t) == "search"]
    return sum(_better(sweep, v, value) for v in others) < sweep.kept


def _shed(sweep: Sweep, number: int, keep: bool) -> None:
    """A finished trial keeps its log, metrics and reports; its checkpoints go, and its weights unless `keep`."""
    path = sweep.folder / "trials" / f"{number:04d}"
    if not path.is_dir():
        return
    with contextlib.suppress(BertfitError), RunFolder.update(path) as folder:
        folder.remove("checkpoints")
        if not keep:
            for name in WEIGHTS:
                folder.remove(name)


# ---------------------------------------------------------------- the search, the confirmation, the report


def default_workers(sweep: Sweep) -> int:
    """`--workers` not given: two trials side by side on a CPU of two cores or more, each on half the cores; one
    where a trial fills a GPU or runs on several processes. A training's threads scale poorly at BERT's batch sizes
    on a CPU: on 2 cores, two single-thread minilm trainings did 186 samples/s together against 127 for one on both
    cores (SST-2, batch 32: 1.47x). Two rather than one per core: each worker holds its own model and optimizer
    (about 2.5 GB for bert-base)."""
    from bertfit.engine.device import default_device

    on_cpu = default_device(sweep.base.device).type == "cpu"
    return 2 if on_cpu and (os.cpu_count() or 1) >= 2 and sweep.nproc == 1 and sweep.trials >= 2 else 1


def work(sweep: Sweep, console) -> None:
    """Run trials until the study has them all (shared with any other worker on the same storage), confirm the
    best configurations over seeds, and write the report."""
    import optuna

    study = sweep.study or open_study(sweep)
    with _parent_run(sweep):
        _search(sweep, study, console)
        with _report_lock(sweep.folder):
            best = write_report(sweep, optuna.load_study(study_name=sweep.study_name, storage=study._storage), console)
        if "mlflow" in sweep.base.report_to:
            import mlflow

            mlflow.log_metric(f"best_{sweep.metric}", best.mean)


@contextlib.contextmanager
def _parent_run(sweep: Sweep) -> Iterator[None]:
    """With `report_to: mlflow`, one MLflow run for the sweep, each trial's run its child (every worker finds the
    sweep's run by its tag and joins it)."""
    if "mlflow" not in sweep.base.report_to:
        yield
        return
    import mlflow

    if sweep.base.mlflow_tracking_uri:
        mlflow.set_tracking_uri(sweep.base.mlflow_tracking_uri)
    experiment = mlflow.set_experiment(sweep.base.mlflow_experiment)
    tag = {"bertfit_sweep": sweep.study_name}
    found = mlflow.search_runs(
        [experiment.experiment_id], filter_string=f"tags.bertfit_sweep = '{sweep.study_name}'", output_format="list"
    )
    with (
        mlflow.start_run(run_id=found[0].info.run_id)
        if found
        else mlflow.start_run(run_name=f"sweep {sweep.study_name}", tags=tag)
    ):
        if not found:
            mlflow.log_params({"trials": sweep.trials, "metric": sweep.metric, "space": space_key(sweep.space)[:500]})
        yield


def _search(sweep: Sweep, study, console) -> None:
    from optuna.trial import TrialState

    while True:
        for number in reap(study, sweep):
            console.print(f"trial {number}: its worker stopped; queued to run again", markup=False)
        trials = study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        out_of_time = sweep.timeout is not None and time.monotonic() - sweep.started > sweep.timeout
        if out_of_time and not waiting:
            console.print(f"--timeout {sweep.timeout:g} s reached: no new trial is started", markup=False)
            break
        if waiting or _counted(study) < sweep.trials:
            study.optimize(
                lambda trial: objective(sweep, study, trial),
                n_trials=1,
                catch=(Surplus, BertfitError),
                callbacks=[lambda s, t: _progress(sweep, s, t, console)],
            )
            continue
        if running:  # the last trials are another worker's: wait for them (or for their worker to die)
            time.sleep(POLL)
            continue
        if sweep.confirm and _enqueue_confirmations(sweep, study, console):
            continue
        break


def _progress(sweep: Sweep, study, trial, console) -> None:
    from optuna.trial import TrialState

    if "folder" not in trial.user_attrs:
        return  # a surplus trial: nothing ran
    params = ", ".join(f"{k} {_shown(v)}" for k, v in trial.params.items())
    label = f"trial {trial.number} ({_kind(trial)}, seed {trial.user_attrs.get('seed')}): {params}"
    if trial.state == TrialState.COMPLETE:
        said = f"{sweep.metric} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        said = f"pruned at {trial.user_attrs.get('pruned_at', 'its first evaluation')}"
    else:
        said = f"failed: {trial.user_attrs.get('verdict', 'see its folder')}"
    try:
        best = f"best so far {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "no trial finished yet"
    console.print(f"{label} → {said}; {best}", markup=False)


def _shown(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _configurations(study) -> dict[tuple, list]:
    """Finished trials grouped by their parameters (the seed aside), search trial first."""
    from optuna.trial import TrialState

    groups: dict[tuple, list] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        groups.setdefault(tuple(sorted(trial.params.items())), []).append(trial)
    for members in groups.values():
        members.sort(key=lambda t: (_kind(t) != "search", t.number))
    return groups


def _enqueue_confirmations(sweep: Sweep, study, console) -> bool:
    """Once: the best `confirm` configurations queued again with seeds base+1, base+2, ...; True if queued now."""
    if study.user_attrs.get("confirmations"):
        return False
    ranked = _ranked_search(sweep, study)[: sweep.confirm]
    queued = []
    for trial in ranked:
        for extra in range(1, sweep.seeds):
            seed = sweep.base.seed + extra
            study.enqueue_trial(trial.params, user_attrs={"confirms": trial.number, "seed": seed})
            queued.append((trial.number, seed))
    study.set_user_attr("confirmations", len(queued) or -1)
    if queued:
        shown = ", ".join(str(t.number) for t in ranked)
        console.print(f"confirming trials {shown} with {sweep.seeds - 1} more seed(s) each", markup=False)
    return bool(queued)


def _ranked_search(sweep: Sweep, study) -> list:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _kind(t) == "search"]
    return sorted(done, key=lambda t: t.value, reverse=sweep.direction == "maximize")


@dataclass
class Configuration:
    params: dict
    trials: list  # its finished trials, the search trial first
    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def winner(sweep: Sweep, study) -> tuple[Configuration | None, list[Configuration]]:
    """The best configuration by its mean over seeds where configurations were confirmed (several seeds), else by
    its one score; with every configuration, best first."""
    configurations = [
        Configuration(dict(key), members, [t.value for t in members])
        for key, members in _configurations(study).items()
        if _kind(members[0]) == "search"
    ]
    reverse = sweep.direction == "maximize"
    configurations.sort(key=lambda c: c.mean, reverse=reverse)
    confirmed = [c for c in configurations if len(c.values) > 1]
    pool = confirmed or configurations
    return (pool[0] if pool else None), configurations


@contextlib.contextmanager
def _report_lock(folder: Path) -> Iterator[None]:
    fd = os.open(folder / RUNNING / "report.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_report(sweep: Sweep, study, console) -> Configuration:
    from bertfit.sweep.report import write_outputs

    best, configurations = winner(sweep, study)
    if best is None:
        raise BertfitError(
            f"no trial of the sweep in '{sweep.folder}' finished; see trials.csv and the trials' folders"
        )
    for members in _configurations(study).values():  # the winner's search trial keeps its weights, no other
        for trial in members:
            if trial is not best.trials[0] and sweep.keep_weights != "all":
                _shed(sweep, trial.number, keep=False)
    write_outputs(sweep, study, best, configurations)
    console.print(
        f"best: trial {best.trials[0].number} ({', '.join(f'{k} {_shown(v)}' for k, v in best.params.items())}): "
        f"{sweep.metric} {best.mean:.4f}"
        + (f" ± {best.std:.4f} over {len(best.values)} seeds" if len(best.values) > 1 else "")
        + f"; wrote {sweep.folder / 'README.md'}",
        markup=False,
    )
    return best


def copy_run(source: Path, target: Path) -> None:
    """A trial's run folder copied as a run folder of its own (its checkpoints aside), through the ownership rule,
    with its reports drawn in full (a trial's card has no plots)."""
    from bertfit.report import write_reports

    with RunFolder.claim(target, overwrite=True) as folder:
        folder.begin(resume=False, overwrite=True)
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if path.is_file() and not rel.startswith((".bertfit", "checkpoints/", "tensorboard/", "plots/")):
                folder.write(rel, path.read_bytes())
        write_reports(folder)


def best_recipe(sweep: Sweep, best: Configuration) -> str:
    """The winning recipe, runnable with `bertfit train best.yaml`: the base recipe's settings with the winner's."""
    defaults = Config().model_dump()
    chosen = {**sweep.base.model_dump(), **best.params, "output": str(sweep.folder / "best-retrained")}
    recipe = {k: v for k, v in chosen.items() if v != defaults.get(k) or k in best.params}
    return yaml.safe_dump(recipe, sort_keys=False)


# ---------------------------------------------------------------- from the command line


SMALL_DATA = 10_000  # training examples below which configurations are confirmed over seeds by default


def prepare(
    base: Config,
    specs: list[str],
    recipe_block: dict | None,
    trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    confirm: int | None = None,
    seeds: int = 3,
    pruner: str = "median",
    keep_weights: str = "best",
    nproc: int = 1,
) -> Sweep:
    """Every check before anything starts: the trial count, the space, the data (read, detected and tokenized as
    `bertfit train` does, which fills the feature cache every trial then reads), the folder and the storage."""
    from bertfit import models
    from bertfit.engine.device import default_device
    from bertfit.engine.setup import check_inputs, prepare_data
    from bertfit.sweep.space import build_space
    from bertfit.tasks import LOWER_IS_BETTER

    if trials < 1:
        raise BertfitError(f"--trials {trials}: a sweep needs at least one trial")
    if seeds < 2:
        raise BertfitError(f"--seeds {seeds}: confirming a configuration takes two seeds or more")
    if timeout is not None and timeout <= 0:
        raise BertfitError(f"--timeout {timeout:g}: give the seconds after which no trial starts, above 0")
    if not base.output:
        raise BertfitError("no output folder given; pass --output DIR (the sweep's folder)")
    folder = Path(base.output)
    space = build_space(specs, recipe_block, base)
    inputs = check_inputs(base, default_device(base.device))
    tokenizer = models.load_tokenizer(models.resolve_model(base.model), base.trust_remote_code)
    resolved, _, _, frames, _, _ = prepare_data(base, inputs, tokenizer)
    if storage and "://" in storage:  # a database answers before the folder is made
        open_storage(storage, folder)
    claim_folder(folder)
    sweep = Sweep(
        base=base,
        space=space,
        trials=trials,
        folder=folder,
        study_name=study_name or folder.resolve().name,
        storage=storage,
        metric=resolved.metric_for_best,
        direction="minimize" if resolved.metric_for_best in LOWER_IS_BETTER else "maximize",
        pruner=pruner,
        confirm=(3 if len(frames["train"]) < SMALL_DATA else 0) if confirm is None else confirm,
        seeds=seeds,
        keep_weights=keep_weights,
        nproc=nproc,
        timeout=timeout,
    )
    sweep.study = open_study(sweep)  # the storage reached and the study's identity checked before any trial
    return sweep
