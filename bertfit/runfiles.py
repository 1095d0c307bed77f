"""A run's files, one typed schema each: metrics.json, the events of log.jsonl, data_profile.json, diagnosis.json
and mislabeled.jsonl. The engine and the tasks write them through these models and the reports read them through
these models, so a renamed key fails where it is written (the models forbid keys they do not declare) and where
it is read (an attribute, not a string with a default), never silently turning a diagnosis off.

Versioned: the files carry `format` (metrics.json, data_profile.json, diagnosis.json, the log's start event).
Files without it are format 1, written by bertfit before this module: the same keys (diagnosis.json then a bare
list), read as they are. A newer format is refused in one line that names it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from bertfit.config import Config, build_config
from bertfit.errors import BertfitError, first_line
from bertfit.files import to_json

FORMAT = 2


class Record(BaseModel):
    """Every key declared: a key a writer misspells, or an older or newer bertfit wrote, is an error, not data."""

    model_config = ConfigDict(extra="forbid")

    def dump(self) -> dict:
        """As written: the fields the writer set (an absent optional key stays absent, as in format 1)."""
        return self.model_dump(exclude_unset=True)


class Versioned(Record):
    format: int = FORMAT

    def dump(self) -> dict:
        return {"format": self.format, **super().dump()}


# ---------------------------------------------------------------- metrics.json and the evaluations in log.jsonl


class PartScores(Record):
    """One entity type (token tasks) or one label (multi-label) of a split."""

    precision: float
    recall: float
    f1: float
    support: int
    threshold: float | None = None  # multi-label: the probability above which the label is given


class Scores(Record):
    """One evaluation of one split: the loss, the task's metrics by name (`Task.metric_names`; any number, or
    None where undefined), the time it took, and the details a task kind reports."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float | None] = Field(init=False)

    loss: float | None = None
    runtime: float | None = None
    samples_per_second: float | None = None
    confusion_matrix: list[list[int]] | None = None  # single-label classification: rows true, columns predicted
    per_type: dict[str, PartScores] | None = None  # token classification: seqeval's scores per entity type
    per_label: dict[str, PartScores] | None = None  # multi-label: per label, with the threshold chosen for it

    def metric(self, name: str) -> float | None:
        return self.loss if name == "loss" else self.named().get(name)

    def scalars(self) -> dict[str, float | None]:
        """The loss and the task's metrics: what a summary line shows."""
        return {"loss": self.loss, **self.named()}

    def named(self) -> dict[str, float | None]:
        """The task's metrics, by name, in the order the task wrote them (no loss, timings or details)."""
        return dict(self.__pydantic_extra__ or {})


class TrainSummary(Record):
    train_seconds: float | None = None
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    padding_ratio: float | None = None
    steps: int | None = None
    load_seconds: float | None = None
    tokenize_seconds: float | None = None
    profile_seconds: float | None = None
    head_seconds: float | None = None  # method setfit: embedding the training examples and fitting the head
    mfu: float | None = None  # model FLOP utilisation, where the device's peak is known (GPUs)
    peak_flops: float | None = None


class Suspect(Record):
    """A training example whose given label the model kept contradicting (a line of mislabeled.jsonl)."""

    row: int
    text: str
    label: str
    suspected: str
    margin: float  # the area under the margin: the mean of its given label's logit minus the largest other
    probability: float | None = None  # the mean probability the model gave its given label over training
    seen: int
    words: list[str] | None = None  # a token task's: the sentence's words, one per tag of `label` and `suspected`


class MislabeledSummary(Record):
    method: str
    examined: int
    flagged: int
    lowest: list[Suspect]


class ProbeResult(Record):
    """The frozen-probe baseline: a linear model on the pretrained encoder's pooled embeddings (engine/probe.py)."""

    metrics: Scores  # on validation
    train_rows: int
    validation_rows: int
    pooling: str  # "mean" (sentence-transformers models) or "cls"
    normalized: bool = False  # each embedding scaled to unit length (the model ends in a Normalize module)
    estimator: str  # scikit-learn's class name
    fit_seconds: float  # embedding both splits and fitting


