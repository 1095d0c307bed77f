"""Multi-label classification: any number of labels per text (emotions, topics, tags), one sigmoid per label, and
a decision threshold chosen on validation rather than assumed to be 0.5."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import torch.nn.functional as F

from bertfit.data.schema import DataSpec, Found, check_rows, is_number
from bertfit.data.sources import Splits
from bertfit.errors import BertfitError
from bertfit.runfiles import Scores, SplitProfile
from bertfit.tasks.base import counted, labels_not_in_train, quiet_cleanlab
from bertfit.tasks.sequence import SequenceTask

# Thresholds tried on validation; a label with fewer positives there than MIN_POSITIVES keeps the global one, since
# a threshold fitted to two or three examples says nothing about the next thousand.
CANDIDATES = np.round(np.arange(0.02, 0.981, 0.01), 2)
MIN_POSITIVES = 10
# A label on fewer than this share of a split's examples is called rare in the data profile.
RARE_SHARE = 0.005


# How a review writes an example's set of labels (mislabeled.jsonl, decisions): "joy|love", or NO_LABELS.
LABEL_SET = "|"
NO_LABELS = "(none)"


class MultiLabelTask(SequenceTask):
    kind = "multi_label"
    data_kind = "multi_label"
    primary_metric = "micro_f1"
    stratifies = False
    decides_by_threshold = True
    few_shot = True
    finds_mislabeled = True

    @classmethod
    def claims(cls, found: Found) -> bool:
        """0/1 label columns, a column of label lists, or labels such as 'sports|politics' (two list columns are
        tokens and tags, not labels)."""
        if found.label_columns:
            return True
        label = found.label
        return (
            len(found.list_columns) < 2
            and label is not None
            and (label in found.list_columns or _joins_labels(found.train[label], found.delimiter))
        )

    @classmethod
    def read_data(cls, found: Found) -> DataSpec:
        return read_multi_label(found)

    @classmethod
    def normalise_data(cls, splits: Splits, spec: DataSpec) -> Splits:
        sets = _label_sets(splits, spec)
        return replace(splits, frames={s: f.assign(**{spec.label_column: sets[s]}) for s, f in splits.frames.items()})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Decision thresholds per label, once chosen on validation (or read back from a saved model).
        fixed = isinstance(self.threshold, (int, float))
        self.thresholds: np.ndarray | None = np.full(len(self.label_names), float(self.threshold)) if fixed else None

    def label_ids(self, frame: pd.DataFrame) -> np.ndarray:
        """A 0/1 row per example, one column per label (the frame holds each example's list of label names)."""
        index = {name: i for i, name in enumerate(self.label_names)}
        rows = frame[self.label_column].tolist()
        targets = np.zeros((len(rows), len(self.label_names)), dtype=np.uint8)
        hits = [(row, index[name]) for row, names in enumerate(rows) for name in names]
        if hits:
            targets[tuple(np.asarray(hits).T)] = 1
        return targets

    def no_labels(self, rows: int) -> np.ndarray:
        return np.zeros((rows, len(self.label_names)), np.uint8)

    def head_config(self):
        return {
            "num_labels": len(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
            "label2id": {name: i for i, name in enumerate(self.label_names)},
            # transformers' pipeline applies a sigmoid per label for this problem type (top_k=None: all labels)
            "problem_type": "multi_label_classification",
        }

    def head_bias(self, features):
        """Each label's log-odds in the training data. With a zero bias every sigmoid starts at 0.5 and the first
        hundreds of steps push all 28 outputs down through the encoder, which then settles on predicting the
        priors for every text (measured on go_emotions: minilm stuck at 'neutral' for 750 steps); starting at
        the priors, the gradients carry only what tells the texts apart (Karpathy's 'init well')."""
        rates = np.asarray(features.labels, dtype=np.float64).mean(0)
        rates = np.clip(rates, 1e-4, 1 - 1e-4)
        return np.log(rates / (1 - rates))

    def settings(self) -> dict:
        return {**super().settings(), "multi_label": True}

    def metric_names(self):
        return ("micro_f1", "macro_f1", "micro_precision", "micro_recall", "subset_accuracy", "hamming_loss")

    def loss_sum(self, logits, labels):
        # The mean over labels, summed over examples: divided by the example count this is BCEWithLogitsLoss's
        # mean over every (example, label) cell, as the Trainer's multi-label head computes it.
        per_cell = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
        return per_cell.mean(1).sum()

    def decide(self, logits):
        return logits.float().sigmoid()

    def probabilities(self, logits):
        return logits.float().sigmoid()

    # -- likely mislabeled examples: per label, a label the model keeps denying (extra) or asserting (missing)
    @property
    def margin_shape(self):
        return (len(self.label_names),)

    def margins(self, logits, labels):
        return logits.float() * (2 * labels.float() - 1)  # each label's logit, signed: positive sides with the data

    def label_issues(self, labels, probabilities):
        from cleanlab.multilabel_classification.filter import find_label_issues

        # Over the labels some examples have and some lack: confident learning needs both sides of each.
        counts = labels.sum(0)
        kept = np.flatnonzero((counts > 0) & (counts < len(labels)))
        if not len(kept):
            return np.zeros(0, dtype=np.int64)
        given = [np.flatnonzero(row).tolist() for row in labels[:, kept]]
        chosen = probabilities[:, kept].astype(np.float64)
        # One process: cleanlab's default forks a worker per core, each with a copy of the probabilities.
        with quiet_cleanlab():
            return np.flatnonzero(find_label_issues(given, chosen, n_jobs=1, verbose=False))

    def suspicion(self, margins):
        return margins.min(1)  # the most contradicted label's

    ranked_by = (
        "how far below other examples' the probability of each label's given side is (a z-score per label, present "
        "and absent apart; the lowest of the set)"
    )

    def ranking(self, labels, margins, probabilities):
        """Raw margins are not comparable across labels and sides: the model denies present labels of a rare,
        ambiguous emotion all the time, and asserts an absent one rarely. So each decision is scored against the
        same decisions of the other examples (label j given, or label j not given): measured on go_emotions with
        one label of 5% of the examples dropped, 19 of the 200 first were dropped labels, against 4 ranked by the
        most contradicted margin (benchmarks/mislabeled.py's data, one run)."""
        given = np.where(labels == 1, probabilities, 1 - probabilities)
        scores = np.zeros_like(given)
        for side in (0, 1):
            mask = labels == side
            count = np.maximum(mask.sum(0), 1)
            mean = np.where(mask, given, 0).sum(0) / count
            spread = np.sqrt(np.where(mask, (given - mean) ** 2, 0).sum(0) / count)
            scores = np.where(mask, (given - mean) / np.maximum(spread, 1e-6), scores)
        return scores.min(1)

    def given_probability(self, labels, probabilities):
        """Of the most doubted decision of the set: each label's probability where given, 1 - it where not."""
        return np.where(labels == 1, probabilities, 1 - probabilities).min(1)

    def reviewed_labels(self, labels):
        return [self._label_set(row) for row in np.asarray(labels, dtype=bool)]

    def suggested_labels(self, labels, margins, probabilities):
        """Every label the model contradicted on average over training flipped (the most contradicted one where
        none went below 0): added where it kept asserting it, removed where it kept denying it."""
        flipped = margins < 0
        none = ~flipped.any(1)
        flipped[np.flatnonzero(none), margins[none].argmin(1)] = True
        return [self._label_set(row) for row in np.asarray(labels, dtype=bool) ^ flipped]

    def filed_under(self, given, suggested):
        return sorted(set(_set_names(given)) ^ set(_set_names(suggested)))  # the labels in doubt

    def relabel_refusal(self, given, wanted):
        known = all(name in self.label_names for name in _set_names(wanted))
        return None if known else f"the labels are {', '.join(self.label_names)}"

    def relabelled(self, frame, reviewed, row, wanted):
        return _set_names(wanted)

    def confusions(self, given, predicted):
        """Per label: one the data has and the model does not (missed), or the model adds (extra)."""
        given_set, predicted_set = set(_set_names(given)), set(_set_names(predicted))
        return [f"{name} missed" for name in sorted(given_set - predicted_set)] + [
            f"{name} extra" for name in sorted(predicted_set - given_set)
        ]

    def reviewed_prediction(self, prediction):
        scores = prediction["scores"]
        return LABEL_SET.join(prediction["labels"]) or NO_LABELS, max(scores.values(), default=0.0)

    def _label_set(self, row: np.ndarray) -> str:
        return LABEL_SET.join(name for name, on in zip(self.label_names, row, strict=True) if on) or NO_LABELS

    # -- thresholds: tuned on validation by `example_metrics` (unless fixed), adopted with the kept weights
    def example_metrics(self, labels, predictions):
        targets = np.asarray(labels).astype(bool)
        probabilities = np.asarray(predictions, dtype=np.float32).reshape(len(targets), -1)
        thresholds = self.thresholds if self.thresholds is not None else self.tune(targets, probabilities)
        result = multi_label_metrics(targets, probabilities >= thresholds, self.label_names)
        for name, threshold in zip(self.label_names, thresholds, strict=True):
            result["per_label"][name]["threshold"] = float(threshold)
        if np.all(thresholds == thresholds[0]):
            result["threshold"] = float(thresholds[0])
        return result

    def probe_model(self):
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        return OneVsRestClassifier(LogisticRegression(max_iter=2000))

    def probe_outputs(self, estimator, embeddings):
        return estimator.predict_proba(embeddings)  # thresholds tuned on them, as the model's probabilities are

    def linear_head(self, estimator, width):
        weight, bias = np.zeros((len(self.label_names), width)), np.zeros(len(self.label_names))
        for label, fitted in enumerate(estimator.estimators_):
            if hasattr(fitted, "coef_"):
                weight[label], bias[label] = fitted.coef_[0], fitted.intercept_[0]
            else:  # a label always or never present in training: scikit-learn predicts it constantly, and so here
                bias[label] = 20.0 if float(np.ravel(fitted.y_)[0]) > 0.5 else -20.0
        return weight, bias

    def tune(self, targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """The threshold with the best micro-F1 (ties: nearest 0.5); per label, each label's best F1 where it has
        MIN_POSITIVES positives. One candidate at a time: memory stays that of the probabilities."""
        hits = np.zeros((len(CANDIDATES), targets.shape[1]), dtype=np.int64)
        predicted = np.zeros_like(hits)
        for k, candidate in enumerate(CANDIDATES):
            above = probabilities >= candidate
            hits[k], predicted[k] = (above & targets).sum(0), above.sum(0)
        true = targets.sum(0)
        micro = 2 * hits.sum(1) / np.maximum(1, predicted.sum(1) + true.sum())
        best = _best(micro)
        thresholds = np.full(targets.shape[1], CANDIDATES[best])
        if self.threshold == "per_label":
            per_label = 2 * hits / np.maximum(1, predicted + true[None])
            chosen = np.array([CANDIDATES[_best(per_label[:, j])] for j in range(targets.shape[1])])
            thresholds = np.where(true >= MIN_POSITIVES, chosen, thresholds)
        return thresholds

    def calibrate(self, result: Scores) -> None:
        self.thresholds = np.array([result.per_label[name].threshold for name in self.label_names])

    def learned_config(self) -> dict:
        if self.thresholds is None:
            return {}
        return {"bertfit_thresholds": {name: float(t) for name, t in zip(self.label_names, self.thresholds)}}

    def restore(self, model_config) -> None:
        saved = getattr(model_config, "bertfit_thresholds", None)
        if saved and not isinstance(self.threshold, (int, float)):
            self.thresholds = np.array([float(saved[name]) for name in self.label_names])

    def decode_scores(self, scores):
        thresholds = self.thresholds if self.thresholds is not None else np.full(len(self.label_names), 0.5)
        return [
            {
                "labels": [name for name, p, t in zip(self.label_names, row, thresholds) if p >= t],
                "scores": {name: float(p) for name, p in zip(self.label_names, row)},
            }
            for row in np.asarray(scores)
        ]

    def does(self, unit: str) -> str:
        return f"gives each {unit} any number of {len(self.label_names)} labels ({', '.join(self.label_names)})"

    def label_profile(self, frame, text_hashes):
        rows = frame[self.label_column].tolist()
        sizes = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        counts = Counter(itertools.chain.from_iterable(rows))
        pairs = Counter(pair for names in rows if len(names) > 1 for pair in itertools.combinations(sorted(names), 2))
        ranked = sorted(((name, counts.get(name, 0)) for name in self.label_names), key=lambda kv: -kv[1])
        return {
            "labels": {name: count for name, count in ranked if count},
            "label_cardinality": float(sizes.mean()) if len(sizes) else 0.0,
            "multi_label_rate": float((sizes > 1).mean()) if len(sizes) else 0.0,
            "no_label_rows": int((sizes == 0).sum()),
            "rare_labels": [name for name, count in ranked if count < RARE_SHARE * len(rows)],
            "top_pairs": [[a, b, n] for (a, b), n in pairs.most_common(5)],
            "imbalance_ratio": float(ranked[0][1] / max(1, ranked[-1][1])) if ranked else 1.0,
        }

    @classmethod
    def compare_to_train(cls, train: SplitProfile, split: SplitProfile) -> dict:
        return labels_not_in_train(train, split)

    @classmethod
    def label_summary(cls, split: SplitProfile) -> list[str]:
        summary = [
            f"labels {counted(split.labels)} (imbalance {split.imbalance_ratio:.2f})",
            f"{split.label_cardinality:.2f} labels per example, {split.multi_label_rate:.1%} with several"
            + (f", {split.no_label_rows:,} with none" if split.no_label_rows else ""),
        ]
        if split.top_pairs:
            summary.append("most frequent together: " + ", ".join(f"{a}+{b} {n:,}" for a, b, n in split.top_pairs))
        return summary

    @classmethod
    def label_problems(cls, split: SplitProfile) -> list[str]:
        problems = []
        if split.rare_labels:
            problems.append(f"rare labels (on under 0.5% of examples): {', '.join(split.rare_labels)}")
        if split.labels_not_in_train:
            problems.append(f"labels not in train: {', '.join(split.labels_not_in_train)}")
        return problems

    @classmethod
    def label_cells(cls, split: SplitProfile) -> tuple[str, str]:
        return counted(split.labels), f"{split.imbalance_ratio:.2f}"

    def result_tables(self, metrics: Scores) -> list[tuple[str, list[str], list[list[str]]]]:
        per_label = metrics.per_label
        if not per_label:
            return []
        rows = [
            [
                name,
                f"{v.threshold:.2f}",
                f"{v.precision:.4f}",
                f"{v.recall:.4f}",
                f"{v.f1:.4f}",
                f"{v.support:,}",
            ]
            for name, v in per_label.items()
        ]
        columns = ["Label", "Threshold", "Precision", "Recall", "F1", "Support"]
        return [("Per label ({split}; thresholds chosen on validation)", columns, rows)]


def _set_names(reviewed: str) -> list[str]:
    return [] if reviewed == NO_LABELS else reviewed.split(LABEL_SET)


def _best(values: np.ndarray) -> int:
    """Index of the largest value; among equals, the candidate nearest 0.5."""
    top = np.flatnonzero(values >= values.max() - 1e-12)
    return int(top[np.argmin(np.abs(CANDIDATES[top] - 0.5))])


def multi_label_metrics(targets: np.ndarray, decided: np.ndarray, names: list[str]) -> dict:
    """Micro and macro F1, micro precision and recall, subset accuracy, Hamming loss and a per-label table, from 0/1
    matrices (examples × labels); a label never predicted (or never present) scores 0, as scikit-learn's
    zero_division=0 does."""
    targets, decided = targets.astype(bool), decided.astype(bool)
    hits, predicted, true = (targets & decided).sum(0), decided.sum(0), targets.sum(0)

    def ratio(numerator, denominator):
        numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
        return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)

    precision, recall = ratio(hits, predicted), ratio(hits, true)
    f1 = ratio(2 * hits, predicted + true)
    micro_precision, micro_recall = float(ratio(hits.sum(), predicted.sum())), float(ratio(hits.sum(), true.sum()))
    return {
        "micro_f1": float(ratio(2 * hits.sum(), predicted.sum() + true.sum())),
        "macro_f1": float(f1.mean()),
        "micro_precision": micro_precision,
        "micro_recall": micro_recall,
        "subset_accuracy": float((targets == decided).all(1).mean()) if len(targets) else 0.0,
        "hamming_loss": float((targets != decided).mean()) if targets.size else 0.0,
        "per_label": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for name, p, r, f, n in zip(names, precision, recall, f1, true, strict=True)
        },
    }


# ---------------------------------------------------------------- reading multi-label data


def _joins_labels(labels: pd.Series, delimiter: str) -> bool:
    """Text labels of which some join several with the delimiter ('sports|politics'); read over distinct values."""
    if not (pd.api.types.is_string_dtype(labels) or labels.dtype == object):
        return False
    try:
        values = pd.unique(labels.dropna())
    except TypeError:  # objects (dicts) as labels: refused, with their row, by the single-label checks
        return False
    return any(isinstance(value, str) and delimiter in value for value in values)


def read_multi_label(found: Found) -> DataSpec:
    """Multi-label data: a list-of-labels column, a delimited text column, or 0/1 `label_columns`; the splits are
    later given one column holding each example's list of label names (`MultiLabelTask.normalise_data`)."""
    splits, train_split, strict, training = found.splits, found.train_split, found.strict, found.training
    given_names, train, file = found.label_names, found.train, found.file
    label_columns = found.label_columns
    if label_columns:
        column, delimiter = next(c for c in ("labels", "bertfit_labels") if c not in train.columns), None
    else:
        column = found.require_label()
        delimiter = None if column in found.list_columns else found.delimiter
    text_columns = found.texts(column, drop=label_columns)
    spec = DataSpec(
        "multi_label",
        text_columns,
        column,
        None,
        tag_id_names=given_names or splits.label_names,
        label_columns=label_columns,
        delimiter=delimiter,
    )
    if label_columns:
        spec.notes.append(f"multi-label: {len(label_columns)} 0/1 label columns ({', '.join(label_columns)})")
    elif delimiter is not None and _joins_labels(train[column], delimiter):
        spec.notes.append(
            f"multi-label: labels such as 'a{delimiter}b' in '{column}' are read as several labels "
            "(set label_delimiter to change the separator, or --task classification to keep them whole)"
        )
    sets = _label_sets(splits, spec)
    found = {split: {name for row in rows for name in row} for split, rows in sets.items()}
    names = label_columns or given_names or splits.label_names
    if names is not None:
        source = "--label-names" if given_names and training else "the model's labels" if given_names else "its names"
        for split, present in found.items():
            unknown = sorted(present - set(names))
            if unknown:
                raise BertfitError(
                    f"'{splits.files.get(split, split)}' has labels {unknown[:6]} not in {source} "
                    f"({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"
                )
    else:  # the labels found in training (for a profile, in any split), ids in number order
        present = found[train_split] if strict else set().union(*found.values())
        names = sorted(present, key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name))
    if training and strict:
        if len(found[train_split]) < 2:
            raise BertfitError(
                f"'{file}' has {len(found[train_split])} distinct label(s); multi-label classification needs "
                "two or more"
            )
        for split, present in found.items():
            unseen = sorted(present - found[train_split])
            if unseen:
                raise BertfitError(
                    f"'{splits.files.get(split, split)}' has labels never seen in training: {', '.join(unseen[:6])}; "
                    "the model cannot predict them"
                )
    spec.label_names = list(names)
    check_rows(splits, spec, train_split, strict, training)
    return spec


