"""The interface each task kind fills in, and what every kind shares: encoding into features (`features.py`, cached
on disk), batching, the data profile's hooks and the rendering hooks. Nothing outside `bertfit.tasks` asks which
kind of task it holds: it asks the task."""

from __future__ import annotations

import contextlib
import shutil
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bertfit.data.schema import DataSpec, Found, single_label
from bertfit.data.sources import Splits
from bertfit.errors import BertfitError
from bertfit.runfiles import Scores, SplitProfile, Suspect
from bertfit.tasks.features import (
    CACHE_FORMAT,
    Features,
    FeatureWriter,
    cache_dir,
    cache_key,
    frame_fingerprint,
    progress_bar,
    tokenizer_fingerprint,
)

LOWER_IS_BETTER = {"loss", "mse", "hamming_loss"}
# Rows tokenized at a time: large enough for the fast tokenizer's threads, small enough to bound its lists.
ENCODE_CHUNK = 50_000
# Tokens per filler example in a lengthened packed stream: FlexAttention's block, so each is one block of work.
FILLER_CHUNK = 128


@dataclass(frozen=True)
class UnitSums:
    """What training added up for each tracked unit (engine/margins.py), as means over the times it was seen."""

    labels: np.ndarray  # the given label(s)
    margins: np.ndarray  # the area under the margin
    probabilities: np.ndarray  # the mean predicted probabilities
    seen: np.ndarray  # how many times it was trained on
    rank: np.ndarray  # `ranking`: the likeliest to be mislabeled lowest


@dataclass(frozen=True)
class TaskSettings:
    """What a task is built from: the recipe's fields of the same names (`of`), once resolved."""

    text_columns: list[str]
    label_column: str
    label_names: list[str] | None
    max_length: int
    truncation: str = "head"
    extra_metrics: tuple[str, ...] = ()  # the recipe's `metrics` (matthews)
    stride: int = 32
    label_all_subtokens: bool = False
    class_weights: str | list[float] | None = None
    threshold: str | float = "tuned"
    window_pooling: str = "mean"

    @classmethod
    def of(cls, cfg) -> TaskSettings:
        recipe_name = {"extra_metrics": "metrics"}  # a task's `metrics` is the method that computes them
        return cls(**{f.name: getattr(cfg, recipe_name.get(f.name, f.name)) for f in fields(cls)})