class RunMetrics(Versioned):
    """metrics.json. Every section is optional to the reader: the doctor also reads a run that never finished."""

    kept_step: int | None = None
    best_step: int | None = None
    best_metric: float | None = None
    metric_for_best: str | None = None
    stop_reason: str | None = None
    final: Scores | None = None
    validation: Scores | None = None
    test: Scores | None = None
    train: TrainSummary = TrainSummary()
    mislabeled: MislabeledSummary | None = None
    probe: ProbeResult | None = None


# ---------------------------------------------------------------- log.jsonl


class Event(Record):
    event: str
    time: float | None = None

    def dump(self) -> dict:
        """The kind first and the time last, as a reader scans a line."""
        return {
            "event": self.event,
            **self.model_dump(exclude_unset=True, exclude={"event", "time"}),
            "time": self.time,
        }


class Corrections(Record):
    """The review decisions a run trained with (`--corrections`), and the run they were made on."""

    source: str  # the decisions file
    relabelled: int  # training labels corrected
    dropped: int  # training examples dropped
    reviewed: int  # training examples with a decision standing
    validation_relabelled: int = 0
    validation_dropped: int = 0
    parent: str | None = None  # the reviewed run (the folder of RUN/review/decisions.jsonl), where it is one
    parent_scores: Scores | None = None  # its kept model's validation scores, read when this run started

    def note(self) -> str:
        said = (
            f"{self.relabelled:,} training labels corrected and {self.dropped:,} examples dropped, of "
            f"{self.reviewed:,} reviewed"
        )
        if self.validation_relabelled or self.validation_dropped:
            said += (
                f"; {self.validation_relabelled:,} validation labels corrected and {self.validation_dropped:,} "
                "examples dropped"
            )
        return f"corrections from {self.source}: {said}"


class Start(Event):
    event: Literal["start"] = "start"
    format: int = 1  # the run files' format, absent before format 2
    parameters: int
    trainable_parameters: int | None = None
    profile: list[str] = []
    task: str
    dataset: str
    model: str
    examples: dict[str, int]
    features: dict[str, int]
    steps: int
    steps_per_epoch: int
    method: str = "finetune"  # absent before methods: fine-tuning
    pairs: int | None = None  # method setfit: the example pairs trained on (a step takes 16)
    effective_batch_size: int
    world_size: int
    device: str
    hardware: str
    precision: str
    notes: list[str] = []
    tag_scheme: str | None = None
    repaired_tags: int = 0
    corrections: Corrections | None = None
    load_seconds: float | None = None
    tokenize_seconds: float | None = None
    profile_seconds: float | None = None


class Train(Event):
    event: Literal["train"] = "train"
    step: int
    epoch: float
    lr: float
    loss: float | None  # None: non-finite
    grad_norm: float | None = None
    train_seconds: float
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    padding_ratio: float | None = None


class Eval(Event):
    event: Literal["eval"] = "eval"
    step: int
    epoch: float
    train_loss: float | None = None
    train_accuracy: float | None = None  # tasks that track accuracy, when the window saw examples
    metrics: Scores
    best_step: int | None = None


class BadStep(Event):
    event: Literal["bad_step"] = "bad_step"
    step: int
    grad_norm: str  # 'nan' or 'inf', as text (JSON has neither)


class Diverged(Event):
    event: Literal["diverged"] = "diverged"
    step: int
    bad_steps: int


class Probe(ProbeResult, Event):
    event: Literal["probe"] = "probe"


class End(TrainSummary, Event):
    event: Literal["end"] = "end"
    kept_step: int | None = None
    best_step: int | None = None
    stop_reason: str | None = None


AnyEvent = Annotated[Start | Probe | Train | Eval | BadStep | Diverged | End, Field(discriminator="event")]
_EVENT = TypeAdapter(AnyEvent)


def event_line(event: Event) -> str:
    return to_json(event.dump())


def parse_event(record: dict) -> Event:
    return _EVENT.validate_python(record)


class Events(list):
    """The log's events, with the views the reports use."""

    def of(self, kind: type[Event]) -> list:
        return [e for e in self if isinstance(e, kind)]

    @property
    def start(self) -> Start | None:
        return next(iter(self.of(Start)), None)

    @property
    def evals(self) -> list[Eval]:
        return self.of(Eval)

    def last_step(self) -> int:
        return max((e.step for e in self if isinstance(e, (Train, Eval))), default=0)


