"""Token classification through the same train/eval/predict path."""

import json

import pytest
from conftest import SAMPLES, run_cli

from bertfit.tasks.token import entity_spans


def test_entity_spans_from_word_tags():
    text = "Angela Merkel visited New York City ."
    offsets = [(0, 6), (7, 13), (14, 21), (22, 25), (26, 30), (31, 35), (36, 37)]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O"]
    spans = entity_spans(text, offsets, tags, [0.9, 0.7, 0.99, 0.8, 0.8, 0.5, 0.9])
    assert [(s["entity_group"], s["word"], s["start"], s["end"]) for s in spans] == [
        ("PER", "Angela Merkel", 0, 13),
        ("LOC", "New York City", 22, 35),
    ]
    assert spans[0]["score"] == pytest.approx(0.8)
    # An I- after O starts an entity; B- after B- of the same type starts another.
    assert [
        s["word"] for s in entity_spans("a b c", [(0, 1), (2, 3), (4, 5)], ["I-ORG", "B-ORG", "B-ORG"], [1, 1, 1])
    ] == ["a", "b", "c"]


@pytest.fixture(scope="module")
def conll_run(tmp_path_factory, tiny_bert):
    out = tmp_path_factory.mktemp("conll") / "run"
    from bertfit.cli import fit as train
    from bertfit.config import build_config

    cfg = build_config(
        None,
        {
            "model": tiny_bert,
            "data": str(SAMPLES / "conll_50.conll"),
            "output": str(out),
            "batch_size": 8,
            "max_steps": 12,
            "eval_every": 6,
            "lr": 5e-3,
            "max_length": 24,
            "stride": 6,
            "precision": "fp32",
        },
    )  # predict is compared with fp32 pipeline()
    return out, train(cfg).metrics.dump()


def test_conll_file_trains_as_token_task(conll_run):
    out, summary = conll_run
    recipe = (out / "recipe.yaml").read_text()
    assert "task: token" in recipe and "- tokens" in recipe and "label_column: ner_tags" in recipe
    assert set(summary["validation"]) >= {"precision", "recall", "f1", "accuracy", "per_type", "loss"}
    assert summary["metric_for_best"] == "f1"
    for entity in summary["validation"]["per_type"].values():
        assert set(entity) == {"precision", "recall", "f1", "support"}
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["0"] == "O" and "B-PER" in config["label2id"]
    card = (out / "README.md").read_text()
    assert "| Training Loss | Epoch | Step | Validation Loss | Precision | Recall | F1 | Accuracy |" in card


def test_predict_entities_match_the_pipeline(conll_run, tmp_path, capsys):
    import shutil

    import torch
    from transformers import AutoModelForTokenClassification

    # A 12-step tiny model predicts mostly 'O'; scramble its head so that many tags occur and the
    # aggregation is really exercised.
    out = tmp_path / "scrambled"
    shutil.copytree(conll_run[0], out, ignore=shutil.ignore_patterns("checkpoints"))
    model = AutoModelForTokenClassification.from_pretrained(out)
    torch.manual_seed(0)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 3.0)
    model.save_pretrained(out)
    text = "John Smith visited Paris and Berlin with Mary Brown from the United Nations in London"
    code, printed, stderr = run_cli(["predict", out, "--text", text], capsys)
    assert code == 0, stderr
    ours = json.loads(printed)["entities"]
    from transformers import pipeline

    tagger = pipeline("token-classification", model=str(out), aggregation_strategy="simple")
    theirs = tagger(text)
    assert ours, "the tiny model should tag something after training on the sample"
    # All words here are single WordPiece tokens, so word- and token-level aggregation must agree exactly.
    assert [(e["entity_group"], e["start"], e["end"]) for e in ours] == [
        (e["entity_group"], e["start"], e["end"]) for e in theirs
    ]
    for a, b in zip(ours, theirs):
        assert a["score"] == pytest.approx(float(b["score"]), abs=1e-4)
        assert a["word"] == text[a["start"] : a["end"]]


def test_eval_on_conll_file(conll_run, capsys):
    out, _ = conll_run
    code, printed, stderr = run_cli(["eval", out, "--data", SAMPLES / "conll_50.conll", "--split", "train"], capsys)
    assert code == 0, stderr
    scored = json.loads(printed)
    assert 0 <= scored["f1"] <= 1 and 0 < scored["accuracy"] <= 1


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "John B-PER\nlives\n\n",
            "x.conll:2: sentence 1 has a token without a tag ('lives'); each line needs 'TOKEN TAG'",
        ),
    ],
)
def test_conll_errors_name_file_and_sentence(tmp_path, tiny_bert, capsys, content, message):
    path = tmp_path / "x.conll"
    path.write_text(content)
    code, _, stderr = run_cli(["train", "--model", tiny_bert, "--data", path, "--output", tmp_path / "o"], capsys)
    assert code == 2 and message in stderr


def token_folder(tmp_path, train_rows, validation_rows):
    folder = tmp_path / "tok"
    folder.mkdir()
    for name, rows in (("train", train_rows), ("validation", validation_rows)):
        (folder / f"{name}.jsonl").write_text("\n".join(json.dumps({"tokens": t, "ner_tags": g}) for t, g in rows))
    return folder


@pytest.mark.parametrize(
    "validation, message",
    [
        ([(["a", "b"], ["O"])], "validation.jsonl' sentence 1 has 2 tokens but 1 tags"),
        ([(["a"], ["B-ORG"])], "validation.jsonl' sentence 1: tag 'B-ORG' never appears in the training data"),
        ([(["a"], ["O"]), ([], [])], "validation.jsonl' sentence 2 is empty; remove it"),
    ],
)
def test_token_data_errors(tmp_path, tiny_bert, capsys, validation, message):
    folder = token_folder(tmp_path, [(["John", "runs"], ["B-PER", "O"])] * 4, validation)
    code, _, stderr = run_cli(["train", "--model", tiny_bert, "--data", folder, "--output", tmp_path / "o"], capsys)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
