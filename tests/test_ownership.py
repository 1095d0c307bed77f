"""bertfit never destroys a file it did not write. Every command that writes is tried against a tree of the user's
own files (real files and folders, links included): the tree is byte-identical afterwards. Then the four ways
earlier versions destroyed files, each on its own: a marker naming paths outside the run, user files inside
bertfit's folders, `card` on a folder bertfit did not mark, and `predict --output` over an input or a run."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import NoCapture, run_cli, sample_run_args

from bertfit.errors import BertfitError
from bertfit.runfolder import MARKER, RunFolder, foreign_paths, is_kind


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` (links as their target, not followed), with a hash of each file's bytes."""
    seen = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if path.is_symlink():
            seen[relative] = f"link to {os.readlink(path)}"
        elif path.is_dir():
            seen[relative] = "dir"
        else:
            seen[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def users_view(root: Path) -> dict[str, str]:
    """`snapshot`, less what a run marker in the tree proves bertfit's (which bertfit may rewrite) and its
    bookkeeping: what is left is the user's, and must never change."""
    owned = set()
    for marker in root.rglob(MARKER):
        run = marker.parent.relative_to(root)
        owned |= {str(run / name) for name in json.loads(marker.read_text())["owned"] if is_kind(name)}
    return {k: v for k, v in snapshot(root).items() if k not in owned and not Path(k).name.startswith(".bertfit")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_bert) -> Path:
    """A finished run, trained on a data file of its own (so that the file is the run's training data)."""
    root = tmp_path_factory.mktemp("finished")
    data = root / "train.csv"
    data.write_text("sentence,label\n" + "".join(f"sentence {i} is fine,{i % 2}\n" for i in range(40)))
    out = root / "run"
    args = sample_run_args(tiny_bert, out, "--batch-size", 16, "--max-steps", 2, "--eval-every", 2, data=data)
    assert run_cli(args, NoCapture())[0] == 0
    return out


def run_copy(finished: Path, where: Path) -> Path:
    return Path(shutil.copytree(finished, where, symlinks=True))


def user_tree(root: Path, finished: Path) -> dict[str, Path]:
    """The user's files: notes, figures, a hand-made folder of run files with their own README and plots, a
    run with the user's files inside bertfit's folders, and links out of it. Returns named places in it."""
    files = {
        "notes.txt": "my notes\n",
        "report/README.md": "# my own report\n",
        "report/plots/loss.png": "my figure",
        "elsewhere/precious.txt": "do not delete\n",
        "texts.txt": "a gripping film\nan awful film\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for name in ("recipe.yaml", "log.jsonl", "metrics.json", "data_profile.json", "config.json"):
        shutil.copy(finished / name, root / "report" / name)  # run files copied in by hand: no marker
    run = run_copy(finished, root / "run")
    (run / "plots" / "my_figure.png").write_text("mine")
    (run / "checkpoints" / "notes.txt").write_text("mine")
    (root / "empty").mkdir()
    os.symlink(root / "elsewhere", root / "link-to-elsewhere")
    return {
        "notes": root / "notes.txt",
        "report": root / "report",
        "report README": root / "report" / "README.md",
        "report plot": root / "report" / "plots" / "loss.png",
        "elsewhere": root / "elsewhere",
        "precious": root / "elsewhere" / "precious.txt",
        "texts": root / "texts.txt",
        "run": run,
        "run config": run / "config.json",
        "run plots": run / "plots",
        "run checkpoints": run / "checkpoints",
        "inside the run": run / "plots" / "new",
        "link": root / "link-to-elsewhere",
        "training data": finished.parent / "train.csv",
    }


def _train(*extra):
    def command(model, target, places):
        return [
            "train",
            "--model",
            model,
            "--data",
            places["training data"],
            "--output",
            target,
            "--max-steps",
            1,
            *extra,
        ]

    return command


def _predict(*extra):
    def command(model, target, places):
        return ["predict", places["run"], "--input", places["texts"], "--output", target, *extra]

    return command


COMMANDS = {
    "train": _train(),
    "train --overwrite": _train("--overwrite"),
    "train --resume": _train("--resume"),
    "card": lambda model, target, places: ["card", target],
    "doctor --write": lambda model, target, places: ["doctor", target, "--write"],
    "predict --output": _predict(),
    "predict --output --overwrite": _predict("--overwrite"),
    "export --output": lambda model, target, places: ["export", places["run"], "--output", target],
}
# Places that no command may write over, even when told to overwrite ("predict --overwrite" may replace a plain
# file of the user's: that is what the flag asks for, so it is tried only on inputs and runs).
TARGETS = [
    "notes",
    "report",
    "report README",
    "report plot",
    "elsewhere",
    "precious",
    "texts",
    "run",
    "run config",
    "run plots",
    "run checkpoints",
    "inside the run",
    "link",
    "training data",
]
PROTECTED_FROM_OVERWRITE = {"texts", "run config", "training data", "report", "run", "run plots", "inside the run"}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_command_that_writes_destroys_a_users_file(command, finished, tiny_bert, tmp_path, capsys):
    places = user_tree(tmp_path / "user", finished)
    watched = [tmp_path / "user", places["training data"].parent]
    for target in TARGETS:
        if command == "predict --output --overwrite" and target not in PROTECTED_FROM_OVERWRITE:
            continue
        before = [users_view(folder) for folder in watched]
        code, _, stderr = run_cli(COMMANDS[command](tiny_bert, places[target], places), capsys)
        assert code in (0, 2), f"{command} {target}: exit {code}: {stderr}"
        assert code == 0 or len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
        assert [users_view(folder) for folder in watched] == before, f"{command} on {target} changed a user's file"


def test_a_marker_naming_paths_outside_the_run_deletes_nothing_there(finished, tiny_bert, tmp_path, capsys):
    places = user_tree(tmp_path / "user", finished)
    run = run_copy(finished, tmp_path / "victim")
    marker = json.loads((run / MARKER).read_text())
    marker["owned"] += [
        "../user/elsewhere",
        "../../user/notes.txt",
        str(places["precious"]),
        "checkpoints/../../user/notes.txt",
        "plots/../../user/texts.txt",
        "",
        ".",
    ]
    (run / MARKER).write_text(json.dumps(marker))
    before = snapshot(tmp_path / "user")
    args = sample_run_args(tiny_bert, run, "--batch-size", 16, "--max-steps", 2, data=places["training data"])
    code, _, stderr = run_cli([*args, "--overwrite"], capsys)
    assert code == 0, stderr
    assert snapshot(tmp_path / "user") == before
    assert all(is_kind(name) for name in json.loads((run / MARKER).read_text())["owned"])


def test_a_link_in_the_run_folder_is_never_followed(finished, tiny_bert, tmp_path, capsys):
    places = user_tree(tmp_path / "user", finished)
    run = run_copy(finished, tmp_path / "victim")
    shutil.rmtree(run / "plots")
    os.symlink(places["elsewhere"], run / "plots")  # listed in the marker as bertfit's plots folder
    (run / "README.md").unlink()
    os.symlink(places["notes"], run / "README.md")
    before = snapshot(tmp_path / "user")
    args = sample_run_args(tiny_bert, run, "--batch-size", 16, "--max-steps", 2, data=places["training data"])
    code, _, stderr = run_cli([*args, "--overwrite"], capsys)
    assert code == 2 and "holds files bertfit did not write (README.md, plots)" in stderr, stderr
    for command in (["card", run], ["doctor", run, "--write"]):
        code, _, stderr = run_cli(command, capsys)
        assert code == 2 and "link bertfit did not make" in stderr, stderr
    assert snapshot(tmp_path / "user") == before


def test_overwrite_keeps_the_users_files_inside_bertfits_own_folders(finished, tiny_bert, tmp_path, capsys):
    places = user_tree(tmp_path / "user", finished)
    run = places["run"]
    step = next((run / "checkpoints").glob("step-*"))
    (step / "notes.txt").write_text("mine too")
    before = snapshot(run)
    args = sample_run_args(tiny_bert, run, "--batch-size", 16, "--max-steps", 2, data=places["training data"])
    code, _, stderr = run_cli([*args, "--overwrite"], capsys)
    assert code == 2, stderr
    assert (
        f"holds files bertfit did not write (checkpoints/notes.txt, checkpoints/{step.name}/notes.txt, "
        "plots/my_figure.png)" in stderr
    )
    assert snapshot(run) == before


def test_removing_a_folder_of_bertfits_keeps_what_someone_else_put_in_it(finished, tmp_path):
    run = run_copy(finished, tmp_path / "run")
    step = next((run / "checkpoints").glob("step-*"))
    (step / "notes.txt").write_text("mine")
    with RunFolder.update(run) as folder:
        folder.remove(f"checkpoints/{step.name}")  # what checkpoint rotation does
        for elsewhere in ("../elsewhere", "/etc", "checkpoints/../../elsewhere"):
            folder.remove(elsewhere)  # not bertfit's: nothing happens
            with pytest.raises(ValueError):  # and never a path bertfit writes
                folder.target(elsewhere)
        with pytest.raises(BertfitError, match="was not written by bertfit"):
            folder.target(f"checkpoints/{step.name}/notes.txt")
    assert sorted(p.name for p in step.iterdir()) == ["notes.txt"]
    assert (step / "notes.txt").read_text() == "mine"
    assert foreign_paths(run) == [f"checkpoints/{step.name}/notes.txt"]


def test_card_and_doctor_on_a_folder_bertfit_did_not_mark(finished, tmp_path, capsys):
    places = user_tree(tmp_path / "user", finished)
    report = places["report"]
    before = snapshot(report)
    for command in (["card", report], ["doctor", report, "--write"]):
        code, _, stderr = run_cli(command, capsys)
        assert code == 2 and stderr.strip() == (
            f"error: '{report / 'README.md'}' was not written by bertfit (its run marker does not list it); "
            "move it away and run the command again"
        ), stderr
        assert snapshot(report) == before  # all or nothing: not even the diagnosis it could have added
    # doctor diagnoses without writing, so it works on a folder it may not write (read-only, or not its own).
    code, stdout, stderr = run_cli(["doctor", report], capsys)
    assert code == 0, stderr
    assert snapshot(report) == before


def test_card_writes_into_a_hand_made_folder_without_replacing_anything(finished, tmp_path, capsys):
    report = tmp_path / "report"
    report.mkdir()
    for name in ("recipe.yaml", "log.jsonl", "metrics.json", "data_profile.json"):
        shutil.copy(finished / name, report / name)
    code, _, stderr = run_cli(["card", report], capsys)
    assert code == 0, stderr
    owned = set(json.loads((report / MARKER).read_text())["owned"])
    assert {"README.md", "diagnosis.json", "plots", "plots/loss.png"} <= owned
    assert not owned & {"recipe.yaml", "log.jsonl", "metrics.json", "data_profile.json"}
    assert run_cli(["card", report], capsys)[0] == 0  # its own files it may replace


def test_predict_output_never_replaces_an_input_or_a_run_file(finished, tmp_path, capsys):
    places = user_tree(tmp_path / "user", finished)
    run, texts = places["run"], places["texts"]
    cases = {
        texts: "is the --input file",
        places["training data"]: "is the training data",
        run / "config.json": "is the run folder",
        finished / "config.json": "lies inside the run folder",
        places["notes"]: "exists; pass --overwrite to replace it",
    }
    for target, expect in cases.items():
        before = target.read_bytes()
        flags = [] if target == places["notes"] else ["--overwrite"]
        code, _, stderr = run_cli(["predict", run, "--input", texts, "--output", target, *flags], capsys)
        assert code == 2 and expect in stderr, (target, stderr)
        assert target.read_bytes() == before
    code, _, stderr = run_cli(["predict", run, "--input", texts, "--output", places["notes"], "--overwrite"], capsys)
    assert code == 0, stderr
    assert [json.loads(line)["text"] for line in places["notes"].read_text().splitlines()] == [
        "a gripping film",
        "an awful film",
    ]


def test_a_run_marked_by_an_older_bertfit_is_replaced_but_the_users_plot_in_it_is_not(
    finished, tiny_bert, tmp_path, capsys
):
    """A version-1 marker listed top-level names only: what lies in its folders is bertfit's where it is exactly
    what that version wrote there (its plots by name, its checkpoint files)."""
    places = user_tree(tmp_path / "user", finished)
    run = run_copy(finished, tmp_path / "old")
    top = sorted({name.split("/")[0] for name in json.loads((run / MARKER).read_text())["owned"]})
    (run / MARKER).write_text(json.dumps({"owned": top}))  # as version 1 wrote it
    args = sample_run_args(tiny_bert, run, "--batch-size", 16, "--max-steps", 2, data=places["training data"])
    assert run_cli([*args, "--overwrite"], capsys)[0] == 0  # its own files, all of them, are still its own
    (run / "plots" / "my_figure.png").write_text("mine")
    (run / MARKER).write_text(json.dumps({"owned": top}))
    code, _, stderr = run_cli([*args, "--overwrite"], capsys)
    assert code == 2 and "holds files bertfit did not write (plots/my_figure.png)" in stderr, stderr
    assert (run / "plots" / "my_figure.png").read_text() == "mine"
