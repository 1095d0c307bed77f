"""`bertfit review`: the page in a real headless Chromium, its decisions file, and a retrain with --corrections."""

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import SAMPLES, free_port, run_cli, sample_run_args

from bertfit.config import build_config
from bertfit.engine.setup import run_frames
from bertfit.runfiles import read_decisions, standing

FINE_TUNING = ("--max-steps", 30, "--lr", "1e-3", "--no-probe")


@pytest.fixture
def reviewed(tiny_bert, tmp_path, capsys) -> Path:
    out = tmp_path / "run"
    code, _, err = run_cli(sample_run_args(tiny_bert, out, *FINE_TUNING), capsys)
    assert code == 0, err
    assert (out / "mislabeled.jsonl").read_text().strip(), "the tiny run flagged no example to review"
    return out


class Server:
    """`bertfit review` as the user starts it: a process of its own, on a port of the test's choosing."""

    def __init__(self, run: Path, port: int, *options):
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bertfit", "review", str(run), "--port", str(port), *map(str, options)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/api/state", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
            if self.process.poll() is not None:
                raise AssertionError(self.process.stderr.read())
        raise AssertionError("the review page did not start")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def server(reviewed, tmp_path):
    other = tmp_path / "sweep" / "trials" / "0000"  # a sweep's trial, as `--compare SWEEP` finds it
    shutil.copytree(reviewed, other)
    started = Server(reviewed, free_port(), "--compare", tmp_path / "sweep")
    yield started
    started.stop()


