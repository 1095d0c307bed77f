"""Experiment tracking read back by the trackers' own readers: TensorBoard's EventAccumulator on the event files,
and MlflowClient on a real SQLite-backed MLflow store."""

import json

import pytest
from conftest import run_cli, sample_run_args


def tracked_args(model, out, *extra):
    return sample_run_args(model, out, "--max-steps", 6, "--eval-every", 3, "--lr", "1e-3", "--batch-size", 8, *extra)


def test_tensorboard_and_mlflow_get_the_run(tiny_bert, tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    args = tracked_args(tiny_bert, out, "--set", "log_every=1", "--report-to", "tensorboard,mlflow")
    code, _, stderr = run_cli([*args, "--mlflow-tracking-uri", store], capsys)
    assert code == 0, stderr
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [e for e in log if e["event"] == "train"]
    evals = [e for e in log if e["event"] == "eval"]

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [(s.step, s.value) for s in losses] == [(e["step"], pytest.approx(e["loss"], rel=1e-6)) for e in train]
    assert [s.value for s in events.Scalars("eval/accuracy")] == [
        pytest.approx(e["metrics"]["accuracy"]) for e in evals
    ]
    assert "train/lr" in events.Tags()["scalars"]
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    session = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert session.hparams["lr"].number_value == pytest.approx(1e-3)
    assert session.hparams["model"].string_value == str(tiny_bert)
    assert [s.value for s in events.Scalars("hparam/accuracy")] == [pytest.approx(evals[-1]["metrics"]["accuracy"])]

    client = MlflowClient(store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "bertfit"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.001" and run.data.params["batch_size"] == "8"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(e["step"], pytest.approx(e["loss"])) for e in train]
    assert run.data.metrics["eval_accuracy"] == pytest.approx(evals[-1]["metrics"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"README.md", "metrics.json", "recipe.yaml"} <= artifacts


def test_an_unreachable_mlflow_store_is_one_line_before_training(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    args = tracked_args(tiny_bert, out, "--report-to", "mlflow", "--mlflow-tracking-uri", "http://127.0.0.1:9")
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and "MLflow tracking store 'http://127.0.0.1:9' cannot be reached" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not out.exists()


def test_report_to_takes_the_recipe_list_syntax(tmp_path):
    from bertfit.config import build_config, parse_set_overrides

    cfg = build_config(None, parse_set_overrides(["report_to=[tensorboard,mlflow]"]))
    assert cfg.report_to == ["tensorboard", "mlflow"]
    assert build_config(None, {"report_to": "tensorboard"}).report_to == ["tensorboard"]
