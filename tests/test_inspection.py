"""Data profile numbers on hand-made data, where every count is known."""

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLES

from bertfit.data.schema import DataSpec
from bertfit.report.inspect import inspect_source
from bertfit.runfiles import DataProfile
from bertfit.tasks import build_task
from bertfit.tasks.profile import length_stats, normalise_texts, profile, summary_lines


def profile_of(frames, spec):
    task = build_task(spec.task, spec.text_columns, spec.label_column, spec.label_names, 512)
    return profile(frames, task, spec).dump()  # as data_profile.json holds it


def test_classification_profile_counts():
    train = pd.DataFrame(
        {
            "text": ["Good film!", "good film", "bad", "bad", "awful", "fine", "ok", "great", "", "meh"],
            "label": [1, 1, 0, 0, 0, 1, 1, 1, 1, 1],
        }
    )
    validation = pd.DataFrame({"text": ["GOOD  film.", "new text", "bad", "other"], "label": [1, 0, 0, 2]})
    spec = DataSpec("classification", ["text"], "label", ["neg", "pos", "mixed"])
    report = profile_of({"train": train, "validation": validation}, spec)
    split = report["splits"]["train"]
    assert split["rows"] == 10 and split["labels"] == {"pos": 7, "neg": 3}
    assert split["imbalance_ratio"] == pytest.approx(7 / 3) and split["majority_rate"] == 0.7
    assert split["duplicates"] == 1  # "bad" twice
    assert split["normalised_duplicates"] == 2  # and "Good film!" ~ "good film"
    assert split["empty_texts"] == 1
    assert report["splits"]["validation"]["labels_not_in_train"] == ["mixed"]
    # Both shared texts are short phrases: counted, but not as copied examples.
    assert report["leakage"]["validation"] == {
        "exact": 1,
        "normalised": 2,
        "share": 0.5,
        "substantive": 0,
        "substantive_share": 0.0,
    }
    lines = summary_lines(DataProfile.model_validate(report))
    assert any(line.startswith("leakage: 1 exact and 2 normalised") for line in lines)


def test_pairs_with_conflicting_labels():
    frame = pd.DataFrame({"a": ["x", "x", "y"], "b": ["z", "z", "w"], "label": [0, 1, 0]})
    report = profile_of({"train": frame}, DataSpec("classification", ["a", "b"], "label", ["no", "yes"]))
    assert report["splits"]["train"]["conflicting_pairs"] == 1


def test_length_percentiles_and_truncation_share():
    lengths = np.arange(1, 101)
    stats = length_stats(lengths, 90)
    assert stats["percentiles"]["p50"] == 50 and stats["max"] == 100
    assert stats["truncated"] == 10 and stats["truncated_share"] == pytest.approx(0.1)
    assert sum(stats["histogram"]["counts"]) == 100


def test_token_profile_counts_entities_and_repairs():
    frame = pd.DataFrame(
        {
            "tokens": [["John", "lives", "in", "New", "York"], ["Hi"]],
            "ner_tags": [["B-PER", "O", "O", "B-LOC", "I-LOC"], ["O"]],
        }
    )
    spec = DataSpec("token", ["tokens"], "ner_tags", ["O", "B-LOC", "I-LOC", "B-PER"], "IOB2", 3)
    report = profile_of({"train": frame}, spec)
    assert report["splits"]["train"]["entity_counts"] == {"PER": 1, "LOC": 1}
    assert report["splits"]["train"]["words"] == 6
    assert "3 entity-initial I- tags repaired" in summary_lines(DataProfile.model_validate(report))[-1]


def test_normalisation_ignores_case_punctuation_and_breaks():
    first, second = normalise_texts(pd.Series(["A <br /><br />Great   film!!", "a great film"]))
    assert first == second


def test_inspect_on_a_sample_file_and_a_mirror(tmp_path):
    report = inspect_source(str(SAMPLES / "imdb_100.jsonl"), "minilm", 512).dump()
    tokens = report["splits"]["train"]["tokens"]
    assert report["splits"]["train"]["rows"] == 100 and report["splits"]["train"]["labels"] == {"1": 51, "0": 49}
    assert 0 < tokens["truncated_share"] < 0.5 and tokens["max"] > 512
    mirror = inspect_source("rte", "minilm", 128).dump()
    assert set(mirror["splits"]) == {"train", "validation"} and mirror["splits"]["train"]["rows"] == 2490


