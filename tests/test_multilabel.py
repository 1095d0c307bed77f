"""Multi-label classification: the three ways data gives several labels, metrics equal to scikit-learn's, thresholds
chosen on validation and saved with the model, predictions equal to transformers' pipeline, DDP."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, run_cli
from test_distributed import bertfit

from bertfit import tasks
from bertfit.data import sources
from bertfit.errors import BertfitError
from bertfit.tasks import Features, build_task
from bertfit.tasks.multilabel import CANDIDATES, multi_label_metrics

GO_EMOTIONS = SHARED_DATA / "go_emotions"


def go_emotions_folder(folder, rows=(240, 60, 60)):
    """The first rows of go_emotions' splits, as a folder of parquet files with a `labels` list column."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "validation", "test"), rows, strict=True):
        pd.read_parquet(GO_EMOTIONS / f"{split}.parquet").head(n)[["text", "labels"]].to_parquet(
            folder / f"{split}.parquet"
        )
    return folder


def splits_of(frames: dict) -> sources.Splits:
    return sources.Splits("data", frames, {name: f"{name}.csv" for name in frames})


def test_metrics_equal_scikit_learns():
    from sklearn import metrics as sk

    rng = np.random.default_rng(0)
    targets = rng.random((300, 7)) < 0.2
    targets[:, 6] = False  # a label never present
    decided = rng.random((300, 7)) < 0.25
    decided[:, 5] = False  # a label never predicted
    ours = multi_label_metrics(targets, decided, list("abcdefg"))
    assert ours["micro_f1"] == pytest.approx(sk.f1_score(targets, decided, average="micro", zero_division=0))
    assert ours["macro_f1"] == pytest.approx(sk.f1_score(targets, decided, average="macro", zero_division=0))
    assert ours["micro_precision"] == pytest.approx(sk.precision_score(targets, decided, average="micro"))
    assert ours["micro_recall"] == pytest.approx(sk.recall_score(targets, decided, average="micro"))
    assert ours["subset_accuracy"] == pytest.approx(sk.accuracy_score(targets, decided))
    assert ours["hamming_loss"] == pytest.approx(sk.hamming_loss(targets, decided))
    per_label = sk.f1_score(targets, decided, average=None, zero_division=0)
    assert [ours["per_label"][name]["f1"] for name in "abcdefg"] == pytest.approx(per_label.tolist())


def test_the_tuned_threshold_is_the_best_candidate_and_per_label_ones_need_enough_positives():
    rng = np.random.default_rng(1)
    targets = rng.random((400, 3)) < np.array([0.3, 0.3, 0.01])
    # Label 0 is separable at 0.7, label 1 at 0.2; label 2 has a handful of positives.
    cuts = np.array([0.7, 0.2, 0.5])
    probabilities = np.where(targets, cuts + rng.random((400, 3)) * (1 - cuts), rng.random((400, 3)) * cuts)
    task = build_task("multi_label", ["text"], "labels", ["a", "b", "c"], 64)
    best = max(CANDIDATES, key=lambda t: multi_label_metrics(targets, probabilities >= t, list("abc"))["micro_f1"])
    chosen = task.tune(targets, probabilities)
    assert np.all(chosen == chosen[0])
    at_chosen = multi_label_metrics(targets, probabilities >= chosen[0], list("abc"))["micro_f1"]
    assert at_chosen == pytest.approx(multi_label_metrics(targets, probabilities >= best, list("abc"))["micro_f1"])
    per_label = build_task("multi_label", ["text"], "labels", ["a", "b", "c"], 64, threshold="per_label")
    thresholds = per_label.tune(targets, probabilities)
    per_label_f1 = multi_label_metrics(targets, probabilities >= thresholds, list("abc"))["per_label"]
    assert per_label_f1["a"]["f1"] == per_label_f1["b"]["f1"] == 1.0  # each label at a cut that separates it
    assert thresholds[0] > 0.5 > thresholds[1]
    assert thresholds[2] == chosen[0]  # too few positives for a threshold of its own: the global one
    result = per_label.example_metrics(targets.astype(np.uint8), probabilities.astype(np.float32))
    assert result["micro_f1"] >= at_chosen and "threshold" not in result


