"""The bad-input corpus: each case is a file or flag a user could plausibly give, and the one line they get back.

Every case must end with exit code 2, exactly one line on stderr containing the expected message, no traceback,
and no output folder created.
"""

import json

import pytest

from conftest import SAMPLES, run_cli


def csv_file(tmp, text, name="data.csv"):
    path = tmp / name
    path.write_text(text)
    return path


def folder(tmp, files: dict):
    base = tmp / "dataset"
    base.mkdir()
    for name, text in files.items():
        (base / name).write_text(text)
    return base


def bytes_file(tmp, content: bytes, name="data.csv"):
    path = tmp / name
    path.write_bytes(content)
    return path


ROWS = "".join(f"sentence {i} is fine,{i % 2}\n" for i in range(20))
CASES = {
    "missing file": (lambda t: t / "nope.csv", [], "data file or folder '{tmp}/nope.csv' not found; check the path"),
    "empty file": (lambda t: csv_file(t, ""), [], "file '{tmp}/data.csv' is empty"),
    "header only": (lambda t: csv_file(t, "sentence,label\n"), [], "file '{tmp}/data.csv' has a header but no rows"),
    "no text column": (lambda t: csv_file(t, "a,label\n1,0\n2,1\n"), [], "no text column in '{tmp}/data.csv' (columns: a, label); name it with --text-column"),
    "ambiguous text column": (lambda t: csv_file(t, "text,sentence,label\n" + "a,b,0\nc,d,1\n" * 5), [],
                              "ambiguous text column in '{tmp}/data.csv': 'text', 'sentence' could all be the text; choose with --text-column text"),
    "no label column": (lambda t: csv_file(t, "sentence,other\n" + "a,0\n" * 5), [], "no label column in '{tmp}/data.csv'"),
    "unknown text column flag": (lambda t: csv_file(t, "sentence,label\n" + ROWS), ["--text-column", "body"],
                                 "column 'body' not found in '{tmp}/data.csv' (columns: sentence, label)"),
    "mixed int and string labels": (lambda t: csv_file(t, "sentence,label\n" + "a,0\nb,pos\n" * 5), [],
                                    "label column 'label' mixes numbers and strings; use one kind of label"),
    "empty label": (lambda t: csv_file(t, "sentence,label\n" + ROWS + "no label here,\n"), [],
                    "row 21: label is empty or NaN; fill it in or drop the row"),
    "label unseen in training": (lambda t: folder(t, {"train.csv": "sentence,label\n" + "a,pos\nb,neg\n" * 5,
                                                      "validation.csv": "sentence,label\nc,pos\nd,meh\n"}), [],
                                 "validation.csv' has labels never seen in training: meh; the model cannot predict them"),
    "empty text": (lambda t: csv_file(t, "sentence,label\n" + ROWS + "  ,1\n"), [],
                   "row 21: text column 'sentence' is empty (1 such rows); drop or fill them"),
    "non-UTF-8 bytes": (lambda t: bytes_file(t, b"sentence,label\nfine,0\ncaf\xe9 au lait,1\n" + ROWS.encode()), [],
                        "file '{tmp}/data.csv' is not UTF-8 text: byte 0xe9 on line 3; re-save it as UTF-8"),
    "TSV named .csv": (lambda t: csv_file(t, "sentence\tlabel\n" + ROWS.replace(",", "\t")), [],
                       "file '{tmp}/data.csv' looks TSV-separated but is read as CSV; rename it to 'data.tsv'"),
    "CSV named .tsv": (lambda t: csv_file(t, "sentence,label\n" + ROWS, "data.tsv"), [],
                       "file '{tmp}/data.tsv' looks CSV-separated but is read as TSV; rename it to 'data.csv'"),
    "ragged rows": (lambda t: csv_file(t, "sentence,label\n" + ROWS + "too,many,fields\n"), [],
                    "file '{tmp}/data.csv' has rows with the wrong number of fields (Expected 2 fields in line 22, saw 3); quote fields that contain a comma"),
    "1 MB single text": (lambda t: csv_file(t, "sentence,label\n" + ROWS + '"' + "word " * 210_000 + '",1\n'), [],
                         "row 21: text in 'sentence' is 1,050,000 characters (limit 100,000); check for an unclosed quote"),
    "bad JSON line": (lambda t: csv_file(t, '{"text": "a", "label": 0}\n{"text": "b", "label": \n', "d.jsonl"), [],
                      "{tmp}/d.jsonl:2: not a JSON object"),
    "CoNLL token without tag": (lambda t: csv_file(t, "John B-PER\nruns\n", "d.conll"), [],
                                "{tmp}/d.conll:2: sentence 1 has a token without a tag ('runs')"),
    "token/tag count mismatch": (lambda t: csv_file(t, json.dumps({"tokens": ["a", "b"], "ner_tags": ["O"]}) + "\n"
                                                    + json.dumps({"tokens": ["c"], "ner_tags": ["O"]}) + "\n", "d.jsonl"), [],
                                 "sentence 1 has 2 tokens but 1 tags; each token needs exactly one tag"),
    "unsupported extension": (lambda t: csv_file(t, "x", "data.xlsx"), [], "file '{tmp}/data.xlsx' has an unsupported extension"),
    "unknown model offline": (None, ["--model", "no-such-org/no-such-model"],
                              "model 'no-such-org/no-such-model' not found locally and the hub is unreachable"),
    "model folder without weights": (None, ["--model", "{tmp}/empty-model"], "model folder '{tmp}/empty-model' has no weights (model.safetensors)"),
    "negative lr": (None, ["--lr", "-1e-5"], "invalid value for 'lr': Input should be greater than 0 (got -1e-05)"),
    "zero batch size": (None, ["--batch-size", "0"], "invalid value for 'batch_size': Input should be greater than 0 (got 0)"),
    "unknown scheduler": (None, ["--scheduler", "exponential"], "invalid value for 'scheduler': Input should be 'linear', 'constant' or 'cosine'"),
    "fp16 on CPU": (None, ["--precision", "fp16"], "precision fp16 needs a CUDA GPU (no GPU found); use --precision fp32 or bf16"),
    "unknown metric for best": (None, ["--metric-for-best", "auc"],
                                "metric_for_best 'auc' is not reported for this classification task; choose one of loss, accuracy, f1, precision, recall"),
    "eval every larger than the run": (None, ["--eval-every", "999"], "eval_every 999 is larger than the whole run (2 steps)"),
    "recipe with unknown key": (None, ["{tmp}/recipe.yaml"], "unknown recipe key 'learning_rat'; did you mean 'lr'?"),
    "unknown dataset offline": (lambda t: "no_such_dataset_xyz", [], "dataset 'no_such_dataset_xyz' not found locally (no such file or folder, no BERTFIT_DATA_DIR mirror)"),
    "missing train split": (lambda t: "tweet_sentiment", [], "dataset 'tweet_sentiment' has no 'train' split (it has: test, validation); choose one with --set train_split=NAME"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tiny_bert, tmp_path, capsys):
    make_data, extra, expected = CASES[case]
    data = make_data(tmp_path) if make_data else SAMPLES / "sst2_200.csv"
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "empty-model" / "config.json").write_text("{}")
    (tmp_path / "recipe.yaml").write_text("learning_rat: 1.0e-5\n")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    recipe = [e for e in extra if e.endswith(".yaml")]
    options = [e for e in extra if not e.endswith(".yaml")]
    out = tmp_path / "out"
    args = ["train", *recipe, "--model", tiny_bert, "--data", data, "--output", out, "--batch-size", 100,
            "--max-steps", 2, *options]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 2, (stdout, stderr)
    assert expected.replace("{tmp}", str(tmp_path)) in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not out.exists()


def test_the_corpus_has_at_least_twenty_cases():
    assert len(CASES) >= 20


def test_usage_errors_and_bare_command(capsys):
    code, _, stderr = run_cli(["train", "--bogus"], capsys)
    assert code == 2 and stderr.strip() == "error: No such option: --bogus"
    code, stdout, stderr = run_cli([], capsys)
    assert code == 2 and "Commands" in stdout + stderr
