import json

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLES

from bertfit import tasks
from bertfit.data import readers, sources, tags
from bertfit.errors import BertfitError


def detect_source(source, **kwargs):
    """As a run does: detect on the files as they are, normalise, then carve the validation split."""
    splits = sources.load_splits(str(source))
    spec = tasks.detect(
        splits,
        "train",
        kwargs.get("task", "auto"),
        kwargs.get("text_columns"),
        kwargs.get("label_column"),
        kwargs.get("label_names"),
    )
    splits = sources.choose_splits(tasks.normalise(splits, spec), "train", None, None, 42, 0.1)[0]
    return splits, spec


@pytest.mark.parametrize(
    "name, task, text, label, labels",
    [
        ("sst2_200.csv", "classification", ["sentence"], "label", ["0", "1"]),
        ("imdb_100.jsonl", "classification", ["text"], "label", ["0", "1"]),
        ("rte_100.tsv", "classification", ["sentence1", "sentence2"], "label", ["entailment", "not_entailment"]),
        ("conll_50.conll", "token", ["tokens"], "ner_tags", None),
    ],
)
def test_every_sample_file_is_detected(name, task, text, label, labels):
    splits, spec = detect_source(SAMPLES / name)
    assert (spec.task, spec.text_columns, spec.label_column) == (task, text, label)
    if labels:
        assert spec.label_names == labels
    assert set(splits.frames) == {"train", "validation"}  # a single file gets a seeded validation split


def test_conll_sample_parses_sentences_and_tags():
    frame = readers.read_conll(SAMPLES / "conll_50.conll")
    assert len(frame) == 50
    assert frame["tokens"][0] == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    assert frame["ner_tags"][0] == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
    _, spec = detect_source(SAMPLES / "conll_50.conll")
    assert spec.label_names[0] == "O" and spec.tag_scheme == "IOB2"
    assert spec.label_names.index("B-PER") + 1 == spec.label_names.index("I-PER")


def test_conll_docstart_and_blank_lines(tmp_path):
    path = tmp_path / "x.conll"
    path.write_text("-DOCSTART- -X- O O\n\nJohn NNP B-PER\nruns VBZ O\n\n\nParis NNP B-LOC\n")
    frame = readers.read_conll(path)
    assert frame["tokens"].tolist() == [["John", "runs"], ["Paris"]]
    assert frame["ner_tags"].tolist() == [["B-PER", "O"], ["B-LOC"]]


def test_mirror_names_and_hub_aliases_resolve_offline():
    for name in ("sst2", "glue/sst2", "tweet_eval/sentiment", "conll2003", "glue/stsb"):
        assert sources.mirror_folder(name) is not None, name
    splits, spec = detect_source("glue/sst2")
    assert spec.label_names == ["negative", "positive"] and len(splits.frames["validation"]) == 872


def test_pairs_and_regression_are_detected():
    _, rte = detect_source("rte")
    assert rte.text_columns == ["sentence1", "sentence2"] and rte.label_names == ["entailment", "not_entailment"]
    _, stsb = detect_source("stsb")
    assert stsb.task == "regression" and stsb.label_names is None


@pytest.mark.parametrize(
    "columns, expected",
    [
        ({"premise": ["a"], "hypothesis": ["b"], "label": [0]}, ["premise", "hypothesis"]),
        ({"question": ["a"], "sentence": ["b"], "label": [1]}, ["question", "sentence"]),
        ({"review": ["good"], "sentiment": ["pos"]}, ["review"]),
        ({"tweet": ["hi"], "target": [0]}, ["tweet"]),
        ({"body": ["x"], "category": ["a"]}, ["body"]),
    ],
)
def test_common_column_names(tmp_path, columns, expected):
    path = tmp_path / "d.jsonl"
    first = {name: values[0] for name, values in columns.items()}
    label = list(columns)[-1]
    other = 1 - first[label] if isinstance(first[label], int) else first[label] + "2"
    rows = [first, {**first, label: other}] * 5
    path.write_text("\n".join(json.dumps(r) for r in rows))
    _, spec = detect_source(path)
    assert spec.text_columns == expected