def test_list_delimited_and_zero_one_columns_give_the_same_label_sets():
    texts = ["great fun", "so sad and angry", "nothing much", "fun but sad"]
    sets = [["joy"], ["sadness", "anger"], [], ["joy", "sadness"]]
    frames = {
        "list": pd.DataFrame({"text": texts, "labels": sets}),
        "delimited": pd.DataFrame({"text": texts, "labels": ["joy", "sadness|anger", None, "joy | sadness"]}),
        "columns": pd.DataFrame({"text": texts, "joy": [1, 0, 0, 1], "sadness": [0, 1, 0, 1], "anger": [0, 1, 0, 0]}),
    }
    expected = None
    for form, frame in frames.items():
        splits = splits_of({"train": frame})
        columns = ["joy", "sadness", "anger"] if form == "columns" else None
        spec = tasks.detect(splits, "train", "auto", None, None, None, label_columns=columns)
        assert spec.task == "multi_label" and spec.text_columns == ["text"], form
        normalised = tasks.normalise(splits, spec).frames["train"]
        task = build_task("multi_label", spec.text_columns, spec.label_column, spec.label_names, 64)
        named = [sorted(row) for row in normalised[spec.label_column]]
        assert named == [sorted(row) for row in sets], form
        targets = task.label_ids(normalised)
        decoded = [sorted(spec.label_names[j] for j in np.flatnonzero(row)) for row in targets]
        assert decoded == named
        expected = expected or sorted(spec.label_names)
        assert sorted(spec.label_names) == expected
    assert "read as several labels" in " ".join(
        tasks.detect(splits_of({"train": frames["delimited"]}), "train", "auto", None, None, None).notes
    )


@pytest.mark.parametrize(
    "frames, columns, message",
    [
        ({"train": pd.DataFrame({"text": ["a", "b"], "x": [1, 2], "y": [0, 1]})}, ["x", "y"], "'train.csv' row 2: "),
        ({"train": pd.DataFrame({"text": ["a", "b"], "x": [1, None], "y": [0, 1]})}, ["x", "y"], "row 2: label col"),
        ({"train": pd.DataFrame({"text": ["a", "b"], "x": [1, 0]})}, ["x", "q"], "column 'q' not found in 'train.csv'"),
        (
            {
                "train": pd.DataFrame({"text": ["a", "b"], "labels": [["p"], ["q"]]}),
                "validation": pd.DataFrame({"text": ["c"], "labels": [["p", "r"]]}),
            },
            None,
            "'validation.csv' has labels never seen in training: r",
        ),
        ({"train": pd.DataFrame({"text": ["a", "b"], "labels": [["p"], ["p"]]})}, None, "1 distinct label(s)"),
        (
            {"train": pd.DataFrame({"text": ["a", "b"], "labels": [["p"], {"q": 1}]})},
            None,
            "'train.csv' row 2: labels are",
        ),
    ],
)
def test_malformed_multi_label_data_is_one_line_naming_the_row(frames, columns, message):
    with pytest.raises(BertfitError, match=None) as raised:
        tasks.detect(splits_of(frames), "train", "multi_label", None, None, None, label_columns=columns)
    assert message in str(raised.value)


def test_zero_one_label_rows_survive_the_feature_cache(tmp_path, minilm_tokenizer):
    frame = pd.DataFrame({"text": ["one", "two words", "three little words"], "labels": [["a"], ["a", "c"], []]})
    task = build_task("multi_label", ["text"], "labels", ["a", "b", "c"], 64)
    features = task.encode(frame, minilm_tokenizer)
    features.save(tmp_path / "entry")
    loaded = Features.load(tmp_path / "entry")
    assert np.array_equal(np.asarray(loaded.labels), [[1, 0, 0], [1, 0, 1], [0, 0, 0]])
    assert np.array_equal(loaded.labels[np.array([2, 1])], [[0, 0, 0], [1, 0, 1]])
    assert np.array_equal(loaded.labels[1], [1, 0, 1])
    batch = task.collate(loaded, np.array([1, 2]), 0)
    assert batch["labels"].shape == (2, 3)


