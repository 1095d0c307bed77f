import json
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from bertfit.engine.batching import round_up
from bertfit.tasks import IGNORE, Features
from bertfit.tasks.classification import ClassificationTask, classification_metrics
from bertfit.tasks.features import Ragged
from bertfit.tasks.regression import RegressionTask, regression_metrics
from bertfit.tasks.sequence import _truncate
from bertfit.tasks.token import TokenTask, token_metrics

TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def token_task(max_length=16, stride=4, all_subtokens=False):
    return TokenTask(
        ["tokens"], "ner_tags", TAGS, max_length, "head", (), stride=stride, label_all_subtokens=all_subtokens
    )


def test_collation_pads_masks_and_keeps_pairs(minilm_tokenizer):
    task = ClassificationTask(["a", "b"], "label", ["no", "yes"], 64)
    frame = pd.DataFrame(
        {"a": ["short one", "a somewhat longer first sentence here"], "b": ["x", "y z"], "label": [0, 1]}
    )
    features = task.encode(frame, minilm_tokenizer)
    batch = task.collate(
        features, np.array([0, 1]), minilm_tokenizer.pad_token_id, pad_to=partial(round_up, multiple=8)
    )
    longest = int(features.lengths.max())
    assert batch["input_ids"].shape == (2, -(-longest // 8) * 8)
    assert batch["attention_mask"].sum(1).tolist() == features.lengths.tolist()
    assert (batch["input_ids"][0, features.lengths[0] :] == minilm_tokenizer.pad_token_id).all()
    assert batch["token_type_ids"][0].tolist()[: features.lengths[0]].count(1) == 2  # "x [SEP]"
    assert batch["labels"].tolist() == [0, 1]
    fixed = task.collate(features, np.array([0]), minilm_tokenizer.pad_token_id, pad_to=lambda longest: 64)
    assert fixed["input_ids"].shape == (1, 64)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("head", [101, 1, 2, 3, 4, 5, 6, 102]),
        ("tail", [101, 7, 8, 9, 10, 11, 12, 102]),
        ("head+tail", [101, 1, 8, 9, 10, 11, 12, 102]),
    ],
)
def test_truncation_modes_keep_special_tokens(mode, expected):
    ids = [101] + list(range(1, 13)) + [102]
    assert _truncate(ids, 8, mode) == expected


def test_long_texts_are_truncated_and_profiled(minilm_tokenizer):
    task = ClassificationTask(["text"], "label", ["a", "b"], 16, truncation="head+tail")
    words = " ".join(f"w{i}" for i in range(60))
    features = task.encode(pd.DataFrame({"text": [words, "short"], "label": [0, 1]}), minilm_tokenizer)
    assert features.lengths.tolist()[0] == 16 and features.full_lengths[0] > 16
    assert features.input_ids[0][0] == minilm_tokenizer.cls_token_id
    assert features.input_ids[0][-1] == minilm_tokenizer.sep_token_id


def test_regression_labels_are_floats(minilm_tokenizer):
    task = RegressionTask(["a", "b"], "score", None, 32)
    features = task.encode(pd.DataFrame({"a": ["x"], "b": ["y"], "score": [3.8]}), minilm_tokenizer)
    batch = task.collate(features, np.array([0]), 0)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].item() == pytest.approx(3.8)


def test_first_subtoken_carries_the_label(minilm_tokenizer):
    words = ["Schwarzenegger", "visited", "Ouagadougou"]
    assert len(minilm_tokenizer.tokenize("schwarzenegger")) > 1 and len(minilm_tokenizer.tokenize("ouagadougou")) > 1
    frame = pd.DataFrame({"tokens": [words], "ner_tags": [["B-PER", "O", "B-LOC"]]})
    features = token_task(max_length=64).encode(frame, minilm_tokenizer)
    assert len(features) == 1
    labels, word_ids = features.labels[0], features.word_ids[0]
    labelled = np.flatnonzero(labels != IGNORE)
    assert [TAGS[labels[i]] for i in labelled] == ["B-PER", "O", "B-LOC"]
    assert word_ids[labelled].tolist() == [0, 1, 2]
    assert labels[0] == IGNORE and labels[-1] == IGNORE  # [CLS], [SEP]
    assert features.items[0] == 3
    every = token_task(max_length=64, all_subtokens=True).encode(frame, minilm_tokenizer)
    tagged = [TAGS[t] for t in every.labels[0] if t != IGNORE]
    assert tagged[0] == "B-PER" and set(tagged[1 : tagged.index("O")]) == {"I-PER"}
    assert every.word_ids[0][every.word_ids[0] >= 0].tolist() == [0, 1, 2]  # predictions still one per word