def test_string_labels_sorted_and_overridable(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": ["pos", "neg"] * 10}).to_csv(path, index=False)
    assert detect_source(path)[1].label_names == ["neg", "pos"]
    assert detect_source(path, label_names=["pos", "neg"])[1].label_names == ["pos", "neg"]


def test_carved_validation_and_subsample_are_seeded():
    splits = sources.choose_splits(sources.load_splits(str(SAMPLES / "sst2_200.csv")), "train", None, None, 7, 0.1)[0]
    again = sources.choose_splits(sources.load_splits(str(SAMPLES / "sst2_200.csv")), "train", None, None, 7, 0.1)[0]
    assert splits.frames["validation"].equals(again.frames["validation"]) and len(splits.frames["validation"]) == 20
    assert not set(splits.frames["validation"]["sentence"]) & set(splits.frames["train"]["sentence"])
    frame = pd.DataFrame({"x": range(100)})
    first, second = sources.subsample(frame, 10, 3), sources.subsample(frame, 10, 3)
    assert first.equals(second) and first["x"].is_monotonic_increasing and first["x"].max() > 50


def test_a_carved_validation_split_keeps_the_class_shares():
    """180 of one class and 20 of another: a random 10% carve holds anywhere from 0 to 5 of the rare class; a
    stratified one exactly 2 of 20, as sklearn's train_test_split(stratify=...) chooses them."""
    from sklearn.model_selection import train_test_split

    labels = ["rare" if i % 10 == 7 else "common" for i in range(200)]
    frame = pd.DataFrame({"text": [f"text {i}" for i in range(200)], "label": labels})
    splits = sources.Splits("imbalanced", {"train": frame}, {"train": "data.csv"})
    carved, *_ = sources.choose_splits(splits, "train", None, None, 3, 0.1, stratify_by="label")
    validation, train = carved.frames["validation"], carved.frames["train"]
    assert (validation["label"] == "rare").sum() == 2 and (train["label"] == "rare").sum() == 18
    _, expected = train_test_split(np.arange(200), test_size=20, random_state=3, stratify=frame["label"])
    assert validation["text"].tolist() == frame["text"].iloc[np.sort(expected)].tolist()
    assert "stratified by label" in carved.notes[-1]
    # A class with one example cannot be in both sides: the carve is random then, not an error.
    lonely = pd.DataFrame({"text": ["a", "b", "c", "d"] * 5, "label": ["x"] * 19 + ["y"]})
    splits = sources.Splits("lonely", {"train": lonely}, {"train": "data.csv"})
    carved, *_ = sources.choose_splits(splits, "train", None, None, 3, 0.1, stratify_by="label")
    assert len(carved.frames["validation"]) == 2 and "stratified" not in carved.notes[-1]


def test_training_carves_a_stratified_validation_split(tmp_path):
    from bertfit import models
    from bertfit.config import Config
    from bertfit.engine.device import default_device
    from bertfit.engine.setup import check_inputs, prepare_data

    cfg = Config(data=str(SAMPLES / "sst2_200.csv"), output=str(tmp_path / "run"), model="minilm")
    inputs = check_inputs(cfg, default_device())
    tokenizer = models.load_tokenizer(models.resolve_model("minilm"))
    _, splits, *_ = prepare_data(cfg, inputs, tokenizer)
    assert "stratified by label" in splits.files["validation"]


def test_iob1_is_converted_and_iob2_repaired():
    iob1 = [["I-PER", "I-PER", "O", "I-LOC"], ["I-ORG", "B-ORG", "O"]]
    converted, scheme, repaired = tags.normalise_tags(iob1)
    assert scheme == "IOB1" and repaired == 0
    assert converted == [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "B-ORG", "O"]]
    iob2 = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "I-MISC", "O"], ["B-ORG"]]
    converted, scheme, repaired = tags.normalise_tags(iob2)
    assert scheme == "IOB2" and repaired == 1 and converted[1] == ["O", "B-MISC", "O"]
    bioes = [["S-PER", "O", "B-LOC", "E-LOC"]]
    assert tags.normalise_tags(bioes) == (bioes, "BIOES", 0)