# ---------------------------------------------------------------- data_profile.json


class Histogram(Record):
    counts: list[int]
    edges: list[float]


class Tokens(Record):
    """Token counts of a split's examples before truncation (from a sample of `sampled` rows on large splits)."""

    percentiles: dict[str, int]
    mean: float
    max: int
    max_length: int
    truncated: int
    truncated_share: float
    histogram: Histogram
    sampled: int | None = None
    windowed: int | None = None  # long examples read whole as windows (truncation: windows), not cut


class LabelStats(Record):
    mean: float
    std: float | None  # None with one row
    min: float
    max: float


class SplitProfile(Record):
    """One split. The label fields are those each kind's `label_profile` and `compare_to_train` write (a new kind
    with labels of another shape declares its fields here)."""

    rows: int | None = None
    empty_texts: int = 0
    duplicates: int = 0
    normalised_duplicates: int = 0
    labelled: bool = True
    tokens: Tokens | None = None
    # classification and multi-label: counts per label, the largest class's share and largest over smallest
    labels: dict[str, int] | None = None
    majority_rate: float | None = None
    imbalance_ratio: float | None = None
    rare_classes: dict[str, int] | None = None  # classification: classes under RARE_CLASS examples
    conflicting_pairs: int | None = None  # text pairs: identical pairs with different labels
    labels_not_in_train: list[str] | None = None
    # multi-label
    label_cardinality: float | None = None
    multi_label_rate: float | None = None
    no_label_rows: int | None = None
    rare_labels: list[str] | None = None
    top_pairs: list[tuple[str, str, int]] | None = None
    # regression
    label_stats: LabelStats | None = None
    # token classification
    tags: dict[str, int] | None = None
    entity_counts: dict[str, int] | None = None
    words: int | None = None


class Leak(Record):
    """A split's texts also in train: exactly, after normalising, and of those, texts of SUBSTANTIVE_WORDS+."""

    exact: int
    normalised: int
    share: float
    substantive: int
    substantive_share: float


class DataProfile(Versioned):
    task: str
    splits: dict[str, SplitProfile]
    leakage: dict[str, Leak] = {}
    tag_scheme: str | None = None
    repaired_tags: int | None = None

    def split(self, name: str) -> SplitProfile:
        """The split's profile, or an empty one (every field unknown) when the run had no such split."""
        return self.splits.get(name) or SplitProfile()


# ---------------------------------------------------------------- diagnosis.json


class Finding(Record):
    id: str
    severity: Literal["error", "warning", "info"]
    title: str
    evidence: str
    advice: str


class Diagnosis(Versioned):
    findings: list[Finding]


# ---------------------------------------------------------------- reading


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise BertfitError(
            f"'{path}' is damaged ({first_line(err, 120)}); rerun the training, or restore the file from a copy"
        ) from None


def _checked_format(path: Path, found: object) -> int:
    if found is None:
        return 1
    if not isinstance(found, int) or found > FORMAT or found < 1:
        raise BertfitError(
            f"'{path}' was written by a newer bertfit (run files format {found}; this bertfit reads formats 1 to "
            f"{FORMAT}); upgrade bertfit (pip install -U bertfit) to read it"
        )
    return found


def _validated(model: type[Record], data: object, path: Path, version: int):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(map(str, problem["loc"])) or "the file"
        raise BertfitError(
            f"'{path}' is not a bertfit {NOUNS.get(model, path.name)} ({where}: {problem['msg'].lower()}; read as "
            f"run files format {version}); rerun the training, or restore the file from a copy"
        ) from None


NOUNS = {RunMetrics: "metrics file", DataProfile: "data profile", Diagnosis: "diagnosis file"}


def read_file(path: Path, model: type[Versioned]):
    """metrics.json, data_profile.json or diagnosis.json, checked against its schema."""
    data = read_json(path)
    if model is Diagnosis and isinstance(data, list):  # format 1: the findings alone
        data = {"format": 1, "findings": data}
    version = _checked_format(path, data.get("format") if isinstance(data, dict) else None)
    return _validated(model, {**data, "format": version} if isinstance(data, dict) else data, path, version)