def test_long_sentence_windows_predict_every_word_exactly_once(minilm_tokenizer):
    words = [f"word{i}" if i % 3 else "Ouagadougou" for i in range(40)]
    tags = ["B-LOC" if i % 3 == 0 else "O" for i in range(40)]
    frame = pd.DataFrame({"tokens": [words, ["short"]], "ner_tags": [tags, ["O"]]})
    task = token_task(max_length=16, stride=4)
    features = task.encode(frame, minilm_tokenizer)
    windows = np.flatnonzero(features.example_ids == 0)
    assert len(windows) > 3 and all(features.lengths[w] <= 16 for w in windows)
    predicted_words = np.concatenate([features.word_ids[w][features.word_ids[w] >= 0] for w in windows])
    assert sorted(predicted_words.tolist()) == list(range(40))
    labelled = sum(int((features.labels[w] != IGNORE).sum()) for w in windows)
    assert labelled == 40
    # Stitching: perfect per-window predictions give back every tag, each word from exactly one window.
    perfect = [np.where(f >= 0, np.maximum(lab, 0), 0) for f, lab in zip(features.word_ids, features.labels)]
    assert task.word_predictions(features, frame, perfect) == [tags, ["O"]]
    assert task.metrics(features, frame, perfect)["f1"] == 1.0


def test_features_round_trip_through_the_cache_format(tmp_path, minilm_tokenizer):
    frame = pd.DataFrame(
        {"tokens": [["John", "lives", "in", "Paris"]] * 3, "ner_tags": [["B-PER", "O", "O", "B-LOC"]] * 3}
    )
    features = token_task(max_length=8, stride=2).encode(frame, minilm_tokenizer)
    features.save(tmp_path / "f.npz")
    again = Features.load(tmp_path / "f.npz")
    for name in ("input_ids", "labels", "word_ids"):
        assert all(np.array_equal(a, b) for a, b in zip(getattr(features, name), getattr(again, name)))
    assert np.array_equal(features.example_ids, again.example_ids) and np.array_equal(features.items, again.items)


def test_classification_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, precision_score, recall_score

    labels = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 1])
    preds = np.array([0, 1, 0, 0, 1, 1, 1, 0, 1, 0])
    got = classification_metrics(labels, preds, 2, matthews=True)
    assert got["accuracy"] == pytest.approx(0.7) and got["accuracy"] == accuracy_score(labels, preds)
    assert got["f1"] == pytest.approx(f1_score(labels, preds)) == pytest.approx(8 / 11)
    assert got["precision"] == pytest.approx(precision_score(labels, preds)) == pytest.approx(0.8)
    assert got["recall"] == pytest.approx(recall_score(labels, preds)) == pytest.approx(4 / 6)
    assert got["matthews"] == pytest.approx(matthews_corrcoef(labels, preds))
    three = classification_metrics(np.array([0, 1, 2, 2, 1, 0]), np.array([0, 2, 2, 2, 1, 1]), 3, matthews=False)
    assert three["recall_macro"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert three["f1_macro"] == pytest.approx(f1_score([0, 1, 2, 2, 1, 0], [0, 2, 2, 2, 1, 1], average="macro"))


def test_regression_metrics_match_scipy():
    from scipy.stats import pearsonr, spearmanr

    labels = np.array([0.0, 1.5, 2.0, 3.5, 5.0])
    preds = np.array([0.5, 1.0, 2.5, 3.0, 4.0])
    got = regression_metrics(labels, preds)
    assert got["pearson"] == pytest.approx(pearsonr(preds, labels)[0])
    assert got["spearman"] == pytest.approx(spearmanr(preds, labels)[0]) == pytest.approx(1.0)
    assert got["mse"] == pytest.approx(np.mean((preds - labels) ** 2)) == pytest.approx(0.4)


def test_seqeval_metrics_against_hand_computed_values():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "B-LOC", "O"]]
    # Gold entities: PER, LOC, ORG, LOC(2 words) = 4; predicted: PER, ORG, LOC(1 word) = 3; correct: PER, ORG = 2.
    got = token_metrics(true, pred)
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["recall"] == pytest.approx(2 / 4)
    assert got["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert got["accuracy"] == pytest.approx(6 / 8)
    assert got["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert got["per_type"]["PER"]["f1"] == 1.0


def test_margins_are_the_given_logit_minus_the_best_other():
    task = ClassificationTask(["text"], "label", ["a", "b", "c"], 64)
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0], [1.0, 1.0, 4.0]])
    margins = task.margins(logits.bfloat16(), torch.tensor([0, 0, 2]))
    assert margins.tolist() == [1.0, -3.0, 3.0] and margins.dtype == torch.float32


