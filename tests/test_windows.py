"""truncation: windows — long texts read whole as overlapping windows, their predictions pooled per text in
training-time evaluation, `eval` and `predict`, and a windowed run resumed exactly."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SAMPLES, assert_resumes_bit_exactly, run_cli, sample_run_args

from bertfit.tasks import build_task

IMDB = SAMPLES / "imdb_100.jsonl"


def windowed(max_length=32, stride=8, kind="classification", pooling="mean"):
    names = ["0", "1"] if kind == "classification" else None
    return build_task(kind, ["text"], "label", names, max_length, "windows", stride=stride, window_pooling=pooling)


def test_windows_cover_every_token_of_a_long_text_with_the_given_overlap(minilm_tokenizer):
    frame = pd.read_json(IMDB, lines=True).head(6)
    task = windowed(max_length=32, stride=8)
    features = task.encode(frame, minilm_tokenizer)
    whole = minilm_tokenizer(frame["text"].tolist())["input_ids"]
    assert np.array_equal(features.full_lengths, [len(ids) for ids in whole])
    assert features.lengths.max() <= 32
    for example, ids in enumerate(whole):
        rows = np.flatnonzero(np.asarray(features.example_ids) == example)
        windows = [features.input_ids[r].tolist() for r in rows]
        assert all(w[0] == ids[0] and w[-1] == ids[-1] for w in windows)  # [CLS] ... [SEP] in every window
        bodies = [w[1:-1] for w in windows]
        rebuilt = bodies[0] + [t for body in bodies[1:] for t in body[8:]]  # each next window repeats 8 tokens
        assert rebuilt[: len(ids) - 2] == ids[1:-1] and len(rebuilt) >= len(ids) - 2
        assert all(features.labels[r] == frame["label"].iloc[example] for r in rows)
    assert len(features) > len(frame)  # IMDB reviews are longer than 30 tokens


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_window_logits_are_pooled_per_text_before_the_decision(minilm_tokenizer, pooling):
    frame = pd.DataFrame({"text": ["short one", " ".join(["long"] * 100)], "label": [0, 1]})
    task = windowed(pooling=pooling)
    features = task.encode(frame, minilm_tokenizer)
    owners = np.asarray(features.example_ids)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(features), 2)).astype(np.float32)
    pool = np.mean if pooling == "mean" else np.max
    expected = np.stack([pool(logits[owners == e], axis=0) for e in range(2)])
    assert np.array_equal(task.per_example(features, logits, task.decide), expected.argmax(1))
    probabilities = task.per_example(features, logits, task.probabilities)
    assert probabilities == pytest.approx(torch.from_numpy(expected).softmax(-1).numpy(), abs=1e-6)
    metrics = task.metrics(features, frame, logits)
    assert metrics["accuracy"] == float(np.mean(expected.argmax(1) == [0, 1]))


def test_windows_apply_to_single_texts_only():
    from bertfit.errors import BertfitError

    with pytest.raises(BertfitError, match="truncation 'windows' reads single long texts"):
        build_task("classification", ["premise", "hypothesis"], "label", ["0", "1"], 64, "windows")


def windows_args(model, out, *extra):
    return sample_run_args(model, out, "--truncation", "windows", "--max-length", 64, "--stride", 16, *extra, data=IMDB)


def test_a_windowed_run_scores_and_predicts_each_text_once(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    args = windows_args(tiny_bert, out, "--max-steps", 8, "--eval-every", 4, "--batch-size", 16, "--lr", "1e-3")
    code, _, stderr = run_cli([*args, "--precision", "fp32"], capsys)
    assert code == 0, stderr
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert start["features"]["train"] > start["examples"]["train"]  # long reviews became several windows
    profile = json.loads((out / "data_profile.json").read_text())
    assert profile["splits"]["train"]["tokens"]["windowed"] > 0
    assert "split into windows of 64" in (out / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    validation = metrics["validation"]
    assert sum(map(sum, validation["confusion_matrix"])) == start["examples"]["validation"]  # per text, not window
    code, stdout, _ = run_cli(["eval", out, "--data", IMDB, "--split", "train"], capsys)
    assert code == 0 and sum(map(sum, json.loads(stdout)["confusion_matrix"])) == 100
    # predict: the softmax of the mean of the text's window logits, computed here with transformers alone
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    text = pd.read_json(IMDB, lines=True)["text"].iloc[0]
    code, stdout, _ = run_cli(["predict", out, "--text", text], capsys)
    ours = json.loads(stdout)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    ids = tokenizer(text)["input_ids"]
    body, windows, start_at = ids[1:-1], [], 0
    while True:
        windows.append(ids[:1] + body[start_at : start_at + 62] + ids[-1:])
        if start_at + 62 >= len(body):
            break
        start_at += 62 - 16
    with torch.no_grad():
        logits = torch.cat([model(input_ids=torch.tensor([w])).logits for w in windows]).mean(0)
    assert ours["score"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-5)
    assert ours["label"] == model.config.id2label[int(logits.argmax())]


@pytest.mark.slow  # training subprocesses
def test_a_windowed_run_resumes_bit_exactly(tiny_bert, tmp_path):
    common = ["--max-steps", 24, "--eval-every", 12, "--checkpoint-every", 3, "--batch-size", 8, "--lr", "1e-3"]
    common += ["--set", "log_every=1"]
    assert_resumes_bit_exactly(lambda out: windows_args(tiny_bert, out, *common), tmp_path, kill_at=8)