def test_tag_order_puts_o_first_then_types():
    assert tags.order_tags({"I-PER", "B-LOC", "O", "B-PER", "I-LOC"}) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_test_split_can_be_switched_off_or_named():
    splits = sources.load_splits("conll2003")
    assert sources.choose_splits(splits, "train", None, "none", 42, 0.1)[1:] == ("train", "validation", None)
    assert sources.choose_splits(splits, "train", None, None, 42, 0.1)[3] == "test"
    with pytest.raises(BertfitError, match="has no 'dev' split .*test_split=none"):
        sources.choose_splits(splits, "train", None, "dev", 42, 0.1)


def test_a_dataset_without_train_split_says_so_and_trains_on_a_named_split(tmp_path):
    for split in ("validation", "test"):
        (tmp_path / f"{split}.csv").write_text("sentence,label\n" + "good,1\nbad,0\n" * 5)
    splits = sources.load_splits(str(tmp_path))
    with pytest.raises(BertfitError, match="has no 'train' split .*train_split=NAME"):
        sources.choose_splits(splits, "train", None, None, 42, 0.1)
    _, train, eval_split, test = sources.choose_splits(splits, "test", "validation", None, 42, 0.1)
    assert (train, eval_split, test) == ("test", "validation", None)


def test_tweet_mirror_has_its_train_split():
    splits = sources.load_splits("tweet_eval/sentiment")
    assert {name: len(frame) for name, frame in splits.frames.items()} == {
        "train": 45_615,
        "validation": 2_000,
        "test": 12_284,
    }
    assert sources.choose_splits(splits, "train", None, None, 42, 0.1)[1:] == ("train", "validation", "test")


def test_train_and_test_only_gets_a_carved_validation_split_and_keeps_test():
    original = sources.load_splits("imdb")
    assert set(original.frames) == {"train", "test"}
    splits, *names = sources.choose_splits(original, "train", None, None, 42, 0.1)
    assert names == ["train", "validation", "test"]
    assert len(splits.frames["validation"]) == 2500 and len(splits.frames["train"]) == 22500
    assert set(original.frames) == {"train", "test"} and len(original.frames["train"]) == 25000  # left as it was
    # A resolved recipe names the carved split; asking for it again carves the same rows.
    again = sources.choose_splits(sources.load_splits("imdb"), "train", "validation", None, 42, 0.1)[0]
    assert again.frames["validation"].equals(splits.frames["validation"])


def test_hub_path_keeps_classlabel_names_and_tag_names(monkeypatch):
    import datasets

    calls = []
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"])),
        }
    )
    token_data = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"tokens": [["John", "Smith", "runs"]] * 4, "ner_tags": [[1, 2, 0]] * 4}, features=features
            ),
            "validation": datasets.Dataset.from_dict({"tokens": [["Mary"]], "ner_tags": [[1]]}, features=features),
        }
    )
    text_features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    text_data = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"sentence": ["good", "bad"] * 5, "label": [1, 0] * 5}, features=text_features
            )
        }
    )

    def fake_load(*args):
        calls.append(args)
        return token_data if args == ("eriktks/conll2003",) else text_data

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.delenv("BERTFIT_DATA_DIR")
    splits = sources.load_splits("conll2003")
    assert splits.frames["train"]["ner_tags"][0] == ["B-PER", "I-PER", "O"]
    spec = tasks.detect(splits, "train", "auto", None, None, None)
    assert spec.task == "token" and spec.label_names == ["O", "B-PER", "I-PER"]
    glue = sources.load_splits("glue/sst2")
    assert glue.label_names == ["negative", "positive"] and calls[-1] == ("nyu-mll/glue", "sst2")