def test_multi_label_run_saves_thresholds_and_predicts_as_the_pipeline_does(tiny_bert, tmp_path, capsys):
    from transformers import pipeline

    data = go_emotions_folder(tmp_path / "go")
    out = tmp_path / "run"
    args = ["train", "--model", tiny_bert, "--data", data, "--output", out, "--max-steps", 30, "--lr", "3e-3"]
    code, _, stderr = run_cli([*args, "--batch-size", 16, "--eval-every", 15, "--precision", "fp32"], capsys)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("validation", "test"):
        assert {"micro_f1", "macro_f1", "micro_precision", "micro_recall", "subset_accuracy", "hamming_loss"} <= set(
            metrics[split]
        )
    assert metrics["metric_for_best"] == "micro_f1"
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    thresholds = config["bertfit_thresholds"]
    assert list(thresholds) == list(config["id2label"].values())
    assert metrics["test"]["threshold"] == pytest.approx(metrics["validation"]["threshold"])  # chosen on validation
    card = (out / "README.md").read_text()
    assert "### Per label (test; thresholds chosen on validation)" in card and "top_k=None" in card
    texts = pd.read_parquet(data / "test.parquet")["text"].head(12).tolist()
    code, stdout, _ = run_cli(["predict", out, *sum((["--text", t] for t in texts), [])], capsys)
    assert code == 0
    ours = [json.loads(line) for line in stdout.strip().splitlines()]
    theirs = pipeline("text-classification", model=str(out), top_k=None)(texts)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine["scores"] == pytest.approx({r["label"]: r["score"] for r in reference}, abs=1e-5)
        assert mine["labels"] == [name for name, p in mine["scores"].items() if p >= thresholds[name]]
    code, stdout, _ = run_cli(["eval", out, "--data", data, "--split", "test"], capsys)
    assert code == 0
    scored = json.loads(stdout)
    assert scored["micro_f1"] == pytest.approx(metrics["test"]["micro_f1"])  # the saved thresholds, not re-tuned
    assert scored["threshold"] == pytest.approx(metrics["validation"]["threshold"])


def test_inspect_reports_label_cardinality_pairs_and_rare_labels(tmp_path, capsys):
    data = go_emotions_folder(tmp_path / "go", rows=(2000, 200, 200))
    code, stdout, _ = run_cli(["inspect", "--data", data, "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    train = report["splits"]["train"]
    frame = pd.read_parquet(data / "train.parquet")
    assert report["task"] == "multi_label"
    assert train["label_cardinality"] == pytest.approx(frame["labels"].map(len).mean())
    assert train["multi_label_rate"] == pytest.approx((frame["labels"].map(len) > 1).mean())
    assert train["labels"]["neutral"] == sum("neutral" in row for row in frame["labels"])
    assert "grief" in train["rare_labels"] and "neutral" not in train["rare_labels"]
    a, b, n = train["top_pairs"][0]
    assert n == sum(a in row and b in row for row in frame["labels"])


@pytest.mark.slow  # training subprocesses
def test_multi_label_under_two_gloo_ranks_matches_one_process(tiny_bert_no_dropout, tmp_path):
    data = go_emotions_folder(tmp_path / "go", rows=(160, 45, 0))
    (data / "test.parquet").unlink()
    common = ["--model", tiny_bert_no_dropout, "--data", data, "--max-steps", 6, "--eval-every", 3, "--lr", "3e-3"]
    common += ["--precision", "fp32", "--padding", "dynamic"]
    single, double = tmp_path / "single", tmp_path / "double"
    bertfit("train", *common, "--output", single, "--batch-size", 16)
    bertfit("train", *common, "--output", double, "--batch-size", 8, "--nproc", 2)
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (single, double))
    assert two["validation"]["loss"] == pytest.approx(one["validation"]["loss"], rel=1e-4)
    assert two["validation"]["micro_f1"] == pytest.approx(one["validation"]["micro_f1"])
    assert (
        json.loads((double / "config.json").read_text())["bertfit_thresholds"]
        == json.loads((single / "config.json").read_text())["bertfit_thresholds"]
    )


def test_the_output_layer_starts_at_the_label_priors(tiny_bert, minilm_tokenizer):
    from transformers import AutoModelForSequenceClassification

    from bertfit import models

    frame = pd.DataFrame({"text": ["a", "b", "c", "d"], "labels": [["x"], ["x", "y"], ["x"], []]})
    task = build_task("multi_label", ["text"], "labels", ["x", "y", "z"], 64)
    bias = task.head_bias(task.encode(frame, minilm_tokenizer))
    assert bias[:2] == pytest.approx([np.log(0.75 / 0.25), np.log(0.25 / 0.75)])
    assert bias[2] == pytest.approx(np.log(1e-4 / (1 - 1e-4)))  # a label never seen: a very low prior, not -inf
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, **task.head_config())
    models.set_output_bias(model, bias)
    assert model.classifier.bias.detach().numpy() == pytest.approx(bias, rel=1e-6)
    assert build_task("classification", ["text"], "label", ["0", "1"], 64).head_bias(None) is None
