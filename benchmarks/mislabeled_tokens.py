"""How well bertfit finds wrong tags in NER data, side by side with cleanlab's token-classification module, and
what accepting its suggestions is worth.

4,000 seeded CoNLL-2003 training sentences; in a seeded share of the sentences that have an entity, one entity's
type is changed to another at random (`B-PER I-PER` → `B-ORG I-ORG`: the commonest NER annotation error).
all-MiniLM-L6-v2 is trained on them with bertfit's defaults, and the list it writes (mislabeled.jsonl: sentences,
the most suspect first, each with its doubted words) is scored against the sentences made wrong: precision, recall
and F1 of the flagged sentences, precision among the k first (k = sentences made wrong), and, of the flagged
sentences made wrong, the share whose doubted words include the changed entity. Beside it, in the same run:
- cleanlab's `token_classification` (`filter.find_label_issues` and `rank.get_label_quality_scores`, its defaults)
  on out-of-fold probabilities per word of 5-fold fine-tuned minilm (five bertfit runs without the detection, each
  scoring the fold it did not train on);
- the cost: the same bertfit run with `find_mislabeled: false`;
- what a review is worth: the run retrained with its top-k suggestions accepted (`--corrections`, the decisions
  file `bertfit review` writes), against the noisy run and a run on the clean tags.

    python benchmarks/mislabeled_tokens.py               # 5% of the sentences with an entity made wrong
    python benchmarks/mislabeled_tokens.py --noise 0.05 0.10

Each cell's result is kept in benchmarks/results/mislabeled_tokens.jsonl, so an interrupted run goes on where it
stopped; --fresh recomputes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from mislabeled import accept_first, bertfit_runner, scored  # noqa: E402 (after the path that finds it)

RESULTS = REPO / "benchmarks" / "results" / "mislabeled_tokens.jsonl"
DATA = Path(os.environ.get("BERTFIT_SHARED_DATA", REPO.parent / "shared" / "data"))
METHODS = ("bertfit", "bertfit-off", "clean", "cleanlab-5fold")
ROWS, SEED, FOLDS = 4_000, 7, 5
RECIPE = ["--model", "minilm", "--seed", "42", "--max-length", "128", "--no-probe"]
bertfit = bertfit_runner(RECIPE)


def noisy(noise: float, folder: Path) -> tuple[np.ndarray, dict, list]:
    """Writes train.parquet (one entity's type changed in a seeded share of the sentences that have one) and
    validation.parquet into `folder`; returns the sentences made wrong, each one's changed words and the clean
    tags."""
    import pandas as pd
    from seqeval.metrics.sequence_labeling import get_entities

    train = pd.read_parquet(DATA / "conll2003" / "train.parquet").sample(ROWS, random_state=SEED)
    train = train.reset_index(drop=True)[["tokens", "ner_tags"]]
    clean = [list(tags) for tags in train["ner_tags"]]
    rng = np.random.default_rng(SEED)
    with_entities = np.flatnonzero([bool(get_entities(tags)) for tags in clean])
    wrong = np.sort(rng.choice(with_entities, int(len(with_entities) * noise), replace=False))
    kinds = sorted({kind for tags in clean for kind, _, _ in get_entities(tags)})
    tags, changed = list(clean), {}
    for row in wrong.tolist():
        entities = get_entities(clean[row])
        kind, start, end = entities[rng.integers(len(entities))]
        others = [k for k in kinds if k != kind]
        new = others[rng.integers(len(others))]
        tags[row] = [t[:2] + new if start <= i <= end else t for i, t in enumerate(clean[row])]
        changed[row] = list(range(start, end + 1))
    train.assign(ner_tags=tags).to_parquet(folder / "train.parquet")
    pd.read_parquet(DATA / "conll2003" / "validation.parquet")[["tokens", "ner_tags"]].to_parquet(
        folder / "validation.parquet"
    )
    return wrong, changed, clean


def words_found(changed: dict, doubted: dict) -> float:
    """Of the flagged sentences made wrong, the share whose doubted words include the changed entity's."""
    hits = [row for row in doubted if row in changed]
    return sum(bool(set(doubted[row]) & set(changed[row])) for row in hits) / max(len(hits), 1)


def bertfit_cell(data: Path, scratch: Path, flipped: np.ndarray, changed: dict) -> dict:
    """bertfit's own list, then the run retrained with its top-k suggestions accepted as a reviewer would."""
    run = bertfit(data, scratch / "run")
    found = [json.loads(line) for line in (scratch / "run" / "mislabeled.jsonl").read_text().splitlines()]
    rows = [s["row"] for s in found]
    doubted = {
        s["row"]: [i for i, (a, b) in enumerate(zip(s["label"].split(), s["suspected"].split())) if a != b]
        for s in found
    }
    result = {**run, **scored(flipped, rows, rows), "words_found": words_found(changed, doubted)}
    decisions = accept_first(found, len(flipped), scratch / "decisions.jsonl")
    result["retrained_accuracy"] = bertfit(data, scratch / "retrained", "--corrections", str(decisions))["accuracy"]
    return result


def word_probabilities(run: Path, frame) -> list[np.ndarray]:
    """Per sentence, each word's probabilities from the run's model (its first sub-token's, as it was trained)."""
    from bertfit.engine.evaluation import infer
    from bertfit.engine.predict import load_run

    loaded = load_run(str(run))
    features = loaded.task.encode(frame, loaded.tokenizer)
    scores = infer(loaded.scorer(64), features, loaded.task.scores).outputs
    return loaded.task.stitch(features, scores, [len(words) for words in frame["tokens"]], 0.0)


def five_fold_cell(data: Path, scratch: Path, flipped: np.ndarray, changed: dict) -> dict:
    import pandas as pd
    from cleanlab.token_classification.filter import find_label_issues
    from cleanlab.token_classification.rank import get_label_quality_scores
    from sklearn.model_selection import KFold

    train = pd.read_parquet(data / "train.parquet")
    names = json.loads((scratch / "names.json").read_text()) if (scratch / "names.json").is_file() else None
    probabilities: list = [None] * len(train)
    started, train_seconds = time.perf_counter(), 0.0
    for fold, (fit_rows, held_rows) in enumerate(KFold(FOLDS, shuffle=True, random_state=SEED).split(train)):
        folder = scratch / f"fold{fold}"
        folder.mkdir()
        train.iloc[fit_rows].to_parquet(folder / "train.parquet")
        (folder / "validation.parquet").symlink_to(data / "validation.parquet")
        train_seconds += bertfit(folder, folder / "run", "--set", "find_mislabeled=false")["train_seconds"]
        fold_names = json.loads((folder / "run" / "config.json").read_text())["id2label"]
        fold_names = [fold_names[str(i)] for i in range(len(fold_names))]
        names = names or fold_names
        held = train.iloc[held_rows].reset_index(drop=True)
        for row, words in zip(held_rows, word_probabilities(folder / "run", held), strict=True):
            order = [fold_names.index(name) for name in names]  # every fold in the first fold's tag order
            probabilities[row] = words[:, order].astype(np.float64)
    index = {name: i for i, name in enumerate(names)}
    labels = [[index[tag] for tag in tags] for tags in train["ner_tags"]]
    for row, words in enumerate(probabilities):  # a word no window predicted (no sub-tokens) is spread evenly
        words[words.sum(1) == 0] = 1.0 / len(names)
        probabilities[row] = words / words.sum(1, keepdims=True)
    issues = find_label_issues(labels, probabilities)
    flagged = sorted({row for row, _ in issues})
    sentence_scores, _ = get_label_quality_scores(labels, probabilities)
    doubted: dict = {}
    for row, word in issues:
        doubted.setdefault(row, []).append(word)
    return {
        **scored(flipped, flagged, np.argsort(sentence_scores, kind="stable")),
        "words_found": words_found(changed, doubted),
        "seconds": time.perf_counter() - started,
        "train_seconds": train_seconds,
    }


def cell(method: str, noise: float) -> dict:
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="bertfit-tags-") as root:
        scratch, data = Path(root), Path(root) / "data"
        data.mkdir()
        flipped, changed, clean = noisy(noise, data)
        result: dict = {"flips": len(flipped)}
        if method == "bertfit":
            result.update(bertfit_cell(data, scratch, flipped, changed))
        elif method == "bertfit-off":
            result.update(bertfit(data, scratch / "run", "--set", "find_mislabeled=false"))
        elif method == "clean":
            import pandas as pd

            pd.read_parquet(data / "train.parquet").assign(ner_tags=clean).to_parquet(data / "train.parquet")
            result.update(bertfit(data, scratch / "run", "--set", "find_mislabeled=false"))
        else:
            result.update(five_fold_cell(data, scratch, flipped, changed))
    return result