def test_mislabeled_examples_are_listed_lowest_margin_first(tiny_bert, tmp_path, capsys):
    from conftest import run_cli

    data = tmp_path / "data"
    data.mkdir()
    # Every "good" text is positive but one, every "bad" one negative but one: those two contradict the rest.
    rows = [("good film", 1)] * 40 + [("bad film", 0)] * 40 + [("good film", 0), ("bad film", 1)]
    (data / "train.csv").write_text("text,label\n" + "".join(f"{t} {i},{y}\n" for i, (t, y) in enumerate(rows)))
    (data / "validation.csv").write_text("text,label\n" + "good film,1\nbad film,0\n" * 4)
    out = tmp_path / "run"
    args = ["train", "--model", tiny_bert, "--data", data, "--output", out, "--batch-size", 8, "--epochs", 6]
    code, _, stderr = run_cli(args + ["--lr", "2e-3"], capsys)
    assert code == 0, stderr
    listed = [json.loads(line) for line in (out / "mislabeled.jsonl").read_text().splitlines()]
    summary = json.loads((out / "metrics.json").read_text())["mislabeled"]
    assert summary["flagged"] == len(listed) and summary["lowest"] == listed[: len(summary["lowest"])]
    assert [e["margin"] for e in listed] == sorted(e["margin"] for e in listed)
    # Confident learning flags the two and no more (a margin below 0 also flagged examples still being learnt).
    assert {e["row"] for e in listed} == {80, 81} and summary["examined"] == 82
    assert all(e["probability"] < 0.5 for e in listed)
    assert {(e["text"], e["label"], e["suspected"]) for e in listed[:2]} == {
        ("good film 80", "0", "1"),
        ("bad film 81", "1", "0"),
    }


def test_confident_learning_flags_over_the_classes_the_examples_have():
    task = ClassificationTask(["text"], "label", ["a", "b", "c"], 64)
    # Class 1 of three has no example; row 3 is a confident "0" labelled 2.
    labels = np.array([0, 0, 0, 2, 2, 2, 2, 0])
    probabilities = np.array([[0.9, 0.05, 0.05]] * 4 + [[0.1, 0.05, 0.85]] * 4)
    probabilities[7] = [0.8, 0.1, 0.1]
    assert task.label_issues(labels, probabilities).tolist() == [3]
    assert task.label_issues(np.zeros(4, dtype=int), probabilities[:4]).tolist() == []  # one class: no confusion


