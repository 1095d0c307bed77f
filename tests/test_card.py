"""The model card as the Hub reads it (huggingface_hub parses it back), and what a run that stopped early says."""

import json
import os
from pathlib import Path

import pytest
from conftest import SAMPLES, run_cli
from huggingface_hub import ModelCard

from bertfit.config import Config
from bertfit.report.card import front_matter
from bertfit.runfiles import Scores
from bertfit.tasks import task_for


def card_data(text: str):
    return ModelCard(text + "\n# body\n").data


def test_mirror_datasets_get_their_hub_ids_and_metrics_their_standard_names():
    cfg = Config(
        model="minilm",
        task="classification",
        label_names=["negative", "neutral", "positive"],
        text_columns=["text"],
        label_column="label",
        output="runs/tweets",
        eval_split="validation",
        test_split="test",
        max_length=64,
    )
    scores = Scores(loss=0.7, accuracy=0.71234, f1_macro=0.7, recall_macro=0.69)
    data = card_data(front_matter(cfg, "tweet_sentiment", scores, "test", ["accuracy", "f1_macro", "recall_macro"]))
    assert data.datasets == ["cardiffnlp/tweet_eval"] and data.license == "apache-2.0"
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and "generated_from_trainer" not in data.tags
    results = {(r.metric_type, json.dumps(r.metric_args)): r for r in data.eval_results}
    assert results[("accuracy", "null")].metric_value == 0.7123
    assert results[("f1", '{"average": "macro"}')].metric_name == "Macro F1"
    assert {r.dataset_config for r in data.eval_results} == {"sentiment"}
    assert {r.dataset_split for r in data.eval_results} == {"test"}
    assert {r.task_type for r in data.eval_results} == {"text-classification"}


def test_local_data_is_not_named_as_a_hub_dataset_and_an_unknown_base_has_license_other():
    cfg = Config(
        model="/models/mine",
        task="token",
        label_names=["O", "B-PER", "I-PER"],
        text_columns=["tokens"],
        label_column="ner_tags",
        output="runs/ner",
        eval_split="validation",
        max_length=64,
    )
    scores = Scores(loss=0.2, precision=0.8, recall=0.7, f1=0.75, accuracy=0.9)
    data = card_data(front_matter(cfg, "my_ner_file", scores, "validation", ["precision", "recall", "f1"]))
    assert data.datasets is None and data.license == "other"
    assert {r.task_type for r in data.eval_results} == {"token-classification"}


def test_an_early_stop_is_said_on_the_console_in_the_card_and_the_plot(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", tiny_bert, "--data", SAMPLES / "sst2_200.csv", "--output", out, "--batch-size", 16]
    args += ["--max-steps", 8, "--eval-every", 1, "--lr", "1e-12", "--early-stopping", 1, "--precision", "fp32"]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stop_reason"] == "early_stopping" and metrics["train"]["steps"] == 2
    assert "stopped early at step 2: accuracy did not improve after step 1" in stdout
    card = (out / "README.md").read_text()
    assert "Training stopped early at step 2 (epoch" in card and "early_stopping_patience: 1" in card
    assert "## Intended uses & limitations" in card and "training_precision: float32" in card
    hub = ModelCard.load(out / "README.md").data
    assert hub.pipeline_tag == "text-classification" and hub.datasets is None


GOLDEN = Path(__file__).parent / "fixtures" / "cards"
VERSIONS = {"Transformers": "5.x", "Pytorch": "2.x", "Tokenizers": "0.x", "bertfit": "0.1.0"}


@pytest.mark.parametrize("kind", ["classification", "regression", "multi_label", "token"])
def test_the_card_of_each_task_kind_is_its_golden_card(kind):
    """The card is data (`card_data`, from a run's files) laid out by a template (`render`): one golden card per
    task kind, from the files of a real tiny run of that kind kept in tests/fixtures/cards/KIND. After a change to
    the card that is meant, BERTFIT_UPDATE_GOLDEN=1 rewrites them (then read the diff)."""
    from bertfit.report.card import card_data, render
    from bertfit.runfiles import Diagnosis, read_file, read_run

    folder = GOLDEN / kind
    files = read_run(folder)  # files of format 1, as an older bertfit wrote them
    cfg, summary = files.cfg, files.metrics
    findings = read_file(folder / "diagnosis.json", Diagnosis).findings
    plots = sorted(f"plots/{p}.png" for p in ("loss", "metrics", "confusion", "entities", "lengths"))
    data = card_data(cfg, files.events, summary, files.profile, findings, plots, VERSIONS)
    card = render(data)
    if os.environ.get("BERTFIT_UPDATE_GOLDEN"):
        (folder / "README.md").write_text(card)
    assert card == (folder / "README.md").read_text()
    assert ModelCard(card).data.pipeline_tag == task_for(cfg).pipeline_tag  # the Hub reads it as written
    assert [title for title, _ in data.task_tables] == [
        title.format(split=data.result_split)
        for title, _, _ in task_for(cfg).result_tables(getattr(summary, data.result_split))
    ]
