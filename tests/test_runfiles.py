"""The run files have one schema each (bertfit/runfiles.py): a real run's files are whole under it, a misspelt
key fails where it is written, and a folder written by an older bertfit reads while one of a newer format is
refused in one line."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLES, run_cli
from pydantic import ValidationError

from bertfit import runfiles
from bertfit.errors import BertfitError
from bertfit.files import to_json
from bertfit.runfiles import Diagnosis, RunMetrics, Scores

GOLDEN = Path(__file__).parent / "fixtures" / "cards"  # files of real tiny runs, as format 1 wrote them


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_bert):
    """A finished tiny classification run with every run file (mislabeled.jsonl included)."""
    from bertfit.cli import fit
    from bertfit.config import build_config

    out = tmp_path_factory.mktemp("runfiles") / "run"
    recipe = {"model": tiny_bert, "data": str(SAMPLES / "sst2_200.csv"), "output": str(out), "max_steps": 6}
    fit(build_config(None, {**recipe, "eval_every": 3}))
    return out


def test_every_file_of_a_run_is_whole_under_its_schema(finished):
    files = runfiles.read_run(finished)
    for name in ("metrics.json", "data_profile.json", "diagnosis.json"):
        assert json.loads((finished / name).read_text())["format"] == runfiles.FORMAT, name
    assert files.events.start.format == runfiles.FORMAT
    assert [type(e).__name__ for e in files.events][:3] == ["Start", "Probe", "Train"]
    assert type(files.events[-1]).__name__ == "End"
    assert files.metrics.validation.metric("accuracy") is not None and files.metrics.validation.confusion_matrix
    assert files.profile.split("train").rows == sum(files.profile.split("train").labels.values())
    runfiles.read_file(finished / "diagnosis.json", Diagnosis)
    suspects = runfiles.read_suspects(finished / "mislabeled.jsonl")
    assert files.metrics.mislabeled.flagged == len(suspects)
    # Written as read: dumping what was read gives the file back, key for key.
    assert files.metrics.dump() == json.loads((finished / "metrics.json").read_text())


def test_a_misspelt_key_fails_where_it_is_written():
    with pytest.raises(ValidationError, match="validaton"):
        RunMetrics(validaton=Scores(loss=0.1))
    with pytest.raises(ValidationError, match="confusion_matrix"):
        Scores(loss=0.1, confusion_matrix="not a matrix")
    with pytest.raises(ValidationError, match="per_typ"):
        Scores(loss=0.1, per_typ={"PER": {"precision": 1, "recall": 1, "f1": 1, "support": 1}})  # not a number


@pytest.mark.parametrize("kind", ["classification", "regression", "multi_label", "token"])
def test_a_folder_written_by_an_older_bertfit_reads_and_its_doctor_answers(kind, tmp_path, capsys):
    run = tmp_path / kind
    shutil.copytree(GOLDEN / kind, run)
    assert "format" not in json.loads((run / "metrics.json").read_text())
    assert isinstance(json.loads((run / "diagnosis.json").read_text()), list)  # format 1: a bare list
    code, printed, stderr = run_cli(["doctor", run], capsys)
    assert code == 0, stderr
    stored = runfiles.read_file(run / "diagnosis.json", Diagnosis).findings
    shown = [line for line in printed.splitlines() if line.startswith("[")]
    assert shown == [f"[{f.severity}] {f.title}" for f in stored]  # the same answer as when they were written


def test_a_newer_format_or_a_damaged_file_is_refused_in_one_line(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "format": runfiles.FORMAT + 1}))
    code, _, stderr = run_cli(["doctor", run], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert f"written by a newer bertfit (run files format {runfiles.FORMAT + 1}" in stderr and "upgrade" in stderr
    renamed = {**metrics, "validaton": metrics["validation"]}
    del renamed["validation"]
    (run / "metrics.json").write_text(json.dumps(renamed))
    code, _, stderr = run_cli(["doctor", run], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "is not a bertfit metrics file (validaton: extra inputs are not permitted" in stderr
    (run / "metrics.json").write_text(json.dumps(metrics))
    log = (run / "log.jsonl").read_text().splitlines()
    eval_line = next(i for i, line in enumerate(log) if '"event": "eval"' in line)
    log[eval_line] = log[eval_line].replace('"metrics"', '"metricz"')
    (run / "log.jsonl").write_text("\n".join(log) + "\n")
    code, _, stderr = run_cli(["doctor", run], capsys)
    assert code == 2 and f"log.jsonl:{eval_line + 1}: not a bertfit log line (eval.metric" in stderr


@pytest.mark.parametrize("kind", ["classification", "regression", "multi_label", "token"])
def test_a_format_1_data_profile_reads_whole_and_is_written_back_key_for_key(kind):
    profile = json.loads((GOLDEN / kind / "data_profile.json").read_text())
    written = json.loads(to_json(runfiles.DataProfile.model_validate(profile).dump()))
    assert written == {"format": runfiles.FORMAT, **profile}


def test_a_damaged_mislabeled_line_is_refused_with_its_number(finished, tmp_path):
    damaged = tmp_path / "mislabeled.jsonl"
    lines = (finished / "mislabeled.jsonl").read_text().splitlines()
    damaged.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(BertfitError, match=r"mislabeled.jsonl:2: not a bertfit mislabeled line"):
        runfiles.read_suspects(damaged)