def read_events(path: Path) -> Events:
    events = Events()
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "event" not in record:
            raise BertfitError(
                f"{path}:{number}: not a bertfit log line; remove the line (bertfit writes one JSON object per event)"
            )
        if record["event"] == "start":
            _checked_format(path, record.get("format"))
        try:
            events.append(parse_event(record))
        except ValidationError as err:
            problem = err.errors()[0]
            where = ".".join(map(str, problem["loc"]))
            raise BertfitError(
                f"{path}:{number}: not a bertfit log line ({where}: {problem['msg'].lower()}); remove the line, or "
                "rerun the training"
            ) from None
    return events


def read_suspects(path: Path) -> list[Suspect]:
    """mislabeled.jsonl, one training example a line; a line that is not one is refused with its number."""
    suspects = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            suspects.append(Suspect.model_validate_json(line))
        except ValidationError as err:  # also raised for a line that is not JSON
            raise BertfitError(
                f"{path}:{number}: not a bertfit mislabeled line ({first_line(err, 120)}); rerun the training"
            ) from None
    return suspects


# ---------------------------------------------------------------- review/decisions.jsonl (`bertfit review`)


def text_hash(text: str) -> str:
    """What a decision names its example's text by: a retrain with the decisions refuses data whose row differs."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Decision(Record):
    """A reviewer's decision on one suspected training example, appended as it is made (a line of
    review/decisions.jsonl). `undo` takes back the row's latest decision still standing."""

    row: int  # the example's row in its split, as mislabeled.jsonl (or the page's validation errors) number it
    split: Literal["train", "validation"] = "train"
    text_sha256: str  # `text_hash` of its text as mislabeled.jsonl shows it
    label: str  # the label it was given
    action: Literal["relabel", "keep", "drop", "undo"]
    new_label: str | None = None  # relabel: the label it gets
    time: float


def read_decisions(path: Path) -> list[Decision]:
    """The decisions file, in the order they were made. A last line cut short (the process died mid-append) is
    left out; any other line that is not a decision is refused with its number."""
    lines = path.read_text(encoding="utf-8").split("\n")
    decisions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            decisions.append(Decision.model_validate_json(line))
        except ValidationError as err:
            if number == len(lines):  # no newline after it: the append was torn
                break
            raise BertfitError(
                f"{path}:{number}: not a bertfit review decision ({first_line(err, 120)}); give the "
                "review/decisions.jsonl that `bertfit review` wrote"
            ) from None
    return decisions


def standing(decisions: list[Decision], split: str = "train") -> dict[int, Decision]:
    """Each row's decision in force, in one split: the latest, once the undos have taken theirs back."""
    stacks: dict[int, list[Decision]] = {}
    for decision in (d for d in decisions if d.split == split):
        stack = stacks.setdefault(decision.row, [])
        if decision.action == "undo":
            if stack:
                stack.pop()
        else:
            stack.append(decision)
    return {row: stack[-1] for row, stack in stacks.items() if stack}


@dataclass
class RunFiles:
    """What the reports read of a run: its resolved recipe and its records."""

    cfg: Config
    events: Events
    metrics: RunMetrics
    profile: DataProfile | None


def read_run(folder: Path) -> RunFiles:
    """A finished run's files (the data profile None when absent)."""
    needed = [folder / n for n in ("recipe.yaml", "log.jsonl", "metrics.json")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise BertfitError(f"'{folder}' is not a finished bertfit run (missing {', '.join(missing)})")
    metrics = read_file(needed[2], RunMetrics)
    if metrics.validation is None or not metrics.train.model_fields_set:
        raise BertfitError(f"'{needed[2]}' is not a bertfit metrics file (no validation or train); rerun the training")
    profile_path = folder / "data_profile.json"
    return RunFiles(
        cfg=build_config(str(needed[0])),
        events=read_events(needed[1]),
        metrics=metrics,
        profile=read_file(profile_path, DataProfile) if profile_path.is_file() else None,
    )