@pytest.mark.parametrize("packed", [False, True])
def test_a_token_task_lists_the_sentence_with_the_word_whose_tag_it_keeps_contradicting(minilm_tokenizer, packed):
    """The sums are kept per labelled token, through windows (a long sentence read in overlapping pieces, each
    word's tag in the one window that owns it) and packed batches; the list names the sentence, its words and the
    doubted word's suggested tag, chosen to follow the tag before it."""
    from bertfit.engine.margins import MarginTracker

    task = token_task(max_length=12, stride=3, all_subtokens=True)
    sentences = [["Paris", "is", "in", "France"], ["John", "Smith", "lives", "here"]] * 20
    tags = [["B-LOC", "O", "O", "B-LOC"], ["B-PER", "I-PER", "O", "O"]] * 20
    long = ["the", "mayor", "of", "Rome", "met", "John", "Smith", "and", "Anna", "Larsen", "in", "Paris", "today"]
    sentences.append(long)
    tags.append(["O", "O", "O", "B-LOC", "O", "B-PER", "I-PER", "O", "B-PER", "I-PER", "O", "B-LOC", "O"])
    tags[-1][8] = "O"  # "Anna" is a person the data calls nothing; the model keeps saying B-PER
    frame = pd.DataFrame({"tokens": sentences, "ner_tags": tags})
    features = task.encode(frame, minilm_tokenizer)
    assert (features.example_ids == 40).sum() > 1  # the long sentence is read in windows
    truth = [list(t) for t in tags]
    truth[-1][8] = "B-PER"
    true_features = task.encode(frame.assign(ner_tags=truth), minilm_tokenizer)
    collate = task.collate_packed if packed else task.collate
    tracker = MarginTracker(features, len(TAGS), task.margin_shape, torch.device("cpu"))
    for _ in range(3):  # epochs: the model predicts the true tags, confidently
        for indices in np.array_split(np.random.default_rng(0).permutation(len(features)), 5):
            predicted = collate(true_features, indices, 0)["labels"]
            logits = torch.nn.functional.one_hot(predicted.clamp(min=0), len(TAGS)).float() * 6.0
            tracker.add(task, indices, logits, collate(features, indices, 0)["labels"])
    summary, suspects = tracker.ranked(task, frame, features)
    assert summary.examined == 41 and [s.row for s in suspects] == [40]
    suspect = suspects[0]
    assert suspect.words == long and suspect.label == " ".join(tags[-1])
    suggested = suspect.suspected.split(" ")
    assert suggested[8] == "B-PER" and suggested[:8] + suggested[9:] == tags[-1][:8] + tags[-1][9:]
    assert suspect.margin < 0 and suspect.probability < 0.5 and suspect.seen == 3
    assert task.shown_review(suspect.text, suspect.label, suspect.suspected, suspect.words) == (
        "the mayor of Rome met John Smith and [Anna] Larsen in Paris today",
        "Anna O",
        "Anna B-PER",
    )
    assert task.filed_under(suspect.label, suspect.suspected) == ["B-PER", "O"]
    assert task.relabel_refusal(suspect.label, suspect.suspected) is None
    assert task.relabelled(frame, task.reviewed_labels(task.label_ids(frame)), 40, suspect.suspected) == suggested
    assert task.relabel_refusal(suspect.label, "O O") == "the sentence has 13 words and 2 tags were given"
    assert "the tags are O, B-LOC" in task.relabel_refusal("O", "B-CITY")
    # Entity-level: the person "Anna Larsen" is missed, and the data's lone I-PER on "Larsen" reads as an entity.
    assert task.confusions(" ".join(truth[-1]), suspect.label) == ["PER → missed", "none → PER"]
    assert task.confusions("B-PER I-PER O", "B-ORG I-ORG B-LOC") == ["PER → ORG", "none → LOC"]
    assert task.confusions("B-ORG O", "I-ORG O") == []  # other tags, the same entity: no error as F1 counts it


def test_multi_label_ranks_a_decision_against_the_same_decision_of_other_examples():
    """A rare label the model denies on every example that has it (an ambiguous one) is no sign of a wrong label;
    the model asserting a label on one example where every other example without it is denied is. The raw margins
    would rank them the other way."""
    from bertfit.tasks.multilabel import MultiLabelTask

    task = MultiLabelTask(["text"], "labels", ["joy", "grief"], 64)
    labels = np.array([[1, 0]] * 6 + [[0, 1]] * 4 + [[0, 0]] * 6 + [[0, 0]])  # row 16: joy dropped
    probabilities = np.array(
        [[0.9, 0.05]] * 6 + [[0.1, 0.2], [0.1, 0.25], [0.1, 0.15], [0.1, 0.05]] + [[0.1, 0.05]] * 6
    )
    probabilities = np.vstack([probabilities, [[0.6, 0.05]]])
    margins = np.log(probabilities / (1 - probabilities)) * (2 * labels - 1)
    assert np.argmin(task.suspicion(margins)) == 9  # the denied grief (logit -2.9) before the asserted joy's -0.4
    assert np.argmin(task.ranking(labels, margins, probabilities)) == 16
    assert "z-score" in task.ranked_by
    # A validation error is grouped by each label the model missed or added.
    assert task.confusions("joy|grief", "joy") == ["grief missed"] and task.confusions("(none)", "joy") == ["joy extra"]
    assert task.confusions("joy", "joy") == []


