"""Which of a run's own signals finds flipped labels best: the sums the mislabeled list is built from, taken after
each epoch instead of only at the end.

#30 asked whether the probabilities an example gets in the first epoch, before the model has trained on it (out of
sample), make a better input for cleanlab than the mean over all of training, and whether a later epoch alone ranks
better than the area under the margin over all of them. This trains bertfit's default recipe on the noisy data of
benchmarks/mislabeled.py (same rows, seed and flips), recording the margin and probability sums at each epoch's end,
and scores each signal as the benchmark scores bertfit's list: cleanlab's flagged set (F1), and precision among the
k first (k = the flips) of the flagged examples ranked by the signal's mean margin.

    python benchmarks/mislabeled_signals.py                     # SST-2 and TweetEval at 5%, appended to BENCHMARKS.md
    python benchmarks/mislabeled_signals.py --data sst2 --no-write
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def record(name: str, noise: float, folder: Path) -> None:
    """In this process: the noisy data into `folder`, a bertfit run on it, and `sums.npz` with the tracker's sums
    at each epoch's end (margin{e}, seen{e}, prob{e}), the given labels and the rows made wrong."""
    import mislabeled

    from bertfit.cli import main
    from bertfit.engine import margins

    flipped, _ = mislabeled.noisy(name, noise, folder)
    epochs: list[list[np.ndarray]] = []
    add, ranked = margins.MarginTracker.add, margins.MarginTracker.ranked

    def add_and_keep(self, task, indices, logits, labels):
        add(self, task, indices, logits, labels)
        if int(self.seen.sum()) >= (len(epochs) + 1) * len(self.seen):  # every example trained on once more
            epochs.append([t.cpu().numpy().copy() for t in (self.margin, self.seen, self.probabilities)])

    def save_and_rank(self, task, frame, labels):
        sums = {f"{k}{e}": a for e, kept in enumerate(epochs) for k, a in zip(("margin", "seen", "prob"), kept)}
        np.savez(folder / "sums.npz", labels=np.asarray(labels), flipped=flipped, **sums)
        return ranked(self, task, frame, labels)

    margins.MarginTracker.add, margins.MarginTracker.ranked = add_and_keep, save_and_rank
    sys.argv = ["bertfit", "train", *mislabeled.RECIPE, "--data", str(folder), "--output", str(folder / "run")]
    main()


def signals(sums) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per signal: each example's mean margin and mean probabilities."""
    epochs = sorted(int(key[len("seen") :]) for key in sums.files if key.startswith("seen"))
    found = {}
    for e in epochs:
        seen = np.maximum(sums[f"seen{e}"], 1)
        name = "epoch 1 (out of sample)" if e == 0 else f"epochs 1-{e + 1}"
        found[name] = (sums[f"margin{e}"] / seen, sums[f"prob{e}"] / seen[:, None])
    last = epochs[-1]
    seen = np.maximum(sums[f"seen{last}"] - sums[f"seen{last - 1}"], 1)
    found[f"epoch {last + 1} alone"] = (
        (sums[f"margin{last}"] - sums[f"margin{last - 1}"]) / seen,
        (sums[f"prob{last}"] - sums[f"prob{last - 1}"]) / seen[:, None],
    )
    return found


def scores(sums) -> list[dict]:
    """Each signal scored as benchmarks/mislabeled.py scores bertfit's list (`scored`): cleanlab's flagged set, ranked
    by the signal's mean margin; and the k lowest margins of all examples, flagged or not."""
    from cleanlab.filter import find_label_issues
    from mislabeled import scored

    labels, flipped = sums["labels"], sums["flipped"]
    rows = []
    for name, (margin, probabilities) in signals(sums).items():
        normalized = probabilities / np.maximum(probabilities.sum(1, keepdims=True), 1e-12)
        flagged = np.flatnonzero(
            find_label_issues(labels, normalized, filter_by="prune_by_noise_rate", n_jobs=1, verbose=False)
        )
        found = scored(flipped, flagged, flagged[np.argsort(margin[flagged], kind="stable")])
        unflagged = scored(flipped, flagged, np.argsort(margin, kind="stable"))["precision_at_k"]
        rows.append({"signal": name, **found, "precision_at_k_unflagged": unflagged})
    return rows


def prepare(name: str, noise: float, folder: Path, env: dict) -> None:
    """The recorded run in `folder`, unless its sums.npz is there."""
    if not (folder / "sums.npz").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, __file__, "--record", name, str(noise), str(folder)]
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def main() -> None:
    from mislabeled import publish, study_options, study_table

    parser = study_options(__doc__)
    parser.add_argument("--record", nargs=3, metavar=("DATA", "NOISE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record:
        record(args.record[0], float(args.record[1]), Path(args.record[2]))
        return
    columns = [
        ("signal", "signal", ""),
        ("flagged", "flagged", "d"),
        ("F1", "f1", ".3f"),
        ("precision@k (flagged, by margin)", "precision_at_k", ".3f"),
        ("precision@k (all, by margin)", "precision_at_k_unflagged", ".3f"),
    ]
    lines = study_table(args, "bertfit-signals-", prepare, lambda folder: scores(np.load(folder / "sums.npz")), columns)
    about = (
        f"benchmarks/mislabeled.py's data ({args.noise:.0%} of 4,000 labels flipped, seed 7) and recipe; bertfit's "
        "list uses all three epochs (the `epochs 1-3` row)"
    )
    publish("Mislabeled examples: which signal of a run finds them", about, lines, args.no_write)


if __name__ == "__main__":
    main()