def chromium():
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("Chromium and its driver are not installed (.ci/run installs Debian's chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def wait_for(browser, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(lambda _: condition())


def first_rows(browser, count=2):
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#rows tr")[:count]
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def test_a_decision_made_with_the_keyboard_survives_a_reload_and_retrains_the_model(reviewed, server, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    browser = chromium()
    try:
        browser.get(server.url + "/")
        wait_for(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        (first, text, given, suggested, _, _), (second, *_) = first_rows(browser)
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("a")  # accept the suggested label of the first row; the cursor moves on
        wait_for(browser, lambda: f"saved: train row {first}" in browser.find_element(By.ID, "status").text)
        body.send_keys("d")  # drop the second
        wait_for(browser, lambda: f"saved: train row {second} drop" in browser.find_element(By.ID, "status").text)
        browser.save_screenshot(str(tmp_path / "issues.png"))

        browser.refresh()  # what the page shows comes from the file, not from the tab
        wait_for(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        rows = first_rows(browser)
        assert rows[0][5] == f"relabel → {suggested}" and rows[1][5] == "drop"

        browser.find_element(By.CSS_SELECTOR, "nav button[data-view=overview]").click()
        wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#plots img"))
        assert browser.find_element(By.ID, "metrics").text.startswith("loss")

        browser.find_element(By.CSS_SELECTOR, "nav button[data-view=compare]").click()
        wait_for(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-compared") == "2")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-evals polyline")) == 2
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-losses polyline")) == 2

        browser.find_element(By.CSS_SELECTOR, "nav button[data-view=errors]").click()
        wait_for(browser, lambda: "validation errors" in browser.find_element(By.ID, "status").text)
        errors = browser.find_elements(By.CSS_SELECTOR, "#error-rows tr")
        assert errors, "the tiny model gets some validation examples wrong"
        wrong_row, _, wrong_given, wrong_predicted = [c.text for c in errors[0].find_elements(By.TAG_NAME, "td")][:4]
        assert wrong_given != wrong_predicted
        browser.find_element(By.TAG_NAME, "body").send_keys("a")  # the validation label is wrong: take the prediction
        wait_for(browser, lambda: f"saved: validation row {wrong_row}" in browser.find_element(By.ID, "status").text)

        browser.find_element(By.CSS_SELECTOR, "nav button[data-view=issues]").click()
        browser.find_element(By.ID, "export").click()
        wait_for(browser, lambda: "exported" in browser.find_element(By.ID, "status").text)
        assert "1 training labels corrected and 1 examples dropped" in browser.find_element(By.ID, "status").text
    finally:
        browser.quit()

    decided = standing(read_decisions(reviewed / "review" / "decisions.jsonl"))
    assert decided[int(first)].new_label == suggested and decided[int(second)].action == "drop"
    exported = [json.loads(line) for line in (reviewed / "review" / "train.corrected.jsonl").read_text().splitlines()]
    before = run_frames(build_config(str(reviewed / "recipe.yaml")))["train"]
    assert len(exported) == len(before) - 1
    assert "review/decisions.jsonl" in json.loads((reviewed / ".bertfit-run.json").read_text())["owned"]

    server.stop()  # the page holds the run; the retrain reads its decisions
    again = tmp_path / "again"
    corrections = reviewed / "review" / "decisions.jsonl"
    code, _, err = run_cli(
        sample_run_args(tiny_bert_of(reviewed), again, *FINE_TUNING, "--corrections", corrections), capsys
    )
    assert code == 0, err
    retrained = run_frames(build_config(str(again / "recipe.yaml")))["train"]
    assert len(retrained) == len(before) - 1
    moved = retrained["sentence"].tolist().index(text)
    assert str(retrained["label"].iloc[moved]) == suggested != given
    card = (again / "README.md").read_text()
    assert "1 training labels corrected and 1 examples dropped" in card and "1 validation labels corrected" in card
    validation = run_frames(build_config(str(again / "recipe.yaml")))["validation"]
    assert str(validation["label"].iloc[int(wrong_row)]) == wrong_predicted
    # The doctor compares the retrained run with the run reviewed (its validation labels changed too: said).
    findings = {f["id"]: f for f in json.loads((again / "diagnosis.json").read_text())["findings"]}
    assert str(reviewed.resolve()) in findings["corrected"]["evidence"]
    assert "different labels" in findings["corrected"]["evidence"]


def tiny_bert_of(run: Path) -> str:
    return build_config(str(run / "recipe.yaml")).model


def test_two_tabs_deciding_at_once_lose_nothing(reviewed, server):
    """Decisions from two clients at the same moment are all appended, none overwritten."""
    rows = [json.loads(line)["row"] for line in (reviewed / "mislabeled.jsonl").read_text().splitlines()][:20]
    errors = []

    def tab(chosen):
        with httpx.Client(base_url=server.url) as client:
            for row in chosen:
                answer = client.post("/api/decisions", json={"row": row, "action": "keep"})
                if answer.status_code != 200:
                    errors.append(answer.text)

    tabs = [threading.Thread(target=tab, args=(rows[i::2],)) for i in range(2)]
    for t in tabs:
        t.start()
    for t in tabs:
        t.join()
    assert not errors
    decisions = read_decisions(reviewed / "review" / "decisions.jsonl")
    assert sorted(d.row for d in decisions) == sorted(rows)
    assert httpx.post(server.url + "/api/decisions", json={"row": -5, "action": "keep"}).status_code == 404
    assert httpx.post(server.url + "/api/decisions", json={"row": rows[0], "action": "burn"}).status_code == 422
    assert httpx.get(server.url + "/plots/..%2Frecipe.yaml").status_code == 404


def test_a_torn_last_line_is_left_out_and_undo_takes_back_the_last_decision(tmp_path):
    path = tmp_path / "decisions.jsonl"
    line = {"row": 3, "text_sha256": "ab", "label": "0", "time": 1.0}
    records = [{**line, "action": "relabel", "new_label": "1"}, {**line, "action": "drop"}, {**line, "action": "undo"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"row": 4, "text_sh')
    decided = standing(read_decisions(path))
    assert list(decided) == [3] and decided[3].action == "relabel"


def test_review_refuses_what_it_cannot_review_in_one_line(reviewed, tmp_path, capsys):
    code, _, err = run_cli(["review", tmp_path], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        code, _, err = run_cli(["review", reviewed, "--port", busy.getsockname()[1]], capsys)
    assert code == 2 and "choose another --port" in err and len(err.strip().splitlines()) == 1


def test_corrections_of_other_data_are_refused_in_one_line(reviewed, tmp_path, capsys):
    decisions = reviewed / "review"
    decisions.mkdir()
    row = json.loads((reviewed / "mislabeled.jsonl").read_text().splitlines()[0])["row"]
    (decisions / "decisions.jsonl").write_text(
        json.dumps({"row": row, "text_sha256": "0" * 16, "label": "0", "action": "drop", "time": 1.0}) + "\n"
    )
    code, _, err = run_cli(
        sample_run_args(
            tiny_bert_of(reviewed), tmp_path / "again", *FINE_TUNING, "--corrections", decisions / "decisions.jsonl"
        ),
        capsys,
    )
    assert code == 2 and "do not match this data" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        sample_run_args(
            tiny_bert_of(reviewed), reviewed / "inside", *FINE_TUNING, "--corrections", decisions / "decisions.jsonl"
        ),
        capsys,
    )
    assert code == 2


def test_a_token_run_is_reviewed_by_sentence_and_retrained_with_the_corrected_tags(tiny_bert, tmp_path, capsys):
    """NER: the list names sentences with their doubted words, the page shows those words and their tags, the
    validation errors are grouped by entity, and the accepted tags are in the retrained run's data."""
    from selenium.webdriver.common.by import By

    run, conll = tmp_path / "run", SAMPLES / "conll_50.conll"
    code, _, err = run_cli(sample_run_args(tiny_bert, run, *FINE_TUNING, "--max-length", 32, data=conll), capsys)
    assert code == 0, err
    listed = [json.loads(line) for line in (run / "mislabeled.jsonl").read_text().splitlines()]
    assert listed, "the tiny NER run flagged no sentence to review"
    first = listed[0]
    assert len(first["words"]) == len(first["label"].split(" ")) == len(first["suspected"].split(" "))
    assert first["label"] != first["suspected"]
    summary = json.loads((run / "metrics.json").read_text())["mislabeled"]
    trained = run_frames(build_config(str(run / "recipe.yaml")))["train"]
    assert summary["flagged"] == len(listed) and summary["examined"] == len(trained)  # sentences, not tokens
    doubted = [w for w, a, b in zip(first["words"], first["label"].split(), first["suspected"].split()) if a != b]

    server = Server(run, free_port())
    browser = chromium()
    try:
        browser.get(server.url + "/")
        wait_for(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        row, text, given, suggested, _, _ = first_rows(browser, 1)[0]
        assert f"[{doubted[0]}]" in text and given.startswith(doubted[0] + " ") and suggested.startswith(doubted[0])
        browser.find_element(By.TAG_NAME, "body").send_keys("a")
        wait_for(browser, lambda: f"saved: train row {row} relabel" in browser.find_element(By.ID, "status").text)
        errors = httpx.get(server.url + "/api/errors", timeout=120).json()
        assert errors["errors"] and all(" → " in pair and len(pair.split()) == 3 for pair in errors["pairs"])
        assert all(set(e["pairs"]) <= set(errors["pairs"]) for e in errors["errors"])
        assert (
            httpx.post(
                server.url + "/api/decisions", json={"row": int(row), "new_label": "O", "action": "relabel"}
            ).status_code
            == 422
        )
    finally:
        browser.quit()
        server.stop()

    again = tmp_path / "again"
    corrections = run / "review" / "decisions.jsonl"
    args = sample_run_args(tiny_bert, again, *FINE_TUNING, "--max-length", 32, "--corrections", corrections, data=conll)
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    retrained = run_frames(build_config(str(again / "recipe.yaml")))["train"]
    assert list(retrained["ner_tags"].iloc[int(row)]) == first["suspected"].split(" ")
    assert "1 training labels corrected" in (again / "README.md").read_text()