def _label_sets(splits: Splits, spec: DataSpec) -> dict[str, list[list[str]]]:
    """Per split, each example's labels as names (integer ids named by the given names, else by their number);
    every malformed value named by file and row."""
    id_names = spec.tag_id_names
    sets = {}
    for split, frame in splits.frames.items():
        file = splits.files.get(split, split)
        if spec.label_columns:
            sets[split] = _column_sets(frame, spec.label_columns, file)
        elif spec.label_column in frame.columns:
            sets[split] = [
                _one_set(value, spec.delimiter, id_names, file, row)
                for row, value in enumerate(frame[spec.label_column].tolist(), start=1)
            ]
    return sets


def _one_set(value, delimiter: str | None, id_names: list[str] | None, file: str, row: int) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    elif delimiter is not None and (value is None or value is pd.NA or isinstance(value, (str, float, int))):
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
            return []  # an empty cell: an example with none of the labels
        items = str(value).split(delimiter) if isinstance(value, str) else [value]
    else:
        raise BertfitError(
            f"'{file}' row {row}: labels are {str(value)[:60]!r}, not a list; give each example a list of labels "
            f'(e.g. ["sports", "politics"]), or text such as \'sports|politics\''
        )
    names = []
    for item in items:
        if isinstance(item, str):
            if item.strip():
                names.append(item.strip())
        elif is_number(item) and float(item) == int(float(item)):
            index = int(float(item))
            if id_names and not 0 <= index < len(id_names):
                raise BertfitError(
                    f"'{file}' row {row}: label id {index} has no name: the {len(id_names)} label names take ids "
                    f"0..{len(id_names) - 1}"
                )
            names.append(id_names[index] if id_names else str(index))
        else:
            raise BertfitError(f"'{file}' row {row}: label {item!r} is neither a name nor a label id")
    return list(dict.fromkeys(names))  # a label given twice is still one label


def _column_sets(frame: pd.DataFrame, columns: list[str], file: str) -> list[list[str]]:
    """Labels from 0/1 columns; anything but 0/1 (or true/false) is named by row and column."""
    flags = {}
    for column in columns:
        if column not in frame.columns:
            raise BertfitError(f"label column '{column}' is missing from '{file}'")
        values = frame[column]
        as_numbers = pd.to_numeric(
            values.map({True: 1, False: 0, "true": 1, "false": 0}).fillna(values), errors="coerce"
        )
        bad = np.flatnonzero(~as_numbers.isin([0, 1]).to_numpy())
        if len(bad):
            raise BertfitError(
                f"'{file}' row {bad[0] + 1}: label column '{column}' holds {values.iloc[bad[0]]!r}; "
                "label columns hold 0 or 1 (is the example of that label?)"
            )
        flags[column] = as_numbers.to_numpy(dtype=np.int8)
    matrix = np.stack([flags[c] for c in columns], axis=1) if len(frame) else np.zeros((0, len(columns)), np.int8)
    return [[columns[j] for j in np.flatnonzero(row)] for row in matrix]