def compute(methods, noises, fresh: bool) -> dict:
    results = {}
    if RESULTS.is_file() and not fresh:
        for line in RESULTS.read_text().splitlines():
            row = json.loads(line)
            results[(row["method"], row["noise"])] = row
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for noise in noises:
        for method in methods:
            if (method, noise) in results:
                continue
            env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
            done = subprocess.run(
                [sys.executable, __file__, "--cell", method, str(noise)], capture_output=True, text=True, env=env
            )
            if done.returncode != 0:
                sys.exit(f"{method} {noise} failed:\n{done.stderr[-3000:]}")
            row = {"method": method, "noise": noise, **json.loads(done.stdout.strip().splitlines()[-1])}
            results[(method, noise)] = row
            with open(RESULTS, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    return results


def report(results: dict, noises, command: str) -> list[str]:
    from sections import machine

    lines = [
        f"- machine: {machine()}",
        f"- command: `{command}`: all-MiniLM-L6-v2, {ROWS:,} seeded CoNLL-2003 training sentences (seed {SEED}); in "
        "the stated share of those with an entity, one entity's type changed to another at random; bertfit's "
        "default recipe at max_length 128; k = the sentences made wrong; 'words' = of the flagged sentences made "
        "wrong, the share whose doubted words include the changed entity; seconds are training seconds",
        "",
        "| noise (k) | detector | flagged | precision | recall | F1 | precision@k | words | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    titles = {"bertfit": "bertfit (default)", "cleanlab-5fold": "cleanlab token_classification, 5-fold minilm"}
    for noise in noises:
        for method, title in titles.items():
            row = results.get((method, noise))
            if row is None:
                continue
            lines.append(
                f"| {noise:.0%} ({row['flips']}) | {title} | {row['flagged']} | {row['precision']:.3f} | "
                f"{row['recall']:.3f} | {row['f1']:.3f} | {row['precision_at_k']:.3f} | {row['words_found']:.2f} | "
                f"{row['train_seconds']:.0f} |"
            )
    lines += ["", "| noise | validation F1: noisy tags | top-k accepted | clean tags | detection's extra time |"]
    lines.append("|---|---:|---:|---:|---:|")
    for noise in noises:
        found, off, clean = (results.get((m, noise)) for m in ("bertfit", "bertfit-off", "clean"))
        if found and off and clean:
            extra = found["train_seconds"] / off["train_seconds"] - 1
            lines.append(
                f"| {noise:.0%} | {off['accuracy']:.4f} | {found['retrained_accuracy']:.4f} | "
                f"{clean['accuracy']:.4f} | {extra:+.1%} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", nargs=2, metavar=("METHOD", "NOISE"), help=argparse.SUPPRESS)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--fresh", action="store_true", help="recompute every cell")
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(cell(args.cell[0], float(args.cell[1]))))
        return
    results = compute(args.methods, args.noise, args.fresh)
    from sections import append

    command = "python benchmarks/mislabeled_tokens.py" + (
        f" --noise {' '.join(map(str, args.noise))}" if args.noise != [0.05] else ""
    )
    append("Mislabeled tags (NER): bertfit against cleanlab", report(results, args.noise, command))


if __name__ == "__main__":
    main()
