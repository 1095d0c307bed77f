"""Does paying for more runs make the mislabeled list sharper? #30's last idea, measured before it is built.

#30 proposed optional cross-fitting (`find_mislabeled: cv`, K runs on K-1 folds) for users who pay K runs for the
best list. On benchmarks/mislabeled.py's noisy data (same rows, flips and recipe), this trains:

- five runs on the whole training set with seeds 42..46 (seed 42 is bertfit's default list),
- five runs on stratified 4/5 folds (seed 7), each scoring the fold it left out through `transformers.pipeline()`
  (the out-of-fold probabilities cleanlab's 5-fold row uses),

records each run's margin and probability sums, and scores every way of pooling them as the benchmark scores
bertfit's list: cleanlab's flagged set from the pooled mean probabilities (F1), ranked by the pooled area under the
margin (precision among the first k, k = the flips). One more signal of a single run is scored beside them: how
many of an example's 50 nearest training neighbours, in the fine-tuned model's own representation (the classifier's
input), share its label (deep k-NN, Bahri et al. 2020), rank-averaged with the margin.

    python benchmarks/mislabeled_ensembles.py --scratch /tmp/ensembles       # SST-2 and TweetEval at 5%
    python benchmarks/mislabeled_ensembles.py --data sst2 --no-write

Single-label data only (the multi-label and token lists rank differently).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SEEDS = (42, 43, 44, 45, 46)
FOLDS = 5
NEIGHBOURS = 50


def record(folder: Path, seed: int) -> None:
    """In this process: bertfit's mislabeled recipe with `seed` on `folder`'s data, and `sums.npz` with the
    tracker's final sums (margin, seen, prob), one row per training example in file order."""
    import mislabeled

    from bertfit.cli import main
    from bertfit.engine import margins

    ranked = margins.MarginTracker.ranked

    def save_and_rank(self, task, frame, features):
        sums = dict(zip(("margin", "seen", "prob"), (t.cpu().numpy() for t in self.totals()), strict=True))
        np.savez(folder / "sums.npz", **{f"final_{name}": array for name, array in sums.items()})
        return ranked(self, task, frame, features)

    margins.MarginTracker.ranked = save_and_rank
    recipe = list(mislabeled.RECIPE)
    recipe[recipe.index("--seed") + 1] = str(seed)
    sys.argv = ["bertfit", "train", *recipe, "--data", str(folder), "--output", str(folder / "run"), "--overwrite"]
    main()


def linked_data(folder: Path, source: Path, names=("train.parquet", "validation.parquet")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (folder / name).is_symlink() and not (folder / name).exists():
            (folder / name).symlink_to(os.path.relpath(source / name, folder))


def train_all(name: str, noise: float, folder: Path, env: dict) -> None:
    """The noisy data, the five seeds, the five folds and their out-of-fold probabilities; what is there is kept."""
    import mislabeled
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    if not (folder / "flipped.npy").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        flipped, _ = mislabeled.noisy(name, noise, folder)
        np.save(folder / "flipped.npy", flipped)

    def run(sub: Path, seed: int) -> None:
        if not (sub / "sums.npz").is_file():
            command = [sys.executable, __file__, "--record", str(sub), str(seed)]
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)

    train = pd.read_parquet(folder / "train.parquet")
    labels, classes, y = mislabeled.targets(train)
    for seed in SEEDS:
        linked_data(folder / f"seed{seed}", folder)
        run(folder / f"seed{seed}", seed)
    if (folder / "oof.npy").is_file():
        return
    from transformers import pipeline

    oof = np.zeros((len(train), len(classes)))
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=mislabeled.SEED)
    for fold, (fit, held) in enumerate(folds.split(train, y)):
        sub = folder / f"fold{fold}"
        sub.mkdir(exist_ok=True)
        train.iloc[fit].to_parquet(sub / "train.parquet")
        linked_data(sub, folder, names=("validation.parquet",))
        np.save(sub / "rows.npy", fit)
        run(sub, 42)
        classify = pipeline("text-classification", model=str(sub / "run"), top_k=None, device="cpu")
        texts = list(train["text"].iloc[held])
        for row, scores in zip(held, classify(texts, batch_size=64, truncation=True, max_length=64), strict=True):
            by_label = {score["label"]: score["score"] for score in scores}
            oof[row] = [by_label.get(str(c), 0.0) for c in classes]
    np.save(folder / "oof.npy", oof)


def means(sub: Path, rows: int, at: np.ndarray | None = None):
    """A run's mean margin and mean probabilities, placed at the rows of the whole training set it trained on."""
    sums = np.load(sub / "sums.npz")
    seen = np.maximum(sums["final_seen"], 1)
    margin, probabilities = np.full(rows, np.nan), np.full((rows, sums["final_prob"].shape[1]), np.nan)
    at = np.arange(rows) if at is None else at
    margin[at], probabilities[at] = sums["final_margin"] / seen, sums["final_prob"] / seen[:, None]
    return margin, probabilities