def test_hub_failure_is_one_clear_line(monkeypatch):
    import datasets

    def unreachable(*args):
        raise ConnectionError("Couldn't reach 'nope/nothing' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(BertfitError, match=r"dataset 'nope/nothing' not found locally .* the hub is unreachable"):
        sources.load_splits("nope/nothing")


def test_integer_labels_that_are_not_0_to_k_are_classes_named_by_their_number(tmp_path):
    path = tmp_path / "stars.csv"
    pd.DataFrame({"text": [f"review {i}" for i in range(20)], "label": [-1, 1, 5, 5] * 5}).to_csv(path, index=False)
    splits, spec = detect_source(path)
    assert spec.label_names == ["-1", "1", "5"]
    assert any("not 0..2" in note for note in splits.notes)
    from bertfit.tasks import build_task

    task = build_task("classification", ["text"], "label", spec.label_names, 32, "head", ())
    assert task.label_ids(pd.DataFrame({"label": [-1, 1, 5, 5]})).tolist() == [0, 1, 2, 2]
    # Float-typed whole numbers (a column with a missing value elsewhere reads as float) name the same classes.
    assert task.label_ids(pd.DataFrame({"label": [5.0, -1.0]})).tolist() == [2, 0]


def test_plain_tags_are_read_as_the_io_scheme(tmp_path):
    path = tmp_path / "io.jsonl"
    rows = [{"tokens": ["John", "Smith", "went", "to", "Paris"], "ner_tags": ["PER", "PER", "O", "O", "LOC"]}] * 4
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits, spec = detect_source(path)
    assert spec.tag_scheme == "IO" and spec.label_names == ["O", "B-LOC", "B-PER", "I-PER"]
    assert splits.frames["train"]["ner_tags"][0] == ["B-PER", "I-PER", "O", "O", "B-LOC"]


def test_json_output_has_no_nan():
    from bertfit.files import to_json

    text = to_json({"pearson": float("nan"), "loss": float("inf"), "nested": [np.float32("nan"), 1.5]})
    assert json.loads(text) == {"pearson": None, "loss": None, "nested": [None, 1.5]}


def test_detection_leaves_the_data_as_it_is_and_normalise_returns_new_frames(tmp_path):
    path = tmp_path / "iob1.jsonl"
    rows = [{"tokens": ["John", "Smith", "in", "Paris"], "ner_tags": ["I-PER", "I-PER", "O", "I-LOC"]}] * 4
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = sources.load_splits(str(path))
    before = splits.frames["train"].copy(deep=True)
    spec = tasks.detect(splits, "train", "auto", None, None, None)
    assert spec.tag_scheme == "IOB1" and splits.frames["train"].equals(before) and splits.notes == []
    normalised = tasks.normalise(splits, spec)
    assert normalised.frames["train"]["ner_tags"][0] == ["B-PER", "I-PER", "O", "B-LOC"]
    assert splits.frames["train"].equals(before)  # the detected splits are still the files' contents
    assert any("IOB1" in note for note in normalised.notes) and splits.notes == []


GLUE_MNLI_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)


def glue_mnli_row(i: int, label: str) -> str:
    premise, hypothesis = f"The cat sat on mat {i} .", f'A "cat" is on mat {i} .'
    parse = "( ( The cat ) ( sat ) )"
    return (
        f"{i}\t{i}\t{i}e\tfiction\t{parse}\t{parse}\t(ROOT (S))\t(ROOT (S))\t{premise}\t{hypothesis}\t{label}\t{label}"
    )


def test_glue_format_mnli_just_works(tmp_path):
    labels = ["entailment", "neutral", "contradiction"]
    for name, n in (("train", 30), ("dev_matched", 9), ("dev_mismatched", 9)):
        rows = [glue_mnli_row(i, labels[i % 3]) for i in range(n)]
        (tmp_path / f"{name}.tsv").write_text(GLUE_MNLI_HEADER + "\n" + "\n".join(rows) + "\n")
    splits = sources.load_splits(str(tmp_path))
    assert set(splits.frames) == {"train", "validation_matched", "validation_mismatched"}
    spec = tasks.detect(splits, "train", "auto", None, None, None)
    assert (spec.task, spec.text_columns, spec.label_column) == (
        "classification",
        ["sentence1", "sentence2"],
        "gold_label",
    )
    assert sorted(spec.label_names) == sorted(labels)
    _, train, eval_split, test = sources.choose_splits(splits, "train", None, None, 42, 0.1)
    assert (train, eval_split, test) == ("train", "validation_matched", None)  # nothing carved off train
    # The MNLI seed recipe's split names (eval_split validation_matched, test_split validation_mismatched).
    chosen = sources.choose_splits(splits, "train", "validation_matched", "validation_mismatched", 42, 0.1)
    assert chosen[1:] == ("train", "validation_matched", "validation_mismatched")