def test_only_texts_of_some_length_count_as_copied_examples():
    train = pd.DataFrame(
        {"text": ["LONDON 1996-08-30", "a long review that was copied into validation"], "label": [0, 1]}
    )
    validation = pd.DataFrame(
        {"text": ["London 1996-08-30", "A long review that was copied into validation!"], "label": [0, 1]}
    )
    spec = DataSpec("classification", ["text"], "label", ["a", "b"])
    leak = profile_of({"train": train, "validation": validation}, spec)["leakage"]["validation"]
    assert (leak["normalised"], leak["substantive"], leak["substantive_share"]) == (2, 1, 0.5)


def test_arrow_normalisation_matches_pythons_unicode_regexes():
    import re

    def reference(text: str) -> str:  # the definition, in Python's re (Unicode \w and \s)
        text = text.replace("<br />", " ").lower()
        return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text)).strip()

    texts = [
        "Café  CRÈME!!",
        "naïve\u00a0façade\u2003ok",
        "日本語のテキスト。",
        "emoji 😀 here",
        "a_b-c",
        "x<br /><br />y",
        "Ünïcödé\tTABS\nand\x1clines",
        "١٢٣ numbers ½",
        "",
    ]
    frame = pd.read_json(SAMPLES / "imdb_100.jsonl", lines=True)
    texts += frame["text"].tolist()
    assert normalise_texts(pd.Series(texts)).tolist() == [reference(t) for t in texts]


def test_inspect_takes_token_lengths_of_a_large_split_from_a_sample(monkeypatch, tmp_path):
    from bertfit.report import inspect

    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path))
    full = inspect_source(str(SAMPLES / "imdb_100.jsonl"), "minilm", 128).dump()["splits"]["train"]["tokens"]
    monkeypatch.setattr(inspect, "LENGTH_SAMPLE", 40)
    inspection = inspect_source(str(SAMPLES / "imdb_100.jsonl"), "minilm", 128)
    report = inspection.dump()
    sampled = report["splits"]["train"]["tokens"]
    assert "sampled" not in full and sampled["sampled"] == 40
    assert sampled["truncated"] == round(sampled["truncated_share"] * 100)
    assert abs(sampled["truncated_share"] - full["truncated_share"]) < 0.25
    assert report["splits"]["train"]["rows"] == 100  # everything else still counts every row
    assert any("from a sample of 40 rows" in line for line in summary_lines(inspection.profile))


def test_a_profile_is_read_back_for_the_same_data_and_redone_for_changed_data(monkeypatch, tmp_path):
    from bertfit.tasks import profile as profiling

    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path))
    frame = pd.DataFrame({"text": ["a good film", "bad", "bad", "fine"], "label": [1, 0, 0, 1]})
    spec = DataSpec("classification", ["text"], "label", ["neg", "pos"])
    task = build_task(spec.task, spec.text_columns, spec.label_column, spec.label_names, 512)
    lengths = {"train": np.array([5, 3, 3, 3])}
    first = profiling.cached_profile({"train": frame}, task, spec, lengths, 512)
    assert first.dump() == profile({"train": frame}, task, spec, lengths, 512).dump()
    computed, fresh = [], DataProfile(task="fresh", splits={})
    monkeypatch.setattr(profiling, "profile", lambda *args: computed.append(args) or fresh)
    assert profiling.cached_profile({"train": frame}, task, spec, lengths, 512).dump() == first.dump() and not computed
    changed = frame.assign(text=["a good film", "bad", "worse", "fine"])
    assert profiling.cached_profile({"train": changed}, task, spec, lengths, 512) is fresh
    assert profiling.cached_profile({"train": frame}, task, spec, lengths, 256) is fresh


def test_inspect_prints_a_profile_read_back_with_an_undefined_statistic(tmp_path, capsys, monkeypatch):
    """A one-row split has no standard deviation: NaN, stored as null, must print as a dash the second time too."""
    from conftest import run_cli

    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "scores"
    folder.mkdir()
    (folder / "train.csv").write_text("sentence1,sentence2,score\na,b,1.5\nc,d,2.5\ne,f,0.5\n")
    (folder / "validation.csv").write_text("sentence1,sentence2,score\ng,h,3.5\n")
    for _ in range(2):  # computed, then read back from the profile cache
        code, out, err = run_cli(["inspect", "--data", folder, "--model", "minilm"], capsys)
        assert code == 0, err
        assert "–" in out and "nan" not in out