def _same_features(a: Features, b: Features) -> bool:
    def same(x, y):
        if x is None or y is None:
            return x is None and y is None
        if isinstance(x, Ragged):
            same_rows = all(np.array_equal(x[row], y[row]) for row in range(len(x)))
            return same_rows and np.array_equal(x.flat, y.flat) and np.array_equal(x.offsets, y.offsets)
        return np.array_equal(np.asarray(x), np.asarray(y))

    fields = ("input_ids", "labels", "token_type_ids", "word_ids", "example_ids", "full_lengths", "lengths", "items")
    return all(same(getattr(a, name), getattr(b, name)) for name in fields)


@pytest.mark.parametrize("name", ["sst2_200.csv", "rte_100.tsv", "imdb_100.jsonl", "conll_50.conll"])
def test_memory_mapped_features_equal_the_in_memory_ones(name, minilm_tokenizer, tmp_path, monkeypatch):
    """The cache entry is written chunk by chunk (7 rows at a time here), and read back memory-mapped."""
    from conftest import SAMPLES

    from bertfit import tasks
    from bertfit.data import sources
    from bertfit.tasks import base, build_task, features

    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path))
    splits = sources.load_splits(str(SAMPLES / name))
    spec = tasks.detect(splits, "train", "auto", None, None, None)
    frame = tasks.normalise(splits, spec).frames["train"]
    task = build_task(spec.task, spec.text_columns, spec.label_column, spec.label_names, 48, stride=8)
    in_memory = task.encode(frame, minilm_tokenizer)
    monkeypatch.setattr(base, "ENCODE_CHUNK", 7)
    written = task.encode_cached(frame, minilm_tokenizer)  # encodes and writes the cache entry
    mapped = task.encode_cached(frame, minilm_tokenizer)  # reads it back, memory-mapped
    assert isinstance(mapped.input_ids.flat, features.DiskArray) and isinstance(mapped.lengths, np.ndarray)
    assert len(list(tmp_path.glob("features/*"))) == 1
    assert _same_features(in_memory, written) and _same_features(in_memory, mapped)
    batch = np.arange(min(8, len(mapped)))
    ours, theirs = task.collate(mapped, batch, 0), task.collate(in_memory, batch, 0)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize("name", ["sst2_200.csv", "rte_100.tsv", "conll_50.conll"])
def test_encoding_in_chunks_equals_encoding_at_once(name, minilm_tokenizer, monkeypatch):
    from conftest import SAMPLES

    from bertfit import tasks
    from bertfit.data import sources
    from bertfit.tasks import base, build_task

    splits = sources.load_splits(str(SAMPLES / name))
    spec = tasks.detect(splits, "train", "auto", None, None, None)
    frame = tasks.normalise(splits, spec).frames["train"]
    task = build_task(spec.task, spec.text_columns, spec.label_column, spec.label_names, 24)  # truncates many
    at_once = task.encode(frame, minilm_tokenizer)
    monkeypatch.setattr(base, "ENCODE_CHUNK", 7)
    assert _same_features(at_once, task.encode(frame, minilm_tokenizer))


def test_class_weights_weigh_the_loss_as_torch_does_and_only_for_classification():
    from bertfit.config import build_config
    from bertfit.errors import BertfitError
    from bertfit.tasks import build_task

    assert build_config(overrides={"class_weights": "1,4"}).class_weights == [1.0, 4.0]
    assert build_config(overrides={"class_weights": "balanced"}).class_weights == "balanced"
    for bad in ("heavy", "1,-2", [0.0, 1.0]):
        with pytest.raises(BertfitError, match="class_weights"):
            build_config(overrides={"class_weights": bad})
    task = build_task("classification", ["text"], "label", ["a", "b", "c"], 32, class_weights=[0.5, 2.0, 1.5])
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    expected = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.5]), reduction="sum")(logits, labels)
    assert torch.allclose(task.loss_sum(logits, labels), expected)
    frame = pd.DataFrame({"text": list("abcdefgh"), "label": ["a"] * 6 + ["b", "c"]})
    from sklearn.utils.class_weight import compute_class_weight

    balanced = task.balanced_class_weights(frame)
    assert balanced == pytest.approx(compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=[0] * 6 + [1, 2]))
    with pytest.raises(BertfitError, match="class_weights apply to classification; this is a regression task"):
        build_task("regression", ["text"], "score", None, 32, class_weights="balanced")