def test_a_missing_mirror_names_where_it_looked(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a: (_ for _ in ()).throw(ConnectionError("offline")))
    monkeypatch.setenv("BERTFIT_DATA_DIR", str(tmp_path))
    with pytest.raises(BertfitError, match=f"no folder 'mnli' in BERTFIT_DATA_DIR \\({tmp_path}\\)"):
        sources.load_splits("mnli")
    monkeypatch.delenv("BERTFIT_DATA_DIR")
    with pytest.raises(BertfitError, match="BERTFIT_DATA_DIR is not set"):
        sources.load_splits("mnli")


def test_a_bad_row_deep_in_a_large_file_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "big.csv"
    rows = [f"sentence number {i},{i % 2}" for i in range(300_000)]
    rows[250_000] = "a sentence, with an unquoted comma,1"
    path.write_text("sentence,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(
        BertfitError, match=r"file '.*big\.csv' has rows with the wrong number of fields \(.*line 250002"
    ):
        sources.load_splits(str(path))


@pytest.mark.parametrize(
    ("bad_row", "task", "message"),
    [
        ("a sentence,", "auto", r"'.*big\.csv' row 250001: label is empty or NaN"),
        ("a sentence,0.5", "classification", r"'.*big\.csv' row 250001: label 0\.5 is not a whole number"),
        ('"   ",1', "auto", r"'.*big\.csv' row 250001: text column 'sentence' is empty \(2 such rows\)"),
        ("a sentence,positive", "auto", r"'.*big\.csv' row 250001: label 'positive' is text, but labels are number"),
    ],
)
def test_a_bad_value_deep_in_a_large_file_is_named_by_its_row(tmp_path, bad_row, task, message):
    """Labels are checked per distinct value, and texts a million rows at a time: still the first bad row."""
    path = tmp_path / "big.csv"
    rows = [f"sentence number {i},{i % 2}" for i in range(300_000)]
    rows[250_000] = bad_row
    rows[280_000] = bad_row  # a second one: the first is named
    path.write_text("sentence,label\n" + "\n".join(rows) + "\n")
    splits = sources.load_splits(str(path))
    with pytest.raises(BertfitError, match=message):
        tasks.detect(splits, "train", task, None, None, None)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 24])
def test_utf8_is_checked_in_chunks_and_names_the_line(tmp_path, chunk):
    path = tmp_path / "mixed.csv"
    good = "text,label\ncafé ünïcode 日本,1\nplain,0\n".encode()
    path.write_bytes(good + b"bad \xff byte,1\n")
    path.with_name("ok.csv").write_bytes(good)
    readers.check_utf8(path.with_name("ok.csv"), chunk)  # multi-byte characters split across chunks are fine
    with pytest.raises(BertfitError, match=r"is not UTF-8 text: byte 0xff on line 4; re-save it as UTF-8"):
        readers.check_utf8(path, chunk)
    truncated = path.with_name("cut.csv")
    truncated.write_bytes(good + "é".encode()[:1])  # a multi-byte character cut at the end of the file
    with pytest.raises(BertfitError, match=r"byte 0xc3 on line 4"):
        readers.check_utf8(truncated, chunk)


def test_an_unreachable_hub_is_one_line_at_once_without_datasets_retrying(monkeypatch, capsys):
    """Not offline, the hub's address refusing connections (a closed loopback port): the error comes from one
    connection attempt, before `datasets` would retry for half a minute."""
    import socket

    import datasets
    from conftest import free_port, run_cli

    tried = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: tried.append(a))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    port = free_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with socket.socket() as closed:  # nothing listens there
        assert closed.connect_ex(("127.0.0.1", port)) != 0
    code, _, stderr = run_cli(["train", "--model", "minilm", "--data", "nope/nothing", "--output", "x"], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "dataset 'nope/nothing' not found locally" in stderr
    assert "the hub (127.0.0.1) cannot be reached (Connection refused)" in stderr
    assert not tried  # datasets was never asked