def train_seconds(sub: Path) -> float:
    return json.loads((sub / "run" / "metrics.json").read_text())["train"]["train_seconds"]


def neighbour_agreement(folder: Path, labels: np.ndarray) -> np.ndarray:
    """For each training example, the share of its nearest neighbours (cosine, in the seed-42 run's classifier
    input) whose given label is its own."""
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = folder / "seed42" / "run"
    tokenizer, model = AutoTokenizer.from_pretrained(run), AutoModelForSequenceClassification.from_pretrained(run)
    inputs: list[torch.Tensor] = []
    hook = model.classifier.register_forward_hook(lambda module, args, output: inputs.append(args[0].detach()))
    texts = list(pd.read_parquet(folder / "train.parquet")["text"])
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), 128):
            chunk = texts[start : start + 128]
            model(**tokenizer(chunk, truncation=True, max_length=64, padding=True, return_tensors="pt"))
    hook.remove()
    vectors = torch.nn.functional.normalize(torch.cat(inputs), dim=1)
    similarity = vectors @ vectors.T
    similarity.fill_diagonal_(-2)
    nearest = similarity.topk(NEIGHBOURS, dim=1).indices.numpy()
    return (labels[nearest] == labels[:, None]).mean(1)


def scores(folder: Path) -> list[dict]:
    import mislabeled
    import pandas as pd
    from cleanlab.filter import find_label_issues
    from scipy.stats import rankdata

    flipped = np.load(folder / "flipped.npy")
    labels = pd.read_parquet(folder / "train.parquet")["label"].to_numpy()
    rows = len(labels)
    seeds = [means(folder / f"seed{seed}", rows) for seed in SEEDS]
    folds = [means(folder / f"fold{f}", rows, np.load(folder / f"fold{f}" / "rows.npy")) for f in range(FOLDS)]
    oof = np.load(folder / "oof.npy")
    given = oof[np.arange(rows), labels]
    seed_seconds = [train_seconds(folder / f"seed{seed}") for seed in SEEDS]
    fold_seconds = sum(train_seconds(folder / f"fold{f}") for f in range(FOLDS))

    def pooled(runs):  # the mean over the runs that trained on each example
        return np.nanmean([m for m, _ in runs], 0), np.nanmean([p for _, p in runs], 0)

    agreement = neighbour_agreement(folder, labels)
    margin42, probabilities42 = seeds[0]
    signals = {
        "one run (bertfit's list)": (margin42, probabilities42, seed_seconds[0]),
        "3 seeds": (*pooled(seeds[:3]), sum(seed_seconds[:3])),
        "5 seeds": (*pooled(seeds), sum(seed_seconds)),
        "5 folds, in-fold margins": (*pooled(folds), fold_seconds),
        # ranked as cleanlab ranks its own list (self-confidence: the given label's probability)
        "5 folds, out-of-fold probabilities (cleanlab's 5-fold row)": (given, oof, fold_seconds),
        "5 seeds and 5 folds": (*pooled(seeds + folds), sum(seed_seconds) + fold_seconds),
        f"one run + agreement of {NEIGHBOURS} nearest neighbours": (
            rankdata(margin42) + rankdata(agreement),
            probabilities42,
            seed_seconds[0],
        ),
    }
    found = []
    for name, (margin, probabilities, seconds) in signals.items():
        normalized = probabilities / np.maximum(probabilities.sum(1, keepdims=True), 1e-12)
        flagged = np.flatnonzero(
            find_label_issues(labels, normalized, filter_by="prune_by_noise_rate", n_jobs=1, verbose=False)
        )
        ranked = flagged[np.argsort(margin[flagged], kind="stable")]
        found.append({"signal": name, **mislabeled.scored(flipped, flagged, ranked), "train_seconds": seconds})
    return found


def main() -> None:
    from mislabeled import SCORED, publish, study_options, study_table

    parser = study_options(__doc__)
    parser.add_argument("--record", nargs=2, metavar=("FOLDER", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record:
        record(Path(args.record[0]), int(args.record[1]))
        return
    columns = [
        ("list from", "signal", ""),
        ("flagged", "flagged", "d"),
        *SCORED,
        ("training s", "train_seconds", ".0f"),
    ]
    lines = study_table(args, "bertfit-ensembles-", train_all, scores, columns)
    about = (
        f"benchmarks/mislabeled.py's data ({args.noise:.0%} of 4,000 labels flipped, seed 7) and recipe (minilm, "
        "3 epochs, max_length 64); seeds 42-46 on all of it, five stratified folds on 4/5 each; training s: the "
        "runs' training seconds added up"
    )
    publish("Mislabeled examples: several runs pooled", about, lines, args.no_write)


if __name__ == "__main__":
    main()