def test_the_doctor_advises_class_weights_and_says_when_they_were_on():
    from bertfit.config import Config
    from bertfit.report.diagnose import _imbalance_remedy

    assert "class_weights: balanced" in _imbalance_remedy(Config())
    assert "class weights were on (1, 9)" in _imbalance_remedy(Config(class_weights=[1, 9]))


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_classification_metrics_equal_scikit_learns(n_classes, seed):
    from sklearn import metrics

    from bertfit.tasks.classification import classification_metrics

    rng = np.random.default_rng(seed)
    size = [1, 7, 50, 400][seed]
    labels = rng.integers(0, n_classes, size)
    predictions = np.where(rng.random(size) < 0.6, labels, rng.integers(0, n_classes - (seed == 3), size))
    ours = classification_metrics(labels, predictions, n_classes, matthews=True)
    average = {"average": "binary", "pos_label": 1} if n_classes == 2 else {"average": "macro"}
    kwargs = {**average, "labels": list(range(n_classes)) if n_classes > 2 else None, "zero_division": 0}
    suffix = "" if n_classes == 2 else "_macro"
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(labels, predictions))
    assert ours["f1" + suffix] == pytest.approx(metrics.f1_score(labels, predictions, **kwargs))
    assert ours["precision" + suffix] == pytest.approx(metrics.precision_score(labels, predictions, **kwargs))
    assert ours["recall" + suffix] == pytest.approx(metrics.recall_score(labels, predictions, **kwargs))
    assert ours["matthews"] == pytest.approx(metrics.matthews_corrcoef(labels, predictions))
    expected = metrics.confusion_matrix(labels, predictions, labels=list(range(n_classes)))
    assert ours["confusion_matrix"] == expected.tolist()


class PolarityTask(ClassificationTask):
    """A task kind written in a test, as a user would write one: it reads classification data, and renders its
    own parts (what it does, its result table, its profile line, its prediction record)."""

    kind = "polarity"

    def does(self, unit: str) -> str:
        return f"says whether each {unit} leans {' or '.join(self.label_names)}"

    def result_tables(self, metrics: dict):
        return [("Polarity balance ({split})", ["Label", "Share"], [[name, "x"] for name in self.label_names])]

    @classmethod
    def label_summary(cls, split: dict) -> list[str]:
        return [f"polarities {', '.join(split.labels)}"]

    def prediction_record(self, row, prediction):
        return {"passage": row[0], "polarity": prediction["label"], "confidence": round(prediction["score"], 3)}


def test_a_task_kind_added_in_its_own_module_alone_trains_reports_and_predicts(
    tiny_bert, tmp_path, capsys, monkeypatch
):
    """ARCHITECTURE's promise, kept: a new kind touches its module and the registry, nothing in engine/,
    report/ or cli.py, and gets a run folder, a card and predict output of its own."""
    from conftest import run_cli, sample_run_args

    from bertfit import config, tasks

    monkeypatch.setattr(config, "TASK_KINDS", list(config.TASK_KINDS))
    monkeypatch.setitem(tasks.TASKS, "polarity", PolarityTask)
    tasks.register(PolarityTask)
    out = tmp_path / "run"
    args = sample_run_args(tiny_bert, out, "--task", "polarity", "--max-steps", 2, "--label-names", "negative,positive")
    code, _, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    assert "task: polarity" in (out / "recipe.yaml").read_text()
    card = (out / "README.md").read_text()
    assert "This model says whether each text leans negative or positive" in card
    assert "### Polarity balance (validation)" in card and "| negative | x |" in card
    assert "polarities negative, positive" in card  # its profile line
    texts = tmp_path / "texts.txt"
    texts.write_text("a gripping film\n")
    code, _, stderr = run_cli(["predict", out, "--input", texts, "--output", tmp_path / "p.jsonl"], capsys)
    assert code == 0, stderr
    (record,) = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert record["passage"] == "a gripping film" and record["polarity"] in ("negative", "positive")
    assert set(record) == {"passage", "polarity", "confidence"}


