"""Experiment tracking through the libraries people already read: TensorBoard event files and MLflow runs.

Each tracker is a sink of the run log: it sees every event log.jsonl gets (only on rank 0, where the log is
written) and turns it into its library's calls; at the end it adds the reports. A tracking server that cannot be
reached is found before any data is loaded (`check`), so a run never trains for hours to fail at the end."""

from __future__ import annotations

import os

from bertfit.config import Config
from bertfit.errors import BertfitError, first_line
from bertfit.runfiles import Eval, Event, Train
from bertfit.runfolder import RunFolder

FOLDER = "tensorboard"  # in the run folder

# Per-step training fields worth a chart, as log.jsonl names them.
TRAIN_SCALARS = ("loss", "lr", "grad_norm", "samples_per_second", "tokens_per_second", "padding_ratio")
# Report files the MLflow run keeps as artifacts.
ARTIFACTS = ("README.md", "metrics.json", "results.md", "recipe.yaml", "diagnosis.json", "data_profile.json")


def hyperparameters(cfg: Config) -> dict:
    """The recipe as flat scalars (lists joined), as both libraries' hyperparameter views take them."""
    flat = {}
    for key, value in cfg.model_dump().items():
        if isinstance(value, list):
            value = ",".join(map(str, value))
        flat[key] = "none" if value is None else value
    return flat


def train_values(record: Train) -> dict[str, float]:
    return {k: float(v) for k in TRAIN_SCALARS if (v := getattr(record, k)) is not None}


def eval_values(record: Eval) -> dict[str, float]:
    """The loss, the task's metrics, and how long the evaluation took."""
    scores = record.metrics
    every = {**scores.scalars(), "runtime": scores.runtime, "samples_per_second": scores.samples_per_second}
    return {k: float(v) for k, v in every.items() if v is not None}


class TensorBoard:
    """Event files under RUN/tensorboard: train/* and eval/* scalars per step, and the recipe with the final
    metrics in TensorBoard's HParams view."""

    def __init__(self, folder: RunFolder, cfg: Config):
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        with folder.recording(FOLDER) as logs:  # the writer names its event file itself
            self.writer = SummaryWriter(log_dir=str(logs))
        self.last_eval: dict = {}

    def event(self, record: Event) -> None:
        if isinstance(record, Train):
            for key, value in train_values(record).items():
                self.writer.add_scalar(f"train/{key}", value, record.step)
        elif isinstance(record, Eval):
            self.last_eval = eval_values(record)
            for key, value in self.last_eval.items():
                self.writer.add_scalar(f"eval/{key}", value, record.step)
        self.writer.flush()

    def finish(self, folder: RunFolder) -> None:
        metrics = {f"hparam/{k}": v for k, v in self.last_eval.items() if k not in ("runtime", "samples_per_second")}
        params = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hyperparameters(self.cfg).items()
        }
        with folder.recording(FOLDER):
            self.writer.add_hparams(params, metrics, run_name=".")
            self.writer.close()


class MLflow:
    """An MLflow run (named after the run folder) in the store `MLFLOW_TRACKING_URI` or the recipe's
    mlflow_tracking_uri names: the recipe as params, training and evaluation metrics per step, the reports and
    plots as artifacts."""

    def __init__(self, folder: RunFolder, cfg: Config):
        import mlflow

        self.mlflow = mlflow
        if cfg.mlflow_tracking_uri:  # else MLFLOW_TRACKING_URI, else mlflow's own default, as mlflow decides
            mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
        mlflow.set_experiment(cfg.mlflow_experiment)
        # Nested under the run already active in this process: a sweep's, whose trials are its children.
        self.run = mlflow.start_run(run_name=folder.path.name, nested=mlflow.active_run() is not None)
        params = hyperparameters(cfg)
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})  # MLflow's limit on a param's length

    def event(self, record: Event) -> None:
        if isinstance(record, Train):
            self.mlflow.log_metrics({f"train_{k}": v for k, v in train_values(record).items()}, step=record.step)
        elif isinstance(record, Eval):
            self.mlflow.log_metrics({f"eval_{k}": v for k, v in eval_values(record).items()}, step=record.step)

    def finish(self, folder: RunFolder) -> None:
        out = folder.path
        for name in ARTIFACTS:
            if (out / name).is_file():
                self.mlflow.log_artifact(str(out / name))
        if (out / "plots").is_dir():
            self.mlflow.log_artifacts(str(out / "plots"), artifact_path="plots")
        self.mlflow.end_run()


TRACKERS = {"tensorboard": TensorBoard, "mlflow": MLflow}


def check(cfg: Config) -> None:
    """Before any work: each tracker's library is installed and its store answers."""
    for name in cfg.report_to:
        try:
            __import__({"tensorboard": "tensorboard", "mlflow": "mlflow"}[name])
        except ImportError:
            raise BertfitError(f"report_to {name} needs the {name} package: pip install 'bertfit[track]'") from None
    if "mlflow" in cfg.report_to:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not after minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        import mlflow

        uri = cfg.mlflow_tracking_uri or mlflow.get_tracking_uri()
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        except Exception as err:  # mlflow raises its own, requests' and SQLAlchemy's errors
            raise BertfitError(
                f"MLflow tracking store '{uri}' cannot be reached ({first_line(err, 120)}); start it, fix "
                "MLFLOW_TRACKING_URI / mlflow_tracking_uri, or drop mlflow from report_to"
            ) from None


def start(cfg: Config, folder: RunFolder) -> list:
    return [TRACKERS[name](folder, cfg) for name in cfg.report_to]
