"""The hostile-input corpus: files, flags and folders a user (or an attacker) could give, and the one line they get.

Every case must end with exit code 2, exactly one line on stderr holding the expected message, no traceback, and
the temporary folder exactly as it was before the command: no output folder, lock, marker or half-written file
left behind, and the user's data untouched.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SAMPLES, NoCapture, run_cli, sample_run_args

ROWS = "".join(f"sentence {i} is fine,{i % 2}\n" for i in range(20))
SCORES = "".join(f"sentence {i} is fine,{i / 7:.3f}\n" for i in range(20))
GOOD_CSV = "sentence,label\n" + ROWS


@dataclass
class Env:
    """What a case may use: its own temporary folder, the tiny model, and a copy of a finished run."""

    tmp: Path
    model: str
    finished: Path

    def file(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def append(self, name: str, text: str) -> Path:
        path = self.tmp / name
        with path.open("a", encoding="utf-8") as handle:
            handle.write(text)
        return path

    def jsonl(self, name: str, rows: list) -> Path:
        return self.file(name, "".join(json.dumps(row) + "\n" for row in rows))

    def folder(self, files: dict[str, str], name: str = "dataset") -> Path:
        for file, text in files.items():
            self.file(f"{name}/{file}", text)
        return self.tmp / name

    def train(self, data, *extra, model=None, output=None) -> list:
        return [
            "train",
            "--model",
            model or self.model,
            "--data",
            data,
            "--output",
            output or self.tmp / "out",
            "--batch-size",
            100,
            "--max-steps",
            2,
            *extra,
        ]

    def run(self) -> Path:
        """A private copy of a finished run, to damage."""
        return Path(shutil.copytree(self.finished, self.tmp / "run"))

    def model_copy(self) -> Path:
        return Path(shutil.copytree(self.model, self.tmp / "model"))


@dataclass
class Case:
    args: Callable[[Env], list]
    expect: str


def sst2(e: Env) -> Path:
    return e.file("data.csv", GOOD_CSV)


def tokens(*rows) -> list[dict]:
    return [{"tokens": list(words), "ner_tags": tags} for words, tags in rows]


TOKEN_ROWS = [(["John", "runs"], ["B-PER", "O"]), (["Paris", "is", "big"], ["B-LOC", "O", "O"])] * 3


def _damaged_checkpoints(e: Env) -> list:
    run = e.run()
    shutil.rmtree(run / "checkpoints")
    for step in (1, 2):
        folder = run / "checkpoints" / f"step-{step:08d}"
        folder.mkdir(parents=True)
        (folder / "training_state.pt").write_bytes(b"PK\x03\x04 truncated")
        (folder / "model.safetensors").write_bytes(b"\x08")
        shutil.copy(run / "recipe.yaml", folder / "recipe.yaml")
    return ["resume", run]


def _malicious_bin(e: Env) -> list:
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    model = e.model_copy()
    (model / "model.safetensors").unlink()
    torch.save({"weight": Payload()}, model / "pytorch_model.bin")
    return e.train(sst2(e), model=model)


def _truncated_weights(folder: Path) -> Path:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return folder


def _truncated_parquet(e: Env) -> list:
    import pandas as pd

    pd.DataFrame({"sentence": ["a b", "c d"] * 10, "label": [0, 1] * 10}).to_parquet(e.tmp / "full.parquet")
    raw = (e.tmp / "full.parquet").read_bytes()
    (e.tmp / "full.parquet").unlink()
    return e.train(e.file("data.parquet", raw[: len(raw) // 2]))


def _empty_parquet(e: Env) -> list:
    import pandas as pd

    pd.DataFrame({"sentence": pd.Series([], dtype=str), "label": pd.Series([], dtype=int)}).to_parquet(
        e.tmp / "data.parquet"
    )
    return e.train(e.tmp / "data.parquet")


def _non_empty_foreign(e: Env) -> list:
    e.file("out/notes.txt", "my notes")
    return e.train(sst2(e), "--overwrite")


def _run_plus_foreign(e: Env) -> list:
    run = e.run()
    (run / "notes.txt").write_text("mine")
    return e.train(sst2(e), "--overwrite", output=run)


def _fifo(e: Env) -> Path:
    os.mkfifo(e.tmp / "pipe")
    return e.tmp / "pipe"


def _onnx_look_alike(e: Env) -> Path:
    run = e.run()
    (run / "model.onnx").write_bytes(b"onnx")
    return run


def _resume_no_checkpoints(e: Env) -> list:
    run = e.run()
    shutil.rmtree(run / "checkpoints")
    return ["resume", run]


CASES = {
    # ---------------------------------------------------------------- output safety
    "output is the data folder (--overwrite)": Case(
        lambda e: e.train(e.folder({"train.csv": GOOD_CSV}), "--overwrite", output=e.tmp / "dataset"),
        "output '{tmp}/dataset' is or contains the data ({tmp}/dataset); bertfit never writes over its inputs",
    ),
    "output holds the data file (--overwrite)": Case(
        lambda e: e.train(e.file("d/data.csv", GOOD_CSV), "--overwrite", output=e.tmp / "d"),
        "output '{tmp}/d' is or contains the data",
    ),
    "output is the model folder": Case(
        lambda e: e.train(sst2(e), "--overwrite", model=e.model_copy(), output=e.tmp / "model"),
        "output '{tmp}/model' is or contains the model",
    ),
    "output is the file system root": Case(
        lambda e: e.train(sst2(e), "--overwrite", output="/"), "output '/' is or contains the file system root"
    ),
    "output is the home folder": Case(
        lambda e: e.train(sst2(e), "--overwrite", output="~"), f"output '{Path.home()}' is or contains your home folder"
    ),
    "output is the working directory": Case(
        lambda e: e.train(sst2(e), "--overwrite", output="."), "output '.' is or contains"
    ),
    "output contains the working directory": Case(
        lambda e: e.train(sst2(e), "--overwrite", output=".."), "output '..' is or contains"
    ),
    "output holds foreign files (--overwrite)": Case(
        _non_empty_foreign, "output folder '{tmp}/out' holds files bertfit did not write (notes.txt)"
    ),
    "output holds a run and a foreign file (--overwrite)": Case(
        _run_plus_foreign, "output folder '{tmp}/run' holds files bertfit did not write (notes.txt)"
    ),
    "output not empty": Case(
        lambda e: (e.file("out/x.txt", "x"), e.train(sst2(e)))[1],
        "output folder '{tmp}/out' is not empty; choose an empty or new folder",
    ),
    "output is a run, no --overwrite": Case(
        lambda e: e.train(sst2(e), output=e.run()),
        "is not empty; pass --overwrite to replace the run in it, or --resume",
    ),
    "output is a file": Case(
        lambda e: e.train(sst2(e), output=e.file("out.txt", "x")),
        "output '{tmp}/out.txt' is a file; choose a folder with --output",
    ),
    "--resume on a folder that is not a run": Case(
        lambda e: (e.file("out/x.txt", "x"), e.train(sst2(e), "--resume"))[1], "'{tmp}/out' is not a bertfit run folder"
    ),
    "--resume on a missing folder": Case(
        lambda e: e.train(sst2(e), "--resume"), "'{tmp}/out' is not a bertfit run folder"
    ),
    "resume: folder without recipe": Case(
        lambda e: (e.file("x/a.txt", "a"), ["resume", e.tmp / "x"])[1],
        "'{tmp}/x' is not a bertfit run folder (no recipe.yaml)",
    ),
    "resume: missing folder": Case(
        lambda e: ["resume", e.tmp / "nothing"], "'{tmp}/nothing' is not a bertfit run folder"
    ),
    "resume: no checkpoints": Case(
        _resume_no_checkpoints,
        "nothing to resume in '{tmp}/run': the run finished and has no checkpoint left; pass --overwrite",
    ),
    "resume: every checkpoint damaged": Case(
        _damaged_checkpoints, "every checkpoint in '{tmp}/run/checkpoints' is damaged"
    ),
    "resume with a changed recipe": Case(
        lambda e: e.train(sst2(e), "--resume", "--lr", "0.5", output=e.run()), "the recipe changed"
    ),
    # ---------------------------------------------------------------- recipe values
    "negative lr": Case(
        lambda e: e.train(sst2(e), "--lr", "-1e-5"),
        "invalid value for 'lr': Input should be greater than 0 (got -1e-05)",
    ),
    "lr .inf in a recipe": Case(
        lambda e: e.train(sst2(e)) + [e.file("r.yaml", "lr: .inf\n")],
        "invalid value for 'lr': Input should be a finite number",
    ),
    "lr nan": Case(
        lambda e: e.train(sst2(e), "--lr", "nan"), "invalid value for 'lr': Input should be a finite number"
    ),
    "epochs inf": Case(
        lambda e: e.train(sst2(e), "--epochs", "inf"), "invalid value for 'epochs': Input should be a finite number"
    ),
    "seed -1": Case(
        lambda e: e.train(sst2(e), "--seed", "-1"),
        "invalid value for 'seed': Input should be greater than or equal to 0 (got -1)",
    ),
    "seed 2**40": Case(lambda e: e.train(sst2(e), "--seed", str(2**40)), "invalid value for 'seed'"),
    "eval every -5": Case(
        lambda e: e.train(sst2(e), "--eval-every", "-5"),
        "invalid value for 'eval_every': must be a positive number of steps or 'epoch' (got '-5')",
    ),
    "eval every abc": Case(lambda e: e.train(sst2(e), "--eval-every", "abc"), "invalid value for 'eval_every'"),
    "eval every larger than the run": Case(
        lambda e: e.train(sst2(e), "--eval-every", "999"), "eval_every 999 is larger than the whole run (2 steps)"
    ),
    "zero batch size": Case(
        lambda e: e.train(sst2(e), "--batch-size", "0"),
        "invalid value for 'batch_size': Input should be greater than 0 (got 0)",
    ),
    "zero grad accum": Case(lambda e: e.train(sst2(e), "--grad-accum", "0"), "invalid value for 'grad_accum'"),
    "warmup ratio 2": Case(lambda e: e.train(sst2(e), "--warmup-ratio", "2"), "invalid value for 'warmup_ratio'"),
    "beta1 1.5": Case(lambda e: e.train(sst2(e), "--adam-beta1", "1.5"), "invalid value for 'adam_beta1'"),
    "negative clip norm": Case(lambda e: e.train(sst2(e), "--clip-norm", "-1"), "invalid value for 'clip_norm'"),
    "max length 4": Case(lambda e: e.train(sst2(e), "--max-length", "4"), "invalid value for 'max_length'"),
    "max length beyond the model": Case(
        lambda e: e.train(sst2(e), "--max-length", "100000"),
        "max_length 100000 is longer than the model accepts (512); lower it",
    ),
    "zero max train samples": Case(
        lambda e: e.train(sst2(e), "--max-train-samples", "0"), "invalid value for 'max_train_samples'"
    ),
    "unknown scheduler": Case(
        lambda e: e.train(sst2(e), "--set", "scheduler=exponential"),
        "invalid value for 'scheduler': Input should be 'linear', 'constant' or 'cosine'",
    ),
    "unknown scheduler option": Case(
        lambda e: e.train(sst2(e), "--scheduler", "exponential"),
        "Invalid value for '--scheduler': 'exponential' is not one of",
    ),
    "precision fp64": Case(lambda e: e.train(sst2(e), "--precision", "fp64"), "Invalid value for '--precision'"),
    "fp16 on CPU": Case(
        lambda e: e.train(sst2(e), "--precision", "fp16"),
        "precision fp16 needs a CUDA GPU (no GPU found); use --precision fp32 or bf16",
    ),
    "truncation middle": Case(lambda e: e.train(sst2(e), "--truncation", "middle"), "Invalid value for '--truncation'"),
    "padding weird": Case(lambda e: e.train(sst2(e), "--padding", "weird"), "Invalid value for '--padding'"),
    "task bogus": Case(
        lambda e: e.train(sst2(e), "--task", "bogus"),
        "invalid value for 'task': is not a task kind; choose one of auto,",
    ),
    "three text columns": Case(
        lambda e: e.train(sst2(e), "--text-column", "a", "--text-column", "b", "--text-column", "c"),
        "text_columns takes one column, or two for text pairs",
    ),
    "unknown metric for best": Case(
        lambda e: e.train(sst2(e), "--metric-for-best", "auc"),
        "metric_for_best 'auc' is not reported for this classification task",
    ),
    "--set with an empty value": Case(
        lambda e: e.train(sst2(e), "--set", "lr="), "--set lr= has no value; write --set lr=VALUE"
    ),
    "--set without =": Case(lambda e: e.train(sst2(e), "--set", "lr"), "--set expects key=value, got 'lr'"),
    "--set unknown key": Case(
        lambda e: e.train(sst2(e), "--set", "learning_rat=1"), "unknown recipe key 'learning_rat'; did you mean 'lr'?"
    ),
    "recipe with unknown key": Case(
        lambda e: [e.train(sst2(e))[0], e.file("r.yaml", "learning_rat: 1.0e-5\n"), *e.train(sst2(e))[1:]],
        "unknown recipe key 'learning_rat'; did you mean 'lr'?",
    ),
    "recipe key given twice": Case(
        lambda e: e.train(sst2(e)) + [e.file("r.yaml", "lr: 1.0e-5\nseed: 1\nlr: 2.0e-5\n")],
        "key 'lr' appears twice (lines 1 and 3)",
    ),
    "recipe integer key": Case(lambda e: e.train(sst2(e)) + [e.file("r.yaml", "1: 2\n")], "recipe key 1 is not a name"),
    "recipe Latin-1 byte": Case(
        lambda e: e.train(sst2(e)) + [e.file("r.yaml", b"# caf\xe9\nlr: 1.0e-5\n")],
        "recipe '{tmp}/r.yaml' is not UTF-8 text (byte 0xe9 on line 1)",
    ),
    "recipe not a mapping": Case(
        lambda e: e.train(sst2(e)) + [e.file("r.yaml", "- lr\n- seed\n")],
        "must be a mapping of keys to values, got list",
    ),
    "recipe invalid YAML": Case(lambda e: e.train(sst2(e)) + [e.file("r.yaml", "lr: [1\n")], "is not valid YAML"),
    "recipe missing": Case(
        lambda e: e.train(sst2(e)) + [e.tmp / "none.yaml"], "recipe file '{tmp}/none.yaml' not found"
    ),
    "no data": Case(lambda e: ["train", "--model", e.model, "--output", e.tmp / "out"], "no data given; pass --data"),
    "no output": Case(lambda e: ["train", "--model", e.model, "--data", sst2(e)], "no output folder given"),
    "test split that does not exist": Case(lambda e: e.train(sst2(e), "--set", "test_split=dev"), "has no 'dev' split"),
    "eval split that does not exist": Case(
        lambda e: e.train(sst2(e), "--set", "eval_split=nope"), "has no 'nope' split"
    ),
    # ---------------------------------------------------------------- data files
    "missing file": Case(lambda e: e.train(e.tmp / "nope.csv"), "data file or folder '{tmp}/nope.csv' not found"),
    "empty file": Case(lambda e: e.train(e.file("data.csv", "")), "file '{tmp}/data.csv' is empty"),
    "header only": Case(lambda e: e.train(e.file("data.csv", "sentence,label\n")), "has a header but no rows"),
    "no text column": Case(
        lambda e: e.train(e.file("data.csv", "a,label\n1,0\n2,1\n")),
        "no text column in '{tmp}/data.csv' (columns: a, label); name it with --text-column",
    ),
    "ambiguous text column": Case(
        lambda e: e.train(e.file("data.csv", "text,sentence,label\n" + "a,b,0\nc,d,1\n" * 5)),
        "ambiguous text column in '{tmp}/data.csv': 'text', 'sentence' could all be the text",
    ),
    "no label column": Case(
        lambda e: e.train(e.file("data.csv", "sentence,other\n" + "a,x\n" * 5)), "no label column in '{tmp}/data.csv'"
    ),
    "TSV without a header": Case(
        lambda e: e.train(e.file("data.tsv", "".join(f"a fine sentence {i}\t{i % 2}\n" for i in range(20)))),
        "'{tmp}/data.tsv' seems to have no header row",
    ),
    "CSV without a header": Case(
        lambda e: e.train(e.file("data.csv", ROWS)), "'{tmp}/data.csv' seems to have no header row"
    ),
    "unknown text column flag": Case(
        lambda e: e.train(sst2(e), "--text-column", "body"),
        "column 'body' not found in '{tmp}/data.csv' (columns: sentence, label)",
    ),
    "unknown label column flag": Case(lambda e: e.train(sst2(e), "--label-column", "gold"), "column 'gold' not found"),
    "duplicate column names": Case(
        lambda e: e.train(e.file("data.csv", "sentence,sentence,label\n" + "a,b,0\nc,d,1\n" * 5)),
        "file '{tmp}/data.csv' has two columns named 'sentence'",
    ),
    "mixed int and string labels": Case(
        lambda e: e.train(e.file("data.csv", "sentence,label\n" + "a,0\nb,pos\n" * 5)),
        "row 2: label 'pos' is text, but labels are number elsewhere",
    ),
    "literal NaN label": Case(
        lambda e: e.train(e.file("data.csv", GOOD_CSV + "a sentence,NaN\n")),
        "'{tmp}/data.csv' row 21: label is 'NaN'; fill it in or drop the row",
    ),
    "JSON null label": Case(
        lambda e: e.train(e.jsonl("d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": None}])),
        "'{tmp}/d.jsonl' row 2: label is empty or NaN",
    ),
    "empty label": Case(
        lambda e: e.train(e.file("data.csv", GOOD_CSV + "no label here,\n")),
        "row 21: label is empty or NaN; fill it in or drop the row",
    ),
    "label -1 outside the names": Case(
        lambda e: e.train(e.file("data.csv", GOOD_CSV + "odd one,-1\n"), "--label-names", "negative,positive"),
        "'{tmp}/data.csv' row 21: label -1 has no name: --label-names (negative, positive) take ids 0..1",
    ),
    "label 100000 outside the names": Case(
        lambda e: e.train(e.file("data.csv", GOOD_CSV + "odd one,100000\n"), "--label-names", "negative,positive"),
        "row 21: label 100000 has no name",
    ),
    "label outside a mirror's names": Case(
        lambda e: e.train(e.folder({"train.csv": GOOD_CSV + "x,7\n"}, "sst2")),
        "row 21: label 7 has no name: the dataset's label names (negative, positive)",
    ),
    "string labels not in --label-names": Case(
        lambda e: e.train(e.file("data.csv", "sentence,label\n" + "a,pos\nb,neg\n" * 5), "--label-names", "pos,bad"),
        "labels ['neg'] are not in --label-names ['pos', 'bad']",
    ),
    # A list-of-labels column is multi-label data; one that also holds a bare label is a mistake.
    "labels: a list, then not": Case(
        lambda e: e.train(e.jsonl("d.jsonl", [{"text": "a", "label": ["x", "y"]}, {"text": "b", "label": "x"}] * 2)),
        "'{tmp}/d.jsonl' row 2: labels are 'x', not a list; give each example a list of labels",
    ),
    "label is an object": Case(
        lambda e: e.train(e.jsonl("d.jsonl", [{"text": "a", "label": {"x": 1}}] * 4)),
        "'{tmp}/d.jsonl' row 1: label is an object",
    ),
    "single class (text)": Case(
        lambda e: e.train(e.file("data.csv", "sentence,label\n" + "a b,pos\n" * 20)),
        "has one class only ('pos'); classification needs examples of at least two classes",
    ),
    "single class (number)": Case(
        lambda e: e.train(e.file("data.csv", "sentence,label\n" + "a b,1\n" * 20)), "has one class only ('1')"
    ),
    "regression scores as classes": Case(
        lambda e: e.train(e.file("data.csv", "sentence,label\n" + "a,0.5\nb,3\n" * 5), "--task", "classification"),
        "row 1: label 0.5 is not a whole number, so it is not a class",
    ),
    "text labels for regression": Case(
        lambda e: e.train(e.file("data.csv", "sentence,label\n" + "a,pos\nb,neg\n" * 5), "--task", "regression"),
        "row 1: regression needs numeric labels in 'label', got 'pos'",
    ),
    "label unseen in training": Case(
        lambda e: e.train(
            e.folder(
                {
                    "train.csv": "sentence,label\n" + "a,pos\nb,neg\n" * 5,
                    "validation.csv": "sentence,label\nc,pos\nd,meh\n",
                }
            )
        ),
        "validation.csv' has labels never seen in training: meh",
    ),
    "empty text": Case(
        lambda e: e.train(e.file("data.csv", GOOD_CSV + "  ,1\n")),
        "row 21: text column 'sentence' is empty (1 such rows); drop or fill them",
    ),
    "non-UTF-8 bytes": Case(
        lambda e: e.train(e.file("data.csv", b"sentence,label\nfine,0\ncaf\xe9 au lait,1\n" + ROWS.encode())),
        "file '{tmp}/data.csv' is not UTF-8 text: byte 0xe9 on line 3; re-save it as UTF-8",
    ),
    "UTF-16 file": Case(lambda e: e.train(e.file("data.csv", GOOD_CSV.encode("utf-16"))), "is not UTF-8 text"),
    "binary junk as CSV": Case(lambda e: e.train(e.file("data.csv", bytes(range(256)) * 4)), "is not UTF-8 text"),
    "TSV named .csv": Case(
        lambda e: e.train(e.file("data.csv", "sentence\tlabel\n" + ROWS.replace(",", "\t"))),
        "file '{tmp}/data.csv' looks TSV-separated but is read as CSV; rename it to 'data.tsv'",
    ),
    "CSV named .tsv": Case(
        lambda e: e.train(e.file("data.tsv", GOOD_CSV)),
        "file '{tmp}/data.tsv' looks CSV-separated but is read as TSV; rename it to 'data.csv'",
    ),
    "ragged rows": Case(
        lambda e: e.train(e.file("data.csv", GOOD_CSV + "too,many,fields\n")),
        "has rows with the wrong number of fields (Expected 2 fields in line 22, saw 3)",
    ),
    "1 MB single text": Case(
        lambda e: e.train(e.file("data.csv", GOOD_CSV + '"' + "word " * 210_000 + '",1\n')),
        "row 21: text in 'sentence' is 1,050,000 characters (limit 100,000)",
    ),
    "bad JSON line": Case(
        lambda e: e.train(e.file("d.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": \n')),
        "{tmp}/d.jsonl:2: not a JSON object",
    ),
    "JSON line that is an array": Case(
        lambda e: e.train(e.file("d.jsonl", '{"text": "a", "label": 0}\n[1, 2]\n')),
        "{tmp}/d.jsonl:2: expected a JSON object per line, got list",
    ),
    "JSON key twice": Case(
        lambda e: e.train(e.file("d.jsonl", '{"text": "a", "label": 0, "label": 1}\n')),
        "{tmp}/d.jsonl:1: key 'label' appears twice in one object",
    ),
    ".json array with a syntax error": Case(
        lambda e: e.train(e.file("d.json", '[\n{"text": "a", "label": 0},\n{"text": }\n]')),
        "{tmp}/d.json:3: not valid JSON",
    ),
    ".json array of numbers": Case(
        lambda e: e.train(e.file("d.json", "[1, 2, 3]")), "item 1 of the JSON array is not an object"
    ),
    "truncated parquet": Case(_truncated_parquet, "file '{tmp}/data.parquet' is not a readable Parquet file"),
    "garbage parquet": Case(
        lambda e: e.train(e.file("data.parquet", b"PAR1 this is not parquet at all")),
        "file '{tmp}/data.parquet' is not a readable Parquet file",
    ),
    "parquet without rows": Case(_empty_parquet, "has a header but no rows"),
    "unsupported extension": Case(
        lambda e: e.train(e.file("data.xlsx", "x")), "file '{tmp}/data.xlsx' has an unsupported extension"
    ),
    "empty data folder": Case(
        lambda e: (e.tmp.joinpath("empty").mkdir(), e.train(e.tmp / "empty"))[1],
        "folder '{tmp}/empty' has no data files",
    ),
    "two train files": Case(
        lambda e: e.train(e.folder({"train.csv": GOOD_CSV, "train.tsv": GOOD_CSV.replace(",", "\t")})),
        "has two files for split 'train'",
    ),
    "missing train split": Case(
        lambda e: e.train(e.folder({"validation.csv": GOOD_CSV, "test.csv": GOOD_CSV})),
        "dataset 'dataset' has no 'train' split (it has: test, validation); choose one with --set train_split=NAME",
    ),
    "unknown dataset offline": Case(
        lambda e: e.train("no_such_dataset_xyz"),
        "dataset 'no_such_dataset_xyz' not found locally (no such file or folder; no folder "
        "'no_such_dataset_xyz' in BERTFIT_DATA_DIR",
    ),
    # ---------------------------------------------------------------- token data
    "CoNLL token without tag": Case(
        lambda e: e.train(e.file("d.conll", "John B-PER\nruns\n")),
        "{tmp}/d.conll:2: sentence 1 has a token without a tag ('runs')",
    ),
    "token/tag count mismatch": Case(
        lambda e: e.train(e.jsonl("d.jsonl", tokens((["a", "b"], ["O"]), (["c"], ["O"])))),
        "sentence 1 has 2 tokens but 1 tags; each token needs exactly one tag",
    ),
    "ner_tags null": Case(
        lambda e: e.train(e.jsonl("d.jsonl", tokens(*TOKEN_ROWS) + [{"tokens": ["a"], "ner_tags": None}])),
        "'{tmp}/d.jsonl' sentence 7: tags are None, not a list",
    ),
    "tokens null": Case(
        lambda e: e.train(e.jsonl("d.jsonl", tokens(*TOKEN_ROWS) + [{"tokens": None, "ner_tags": ["O"]}])),
        "'{tmp}/d.jsonl' sentence 7: tokens are None, not a list",
    ),
    "empty sentence": Case(
        lambda e: e.train(e.jsonl("d.jsonl", tokens(*TOKEN_ROWS, ([], [])))), "sentence 7 is empty; remove it"
    ),
    "integer tags without names": Case(
        lambda e: e.train(e.jsonl("d.jsonl", tokens((["a", "b"], [1, 0])) * 4)),
        "are integers without names; give --label-names",
    ),
    "integer tag beyond --label-names": Case(
        lambda e: e.train(
            e.jsonl("d.jsonl", tokens((["a", "b"], [1, 0]), (["c"], [5])) * 3), "--label-names", "O,B-PER"
        ),
        "'{tmp}/d.jsonl' sentence 2: tag 5 has no name: the 2 tag names take ids 0..1",
    ),
    "tags mixing IOB and plain": Case(
        lambda e: e.train(e.jsonl("d.jsonl", tokens((["a", "b"], ["B-PER", "O"]), (["c"], ["LOC"])) * 3)),
        "sentence 2: tag 'LOC' has no B-/I- prefix while others do (e.g. 'B-PER')",
    ),
    "tag unseen in training": Case(
        lambda e: e.train(
            e.folder(
                {
                    "train.jsonl": "".join(json.dumps(r) + "\n" for r in tokens(*TOKEN_ROWS)),
                    "validation.jsonl": json.dumps(tokens((["x"], ["B-ORG"]))[0]) + "\n",
                }
            )
        ),
        "sentence 1: tag 'B-ORG' never appears in the training data",
    ),
    # ---------------------------------------------------------------- models
    "unknown model offline": Case(
        lambda e: e.train(sst2(e), model="no-such-org/no-such-model"),
        "model 'no-such-org/no-such-model' not found locally and the hub is unreachable",
    ),
    "missing model folder": Case(
        lambda e: e.train(sst2(e), model="./no-such-folder"), "model folder './no-such-folder' not found"
    ),
    "model folder without weights": Case(
        lambda e: e.train(sst2(e), model=e.file("m/config.json", "{}").parent),
        "model folder '{tmp}/m' has no weights (model.safetensors)",
    ),
    "model folder without config": Case(
        lambda e: e.train(sst2(e), model=e.file("m/model.safetensors", "x").parent),
        "model folder '{tmp}/m' has no config.json",
    ),
    "model config not JSON": Case(
        lambda e: e.train(
            sst2(e), model=(e.file("m/config.json", "{oops"), e.file("m/model.safetensors", "x"))[0].parent
        ),
        "model folder '{tmp}/m' cannot be loaded",
    ),
    "truncated model.safetensors": Case(
        lambda e: e.train(sst2(e), model=_truncated_weights(e.model_copy())),
        "model folder '{tmp}/model' cannot be loaded: model.safetensors is damaged or truncated",
    ),
    "pickle-only model with code in it": Case(
        _malicious_bin,
        "model folder '{tmp}/model' cannot be loaded: its pytorch_model.bin holds objects other than tensors",
    ),
    # ---------------------------------------------------------------- predict
    "predict nothing": Case(lambda e: ["predict", e.run()], "nothing to predict; pass --text TEXT or --input FILE"),
    "predict empty .txt": Case(
        lambda e: ["predict", e.run(), "--input", e.file("in.txt", "")], "input file '{tmp}/in.txt' has no texts"
    ),
    "predict blank-line .txt": Case(
        lambda e: ["predict", e.run(), "--input", e.file("in.txt", "\n  \n")], "input file '{tmp}/in.txt' has no texts"
    ),
    "predict Latin-1 .txt": Case(
        lambda e: ["predict", e.run(), "--input", e.file("in.txt", b"caf\xe9\n")],
        "file '{tmp}/in.txt' is not UTF-8 text: byte 0xe9 on line 1",
    ),
    "predict empty .csv": Case(
        lambda e: ["predict", e.run(), "--input", e.file("in.csv", "")], "file '{tmp}/in.csv' is empty"
    ),
    "predict missing input": Case(
        lambda e: ["predict", e.run(), "--input", e.tmp / "none.csv"], "input file '{tmp}/none.csv' not found"
    ),
    "predict input without the text column": Case(
        lambda e: ["predict", e.run(), "--input", e.file("in.csv", "body\nhello\n")],
        "input file '{tmp}/in.csv' lacks column(s) sentence (has: body)",
    ),
    "predict --output is a folder": Case(
        lambda e: ["predict", e.run(), "--text", "good", "--output", e.tmp],
        "--output '{tmp}' is a folder; give a file name",
    ),
    "predict --output in a missing folder": Case(
        lambda e: ["predict", e.run(), "--text", "good", "--output", e.tmp / "no" / "p.jsonl"],
        "the folder of --output '{tmp}/no/p.jsonl' does not exist",
    ),
    "predict a pair for a one-text model": Case(
        lambda e: ["predict", e.run(), "--text", "a", "--pair", "b"],
        "this model reads 1 text(s) per example (sentence); got 2",
    ),
    "predict with a folder that is not a run": Case(
        lambda e: ["predict", e.tmp, "--text", "a"], "'{tmp}' is not a finished bertfit run"
    ),
    "predict with truncated weights": Case(
        lambda e: ["predict", _truncated_weights(e.run()), "--text", "a"],
        "model folder '{tmp}/run' cannot be loaded: model.safetensors is damaged",
    ),
    # ---------------------------------------------------------------- eval
    "eval on a missing split": Case(
        lambda e: ["eval", e.run(), "--data", sst2(e), "--split", "test"], "has no split 'test' (it has: train)"
    ),
    "eval with unknown string labels": Case(
        lambda e: [
            "eval",
            e.run(),
            "--data",
            e.file("d.csv", "sentence,label\n" + "a,great\nb,awful\n" * 3),
            "--split",
            "train",
        ],
        "labels ['awful', 'great'] are not in the model's labels ['negative', 'positive']",
    ),
    "eval regression data on a classifier": Case(
        lambda e: [
            "eval",
            e.run(),
            "--data",
            e.file("d.csv", "sentence,label\n" + "a,0.5\nb,3.8\n" * 3),
            "--split",
            "train",
        ],
        "row 1: label 0.5 is not a whole number",
    ),
    "eval ids beyond the model's labels": Case(
        lambda e: [
            "eval",
            e.run(),
            "--data",
            e.file("d.csv", "sentence,label\n" + "a,0\nb,4\n" * 3),
            "--split",
            "train",
        ],
        "row 2: label 4 has no name: the model's labels (negative, positive) take ids 0..1; fix the label",
    ),
    "eval with a NaN label": Case(
        lambda e: ["eval", e.run(), "--data", e.file("d.csv", "sentence,label\na,0\nb,nan\n"), "--split", "train"],
        "row 2: label is 'nan'",
    ),
    "eval on a folder that is not a run": Case(
        lambda e: ["eval", e.tmp, "--data", sst2(e)], "is not a finished bertfit run"
    ),
    # ---------------------------------------------------------------- doctor, card, inspect
    "doctor: broken metrics.json": Case(
        lambda e: (e.run(), e.file("run/metrics.json", "{not json"), ["doctor", e.tmp / "run"])[2],
        "'{tmp}/run/metrics.json' is damaged",
    ),
    "doctor: metrics.json of the wrong shape": Case(
        lambda e: (e.run(), e.file("run/metrics.json", "[1, 2]"), ["doctor", e.tmp / "run"])[2],
        "'{tmp}/run/metrics.json' is not a bertfit metrics file",
    ),
    "doctor: junk line in log.jsonl": Case(
        lambda e: (e.run(), e.append("run/log.jsonl", "junk\n"), ["doctor", e.tmp / "run"])[2],
        "{tmp}/run/log.jsonl:",
    ),
    "doctor: not a run": Case(lambda e: ["doctor", e.tmp], "'{tmp}' is not a bertfit run folder"),
    "doctor: unfinished run": Case(
        lambda e: (e.run(), (e.tmp / "run" / "metrics.json").unlink(), ["doctor", e.tmp / "run"])[2],
        "'{tmp}/run' is not a finished bertfit run (missing metrics.json)",
    ),
    "card: broken metrics.json": Case(
        lambda e: (e.run(), e.file("run/metrics.json", "{"), ["card", e.tmp / "run"])[2],
        "'{tmp}/run/metrics.json' is damaged",
    ),
    "card: missing folder": Case(lambda e: ["card", e.tmp / "none"], "'{tmp}/none' is not a bertfit run folder"),
    "card: broken recipe": Case(
        lambda e: (e.run(), e.file("run/recipe.yaml", "lr: [\n"), ["card", e.tmp / "run"])[2], "is not valid YAML"
    ),
    "inspect: task bogus": Case(
        lambda e: ["inspect", "--data", sst2(e), "--task", "bogus"], "invalid value for 'task': is not a task kind"
    ),
    "inspect: max length -3": Case(
        lambda e: ["inspect", "--data", sst2(e), "--max-length", "-3"], "Invalid value for '--max-length'"
    ),
    "inspect: missing data": Case(
        lambda e: ["inspect", "--data", e.tmp / "nope.csv"], "data file or folder '{tmp}/nope.csv' not found"
    ),
    "inspect: label lists mixed with bare labels": Case(
        lambda e: ["inspect", "--data", e.jsonl("d.jsonl", [{"text": "a", "label": [1]}, {"text": "b", "label": 2}])],
        "row 2: labels are '2', not a list",
    ),
    # ---------------------------------------------------------------- round three (#29): crashes and silent nonsense
    "regression label inf": Case(
        lambda e: e.train(e.file("reg.csv", "sentence,label\n" + SCORES + "x y,inf\n")),
        "'{tmp}/reg.csv' row 21: label is inf; labels must be finite numbers: fix or drop the row",
    ),
    "regression label -inf": Case(
        lambda e: e.train(e.file("reg.csv", "sentence,label\n" + SCORES + "x y,-inf\n")), "row 21: label is -inf"
    ),
    "Infinity among fractional labels (JSONL)": Case(
        lambda e: e.train(
            e.file(
                "reg.jsonl",
                "".join(f'{{"sentence": "s {i}", "label": {i / 7}}}\n' for i in range(20))
                + '{"sentence": "x", "label": Infinity}\n',
            )
        ),
        "'{tmp}/reg.jsonl' row 21: label is inf",
    ),
    "data path with a non-UTF-8 byte": Case(
        lambda e: e.train(e.file("d\udcffta.csv", GOOD_CSV)),
        "'{tmp}/d\\xffta.csv' is not valid UTF-8 (byte 0xff); rename the file or folder with UTF-8 characters",
    ),
    "lr and learning_rate in one recipe": Case(
        lambda e: e.train(sst2(e)) + [e.file("r.yaml", "lr: 1.0e-5\nlearning_rate: 2.0e-5\n")],
        "recipe '{tmp}/r.yaml' sets 'lr' twice (as 'lr' and 'learning_rate'); keep one of them",
    ),
    "batch_size: true": Case(
        lambda e: [
            "train",
            e.file("r.yaml", "batch_size: true\n"),
            "--model",
            e.model,
            "--data",
            sst2(e),
            "--output",
            e.tmp / "out",
        ],
        "invalid value for 'batch_size': takes a number, not true",
    ),
    "every mistake of a recipe at once": Case(
        lambda e: [
            "train",
            e.file("r.yaml", "lr: -1\nepochs: many\n"),
            "--model",
            e.model,
            "--data",
            sst2(e),
            "--output",
            e.tmp / "out",
        ],
        "invalid value for 'epochs': Input should be a valid number",
    ),
    "--nproc 0": Case(lambda e: e.train(sst2(e), "--nproc", 0), "Invalid value for '--nproc'"),
    "--nproc -3": Case(lambda e: e.train(sst2(e), "--nproc", -3), "Invalid value for '--nproc'"),
    "predict --batch-size 0": Case(
        lambda e: ["predict", e.run(), "--text", "a film", "--batch-size", 0], "Invalid value for '--batch-size'"
    ),
    "eval --batch-size -1": Case(
        lambda e: ["eval", e.run(), "--data", sst2(e), "--batch-size", -1], "Invalid value for '--batch-size'"
    ),
    "--label-names with a class that has no example": Case(
        lambda e: e.train(sst2(e), "--label-names", "a,b,c"),
        "--label-names names 3 classes, but the training labels in '{tmp}/data.csv' use 2: 'c' has no example",
    ),
    "the same text column twice": Case(
        lambda e: e.train(sst2(e), "--text-column", "sentence", "--text-column", "sentence"),
        "text column 'sentence' is given twice",
    ),
    "a label column with a value per row": Case(
        lambda e: e.train(e.file("ids.csv", "sentence,label\n" + "".join(f"s {i},id{i}\n" for i in range(40)))),
        "label column 'label' in '{tmp}/ids.csv' has 40 different values in 40 rows: too many to be classes",
    ),
    "data is a device": Case(
        lambda e: e.train("/dev/zero"), "data '/dev/zero' is not a regular file or a folder; give a data file or folder"
    ),
    "data is a FIFO": Case(lambda e: e.train(_fifo(e)), "data '{tmp}/pipe' is not a regular file or a folder"),
    "predict --input a folder": Case(
        lambda e: ["predict", e.run(), "--input", e.folder({"a.txt": "x\n"}, "texts")],
        "input file '{tmp}/texts' is a folder",
    ),
    "recipe is a folder": Case(
        lambda e: e.train(sst2(e)) + [e.folder({"x.txt": ""}, "r.yaml")], "recipe file '{tmp}/r.yaml' is a folder"
    ),
    "push: a repo id the Hub refuses": Case(
        lambda e: ["push", e.run(), "--repo-id", "bad user/name!"],
        "--repo-id 'bad user/name!' is not a Hub repository id",
    ),
    "export of an ONNX export": Case(
        lambda e: ["export", _onnx_look_alike(e), "--output", e.tmp / "again"],
        "'{tmp}/run' is an ONNX export already; export the run folder it was made from",
    ),
    "serve on a host that is no address": Case(
        lambda e: ["serve", e.run(), "--host", "999.1.1.1", "--port", 8123],
        "cannot listen on 999.1.1.1:8123",
    ),
    "usage: unknown option": Case(lambda e: ["train", "--bogus"], "error: No such option: --bogus"),
}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, with a hash of each file's bytes."""
    seen = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if path.is_dir():
            seen[relative] = "dir"
        else:  # a FIFO is never opened: reading one would wait for a writer
            seen[relative] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "special"
    return seen


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bert):
    out = tmp_path_factory.mktemp("finished") / "run"
    args = sample_run_args(
        tiny_bert,
        out,
        "--batch-size",
        32,
        "--max-steps",
        2,
        "--eval-every",
        1,
        "--label-names",
        "negative,positive",
    )
    assert run_cli(args, NoCapture())[0] == 0
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tiny_bert, finished_run, tmp_path, capsys, monkeypatch):
    env = Env(tmp_path, tiny_bert, finished_run)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    args = [str(a) for a in CASES[case].args(env)]
    recipe = [a for a in args if a.endswith(".yaml")]
    args = [a for a in args if not a.endswith(".yaml")]
    args = args[:1] + recipe + args[1:]
    before, shared = snapshot(tmp_path), snapshot(SAMPLES)
    capsys.readouterr()
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 2, (stdout, stderr)
    assert CASES[case].expect.replace("{tmp}", str(tmp_path)) in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr + stdout, stderr
    assert snapshot(tmp_path) == before, "the command left something behind or changed a file"
    assert snapshot(SAMPLES) == shared


def test_usage_errors_and_bare_command(capsys):
    code, _, stderr = run_cli(["train", "--bogus"], capsys)
    assert code == 2 and stderr.strip() == "error: No such option: --bogus"
    code, stdout, stderr = run_cli([], capsys)
    assert code == 2 and "Commands" in stdout + stderr