def test_detection_asks_each_registered_kind_whether_the_data_is_its_own(monkeypatch):
    """`tasks.detect` asks the kinds, in the order they were registered: a kind added in a test claims the data
    of its shape (here: a `stance` column) without a line changed in data/."""
    from dataclasses import replace

    import pandas as pd

    from bertfit import config, tasks
    from bertfit.data import sources
    from bertfit.data.schema import single_label

    class StanceTask(ClassificationTask):
        kind = data_kind = "stance"

        @classmethod
        def claims(cls, found):
            return "stance" in found.train.columns

        @classmethod
        def read_data(cls, found):
            return replace(single_label(replace(found, label_column="stance"), "classification"), task="stance")

    monkeypatch.setattr(config, "TASK_KINDS", list(config.TASK_KINDS))
    monkeypatch.setattr(tasks, "TASKS", dict(tasks.TASKS))
    tasks.register(StanceTask)
    frame = pd.DataFrame({"text": ["for it", "against it", "for", "against"] * 3, "stance": ["pro", "con"] * 6})
    splits = sources.Splits("stances", {"train": frame}, {"train": "stances.csv"})
    spec = tasks.detect(splits, "train", "auto", None, None, None)
    assert (spec.task, tasks.kind_of("auto", spec), spec.label_column) == ("stance", "stance", "stance")
    assert tasks.normalise(splits, spec).frames["train"].equals(frame)
    other = sources.Splits("reviews", {"train": frame.rename(columns={"stance": "label"})}, {"train": "r.csv"})
    assert tasks.detect(other, "train", "auto", None, None, None).task == "classification"


def test_a_splits_cache_key_does_not_depend_on_whether_the_split_before_it_was_cached(minilm_tokenizer):
    """Encoding sets the tokenizer's truncation: a key that hashed it made a run that tokenized train give its
    validation split another key than a run that read train from the cache, and resume refuse the 'changed' data."""
    from bertfit.tasks.features import tokenizer_fingerprint

    before = tokenizer_fingerprint(minilm_tokenizer)
    ClassificationTask(["sentence"], "label", ["0", "1"], 16).encode(
        pd.DataFrame({"sentence": ["a rather long sentence that is cut"] * 2, "label": [0, 1]}), minilm_tokenizer
    )
    assert tokenizer_fingerprint(minilm_tokenizer) == before


def test_multi_label_lists_the_labels_in_doubt_and_a_review_corrects_them(tiny_bert, tmp_path, capsys):
    """Per label: a label the model keeps denying is extra, one it keeps asserting is missing; the suggestion
    flips them, and `--corrections` writes the suggested set back in the data's own form."""
    from conftest import run_cli

    from bertfit.config import build_config
    from bertfit.engine.setup import run_frames
    from bertfit.runfiles import Decision, text_hash

    data = tmp_path / "data"
    data.mkdir()
    rows = [("good film", "pos")] * 40 + [("bad film", "neg")] * 40 + [("good film", "neg"), ("bad film", "neg|pos")]
    (data / "train.csv").write_text("text,labels\n" + "".join(f"{t} {i},{y}\n" for i, (t, y) in enumerate(rows)))
    (data / "validation.csv").write_text("text,labels\n" + "good film,pos\nbad film,neg\n" * 4)
    out = tmp_path / "run"
    args = ["train", "--model", tiny_bert, "--data", data, "--output", out, "--task", "multi_label"]
    args += ["--method", "finetune", "--batch-size", 8, "--epochs", 6, "--lr", "2e-3"]
    code, _, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    listed = {e["row"]: e for e in map(json.loads, (out / "mislabeled.jsonl").read_text().splitlines())}
    assert {80, 81} <= set(listed) and len(listed) <= 4
    assert (listed[80]["label"], listed[80]["suspected"]) == ("neg", "pos")  # neg extra, pos missing
    assert (listed[81]["label"], listed[81]["suspected"]) == ("neg|pos", "neg")  # pos extra
    assert all(listed[row]["probability"] < 0.5 for row in (80, 81))

    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text(
        "".join(
            Decision(
                row=row,
                text_sha256=text_hash(listed[row]["text"]),
                label=listed[row]["label"],
                action="relabel",
                new_label=listed[row]["suspected"],
                time=1.0,
            ).model_dump_json()
            + "\n"
            for row in (80, 81)
        )
    )
    again = tmp_path / "again"
    code, _, stderr = run_cli([*args[:6], again, *args[7:], "--corrections", decisions], capsys)
    assert code == 0, stderr
    labels = run_frames(build_config(str(again / "recipe.yaml")))["train"]["labels"].tolist()
    assert labels[80] == ["pos"] and labels[81] == ["neg"] and labels[0] == ["pos"]