class Task(ABC):
    """Shared machinery; subclasses say how to encode, score and measure. A kind must fill in the abstract methods
    (its head, encoding, loss, outputs, metrics, predict's frame and records, profile); the rest are hooks with
    defaults: `correct` with `tracks_accuracy`, `margins` with `finds_mislabeled`, and the rendering hooks."""

    kind: str  # the recipe's name for it
    data_kind: str  # the data it reads (`read_data`): its own kind, or the one it builds on
    primary_metric: str
    pipeline_tag: str  # the Hub's task type, for the model card
    auto_model: str  # the transformers Auto class that builds the model with this task's head
    peft_task_type: str  # peft's name for the task (LoRA)
    loss_unit: str  # what the loss is averaged over
    tracks_accuracy = False  # whether training accuracy can be counted from the logits
    finds_mislabeled = False  # whether a training example's margin (given label vs the rest) is defined
    stratifies = False  # whether a carved validation split keeps the label's class shares
    weighs_classes = False  # whether the loss takes class weights
    decides_by_threshold = False  # whether predictions are probabilities cut at a threshold (multi-label)
    labels_tokens = False  # whether the head predicts every token (else one output per example, from [CLS])
    few_shot = False  # whether `method: setfit` trains it: pairs of examples alike or not, then `probe_model`

    def __init__(self, *args, **kwargs):
        """From one `TaskSettings` (or the arguments that make one)."""
        settings = args[0] if len(args) == 1 and isinstance(args[0], TaskSettings) else TaskSettings(*args, **kwargs)
        if settings.class_weights is not None and not self.weighs_classes:
            raise BertfitError(
                f"class_weights apply to classification; this is a {self.kind} task: remove class_weights"
            )
        if settings.threshold != "tuned" and not self.decides_by_threshold:
            raise BertfitError(f"threshold applies to multi-label tasks; this is a {self.kind} task: remove threshold")
        for name, value in asdict(settings).items():
            setattr(self, name, value)

    # -- reading data: a kind whose data has a shape of its own (lists of tags, sets of labels) says whether data is
    # of that shape, reads it and puts it in the form it encodes; the others read one label per example.
    @classmethod
    def claims(cls, found: Found) -> bool:
        """Whether data of unnamed kind (task: auto) is of this kind's own shape."""
        return False

    @classmethod
    def read_data(cls, found: Found) -> DataSpec:
        """The task, columns and labels of the data, every row checked."""
        return single_label(found, cls.data_kind)

    @classmethod
    def normalise_data(cls, splits: Splits, spec: DataSpec) -> Splits:
        """The splits in the form the kind encodes (a new object; the given one is left as it is)."""
        return splits

    # -- the frozen-probe baseline: a linear model on the pretrained encoder's pooled embeddings (engine/probe.py)
    def probe_model(self):
        """A scikit-learn estimator fitted on embeddings and this kind's labels, or None: no probe for this kind."""
        return None

    def probe_outputs(self, estimator, embeddings: np.ndarray) -> np.ndarray:
        """What `example_metrics` scores, from the fitted estimator."""
        return estimator.predict(embeddings)

    def linear_head(self, estimator, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The fitted `probe_model` as the weight and bias of a linear layer whose logits this kind decodes as it
        decodes its model's (a few-shot kind's hook: `method: setfit` keeps its head so)."""
        raise NotImplementedError(f"{self.kind} has no linear head")

    @property
    def reads_windows(self) -> bool:
        """Whether a text longer than max_length is read whole, as windows `stride` tokens apart."""
        return self.truncation == "windows"

    # -- the model
    @abstractmethod
    def head_config(self) -> dict:
        """from_pretrained keyword arguments that give the model this task's head (labels, problem type)."""
        ...

    def head_bias(self, features: Features) -> np.ndarray | None:
        """A starting bias for the output layer, learnt from the training labels, where the task wants one."""
        return None

    def chance_loss(self) -> float | None:
        """The loss of a model that has learnt nothing (uniform over the classes), where one is defined."""
        return None

    @abstractmethod
    def does(self, unit: str) -> str:
        """What the trained model does to each text (or text pair), in words, for the model card."""
        ...

    # -- decisions learnt on validation besides the weights (multi-label thresholds), saved in the model's config
    def calibrate(self, result: Scores) -> None:  # noqa: B027 (a hook: most kinds decide nothing on validation)
        """Adopt what the validation result of the kept weights decided."""

    def learned_config(self) -> dict:
        """Attributes for the saved model's config.json."""
        return {}

    def restore(self, model_config) -> None:  # noqa: B027 (a hook, as calibrate)
        """Read back what `learned_config` saved."""

    # -- features
    @abstractmethod
    def encode_rows(self, frame: pd.DataFrame, tokenizer) -> Features:
        """The features of a slice of a split, with example ids counted from the slice's first row."""
        ...

    def encode_chunks(self, frame: pd.DataFrame, tokenizer, progress: Callable[[int], None] | None = None):
        """Features of ENCODE_CHUNK rows at a time, so that the tokenizer's Python lists never hold more than a
        chunk of the data; `progress` is told how many rows each chunk held."""
        for at in range(0, max(1, len(frame)), ENCODE_CHUNK):
            chunk = frame.iloc[at : at + ENCODE_CHUNK]
            part = self.encode_rows(chunk, tokenizer)
            part.example_ids = part.example_ids + at
            yield part
            if progress is not None:
                progress(len(chunk))

    def encode(self, frame: pd.DataFrame, tokenizer) -> Features:
        return Features.concat(list(self.encode_chunks(frame, tokenizer)))

    def encode_cached(self, frame: pd.DataFrame, tokenizer, show_progress: bool = False) -> Features:
        """Tokenize once per (data, tokenizer, settings): reruns and resumes read the cached features, which are
        written chunk by chunk as they are encoded and then memory-mapped. `show_progress`: a progress bar on a
        terminal when the split is large."""
        columns = self.text_columns + ([self.label_column] if self.label_column in frame.columns else [])
        key = cache_key(
            CACHE_FORMAT,
            type(self).__name__,
            self.settings(),
            tokenizer_fingerprint(tokenizer),
            frame_fingerprint(frame, columns),
        )
        features = self._encode_into(cache_dir() / key, frame, tokenizer, show_progress)
        features.fingerprint = key
        return features

    def _encode_into(self, path: Path, frame: pd.DataFrame, tokenizer, show_progress: bool) -> Features:
        if path.is_dir():
            try:
                return Features.load(path)
            except (OSError, ValueError, KeyError):
                shutil.rmtree(path, ignore_errors=True)  # a damaged cache entry is rebuilt, never trusted
        try:
            writer = FeatureWriter(path)
        except OSError:  # a read-only cache only costs the next run a re-tokenization
            return self.encode(frame, tokenizer)
        try:
            with progress_bar(f"tokenizing {len(frame):,} rows", len(frame), show_progress) as advance:
                for part in self.encode_chunks(frame, tokenizer, advance):
                    writer.add(part)
            writer.close()
            return Features.load(path)
        except OSError:  # a full disk: nothing half-written stays behind, and the run goes on from memory
            writer.discard()
            return self.encode(frame, tokenizer)
        except BaseException:
            writer.discard()
            raise

    def windows(self, n_tokens: int) -> list[tuple[int, int]]:
        """Spans of at most max_length - 2 tokens (room for the special tokens), overlapping by `stride`, that
        cover `n_tokens`: how a long sentence (token task) or document (truncation: windows) is read whole."""
        body = self.max_length - 2
        if n_tokens <= body:
            return [(0, n_tokens)]
        step = max(1, body - self.stride)
        spans, start = [], 0
        while True:
            spans.append((start, min(start + body, n_tokens)))
            if start + body >= n_tokens:
                return spans
            start += step

    def settings(self) -> dict:
        return {
            "max_length": self.max_length,
            "truncation": self.truncation,
            "labels": self.label_names,
            "columns": self.text_columns,
        }

    def collate(
        self, features: Features, indices: np.ndarray, pad_id: int, pad_to: Callable[[int], int] = int
    ) -> dict[str, torch.Tensor]:
        """Pad a batch to `pad_to` of its longest member (itself, a multiple, a grid length or a fixed length)."""
        lengths = features.lengths[indices]
        width = pad_to(int(lengths.max()))
        input_ids = np.full((len(indices), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(indices), width), dtype=np.int64)
        types = np.zeros((len(indices), width), dtype=np.int64) if features.token_type_ids is not None else None
        for row, index in enumerate(indices):
            n = lengths[row]
            input_ids[row, :n] = features.input_ids[index]
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = features.token_type_ids[index]
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        if types is not None:
            batch["token_type_ids"] = torch.from_numpy(types)
        batch["labels"] = self.collate_labels(features, indices, width)
        return batch

    def collate_labels(self, features: Features, indices: np.ndarray, width: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(features.labels[indices]))

    def collate_packed(
        self, features: Features, indices: np.ndarray, pad_id: int = 0, pad_to: Callable[[int], int] = int
    ) -> dict[str, torch.Tensor]:
        """A batch as one token stream with no padding (padding: packed): the examples end to end in a row of
        one, each token's position within its example and the example it belongs to (attention stays inside
        an example), and where each example starts (its [CLS] token). `pad_to` may lengthen the stream (to one
        of a few lengths, so compiled graphs are reused): the filler is more examples, of pad tokens, that no
        head reads and no loss counts."""
        lengths = features.lengths[indices].astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        tokens = int(lengths.sum())
        filler = pad_to(tokens) - tokens
        # The filler is cut into examples of FILLER_CHUNK tokens: one long one would attend across its whole length.
        fillers = len(indices) + np.arange(filler) // FILLER_CHUNK
        segments = np.concatenate([np.repeat(np.arange(len(indices)), lengths), fillers])
        positions = np.concatenate([np.arange(tokens) - np.repeat(starts, lengths), np.zeros(filler, np.int64)])
        ids = [features.input_ids[i] for i in indices] + [np.full(filler, pad_id)]
        batch = {
            "input_ids": torch.from_numpy(np.concatenate(ids).astype(np.int64)),
            "position_ids": torch.from_numpy(positions),
            "segments": torch.from_numpy(segments),
            "starts": torch.from_numpy(starts),
        }
        if features.token_type_ids is not None:
            types = [features.token_type_ids[i] for i in indices] + [np.zeros(filler)]
            batch["token_type_ids"] = torch.from_numpy(np.concatenate(types).astype(np.int64))
        batch = {k: v[None] if k != "starts" else v for k, v in batch.items()}
        batch["labels"] = self.collate_packed_labels(features, indices, filler)
        return batch

    def collate_packed_labels(self, features: Features, indices: np.ndarray, filler: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(features.labels[indices]))

    @abstractmethod
    def metric_names(self) -> tuple[str, ...]:
        """The scalar metrics `metrics()` reports, besides the loss."""
        ...

    # -- training
    @abstractmethod
    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    # -- likely mislabeled examples and their review (tasks with `finds_mislabeled`). The sums are kept per tracked
    # unit: a training feature's `items` of them (one per example, or one per labelled token), in the order its
    # labels have in a batch.
    margin_shape: tuple[int, ...] = ()  # a margin per unit; a multi-label task keeps one per label

    def tracked(self, logits: torch.Tensor, labels: torch.Tensor, units: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's logits and labels, one row per tracked unit in batch order (`units` of them)."""
        return logits, labels

    def tracked_labels(self, features: Features) -> np.ndarray:
        """The given label of every tracked unit of the training features, in feature order."""
        return np.asarray(features.labels)

    def suspects(self, frame: pd.DataFrame, features: Features, sums: UnitSums, flagged: np.ndarray) -> list[Suspect]:
        """The examples to review, the likeliest to be mislabeled first, from the units cleanlab flagged. Here each
        unit is an example, the frame's row of the same number."""
        order = flagged[np.argsort(sums.rank[flagged], kind="stable")]
        given = self.reviewed_labels(sums.labels[order])  # the flagged rows only, not every training example
        suggested = self.suggested_labels(sums.labels[order], sums.margins[order], sums.probabilities[order])
        believed = self.given_probability(sums.labels[order], sums.probabilities[order])
        suspicion = self.suspicion(sums.margins[order])
        texts = self.profile_texts(frame.iloc[order])
        return [
            Suspect(
                row=int(row),
                text=str(text),
                label=label,
                suspected=other,
                margin=round(float(margin), 4),
                probability=round(float(probability), 4),
                seen=int(sums.seen[row]),
            )
            for row, text, label, other, margin, probability in zip(
                order, texts, given, suggested, suspicion, believed, strict=True
            )
        ]

    @classmethod
    def shown_review(cls, text: str, label: str, other: str, words: list[str] | None = None) -> tuple[str, str, str]:
        """An example under review (a suspect and its suggestion, or a validation error and its prediction) as the
        card, the doctor and the review page show it: its text, its given label and the other label."""
        return text, label, other

    def review_words(self, frame: pd.DataFrame) -> list[list[str]] | None:
        """Per example, the words its label names one by one (a token task's), or None: labels name examples."""
        return None

    def confusions(self, given: str, predicted: str) -> list[str]:
        """What a validation example's prediction gets wrong, as the review page groups its errors: none where it
        is right (as the metrics count it)."""
        return [f"{given} → {predicted}"] if predicted != given else []

    def margins(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per example (of shape `margin_shape`): how far the logits side with the given label, negative where
        they contradict it."""
        raise NotImplementedError

    def label_issues(self, labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """The positions of the examples cleanlab's confident learning finds mislabeled, from each example's mean
        predicted probabilities over training."""
        raise NotImplementedError

    def suspicion(self, margins: np.ndarray) -> np.ndarray:
        """One number per example from its mean margins, the most suspect lowest: the margin a review shows."""
        return margins

    # How `ranking` orders the flagged examples, in the words of the run's summary and card.
    ranked_by = (
        "the area under the margin (Pleiss et al. 2020: the mean of how far the logits side with the given label)"
    )

    def ranking(self, labels: np.ndarray, margins: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """One number per trained example (its given labels, mean margins and mean probabilities over training),
        the likeliest to be mislabeled lowest: the order of the list."""
        return self.suspicion(margins)

    def given_probability(self, labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """Per example, the mean probability the model gave its given label over training."""
        raise NotImplementedError

    def reviewed_labels(self, labels: np.ndarray) -> list[str]:
        """Each example's label as a review shows it, records it and checks it against the data."""
        raise NotImplementedError

    def suggested_labels(self, labels: np.ndarray, margins: np.ndarray, probabilities: np.ndarray) -> list[str]:
        """The label a review suggests for each (suspected) example, in `reviewed_labels`' form."""
        raise NotImplementedError

    def filed_under(self, given: str, suggested: str) -> list[str]:
        """The classes a review's filter lists a suspect under."""
        raise NotImplementedError

    def relabel_refusal(self, given: str, wanted: str) -> str | None:
        """Why an example labelled `given` cannot be relabelled `wanted` (both in `reviewed_labels`' form): a
        label the task does not know, or tags that do not fit the sentence; None when it can."""
        raise NotImplementedError

    def relabelled(self, frame: pd.DataFrame, reviewed: list[str], row: int, wanted: str):
        """The label column's value for `row` relabelled `wanted` (a reviewed label), in the column's own form; a
        label the task does not know raises ValueError."""
        raise NotImplementedError

    def reviewed_predictions(self, features: Features, frame: pd.DataFrame, scores) -> list[tuple[str, float]]:
        """Each example of `frame` (encoded as `features`, scored by `scores`) predicted as a review compares it
        with its given label, and how sure the model is of it."""
        raise NotImplementedError

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Correct predictions in a training batch (for tasks that track accuracy)."""
        raise NotImplementedError

    # -- evaluation: outputs are reduced to small host arrays batch by batch, never stored as logits
    @abstractmethod
    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """What the metrics are computed from (class ids, scores, tag ids), per row of the batch."""
        ...

    @abstractmethod
    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """What `predict` reports from (probabilities, or the regression output), per row of the batch."""
        ...

    def feature_output(self, row: np.ndarray, length: int) -> np.ndarray:
        """One feature's output from its padded batch row."""
        return row

    def stack(self, outputs: list[np.ndarray]):
        """All features' outputs, in feature order, in the form `metrics` and `decode` read."""
        return np.asarray(outputs)

    @abstractmethod
    def metrics(self, features: Features, frame: pd.DataFrame, predictions) -> dict: ...

    # -- predict: user texts in, one record per text out
    @abstractmethod
    def prediction_frame(self, rows: list[list[str]]) -> tuple[pd.DataFrame, object]:
        """A frame to encode from the user's texts (one list of texts per example), and what `decode` needs
        besides the scores."""
        ...

    @abstractmethod
    def decode(self, features: Features, context, scores) -> list[dict]: ...

    # -- the data profile
    @abstractmethod
    def profile_texts(self, frame: pd.DataFrame) -> pd.Series:
        """One string per example, as duplicates and leakage are judged."""
        ...

    @abstractmethod
    def label_profile(self, frame: pd.DataFrame, text_hashes: np.ndarray) -> dict:
        """Label statistics of one split: counts and balance, tag counts, or the score distribution."""
        ...

    @classmethod
    def compare_to_train(cls, train: SplitProfile, split: SplitProfile) -> dict:
        """What a split's label profile says beside the training split's (labels never seen in training)."""
        return {}

    # -- rendering: each kind says how its own results read, so that engine, report and cli never ask which kind
    # a run is. Classmethods where they read saved files alone (the profile, the metrics), without a recipe.
    @classmethod
    def label_summary(cls, split: SplitProfile) -> list[str]:
        """What a split's labels are, for its line in the data profile (log, card)."""
        return []

    @classmethod
    def label_problems(cls, split: SplitProfile) -> list[str]:
        """What is wrong with a split's labels: in its profile line, and a line each beside `inspect`'s table."""
        return []

    @classmethod
    def profile_parts(cls, split: SplitProfile) -> list[str]:
        return cls.label_summary(split) + cls.label_problems(split)

    @classmethod
    def profile_notes(cls, name: str, split: SplitProfile) -> list[str]:
        return [f"{name}: {problem}" for problem in cls.label_problems(split)]

    @classmethod
    def label_cells(cls, split: SplitProfile) -> tuple[str, str]:
        """`bertfit inspect`'s table: the labels (or tags, or score statistics) and the imbalance of a split."""
        return "", ""

    def result_tables(self, metrics: Scores) -> list[tuple[str, list[str], list[list[str]]]]:
        """The model card's tables of this kind's detailed results: (title, columns, rows) each; `{split}` in a
        title names the split the results are of."""
        return []

    def prediction_record(self, row: list[str], prediction: dict) -> dict:
        """One line of `bertfit predict --output`: the text (or pair) and what the model said of it."""
        return {"text": row if len(row) > 1 else row[0], **prediction}


def counted(values: dict) -> str:
    """Label counts as the profile shows them: `positive 444, negative 428`; statistics with two decimals."""
    return ", ".join(
        f"{k} {v:,}" if isinstance(v, int) else f"{k} –" if v is None or v != v else f"{k} {v:.2f}"  # v != v: NaN
        for k, v in values.items()
    )


def labels_not_in_train(train: SplitProfile, split: SplitProfile) -> dict:
    unseen = sorted(set(split.labels or {}) - set(train.labels or {}))
    return {"labels_not_in_train": unseen} if train.labels else {}


def single_label_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: the logit of its given class minus the largest other."""
    logits = logits.float()
    given = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return given - others


def single_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The rows cleanlab's confident learning finds mislabeled, from their class ids and mean probabilities."""
    from cleanlab.filter import find_label_issues

    # Over the classes the rows have: a class no training row has leaves its threshold undefined.
    present, dense = np.unique(labels, return_inverse=True)
    if len(present) < 2:  # one class: nothing to confuse it with
        return np.zeros(0, dtype=np.int64)
    kept = probabilities[:, present].astype(np.float64)
    kept /= np.maximum(kept.sum(1, keepdims=True), 1e-12)
    # One process: cleanlab's default forks a worker per core, each with a copy of the probabilities.
    with quiet_cleanlab():
        found = find_label_issues(dense, kept, filter_by="prune_by_noise_rate", n_jobs=1, verbose=False)
    return np.flatnonzero(found)


@contextlib.contextmanager
def quiet_cleanlab():
    """cleanlab warns that it "may not flag all label issues" of a class with few examples (a rare tag, a rare
    emotion): a library's note, not a mistake of the user's, that would otherwise end every such run's output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="May not flag all label issues", category=UserWarning)
        yield
