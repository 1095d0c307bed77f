"""The task layer: one module per task kind. A `Task` owns everything that differs between kinds (the model's head,
encoding, collation, loss, metrics, window stitching, decoding for predict, the data profile of labels, the card's
task type and its own tables); to add a kind, add a module with a `Task` subclass and `register` it."""

from __future__ import annotations

from bertfit import config
from bertfit.data import schema
from bertfit.errors import BertfitError
from bertfit.tasks.base import LOWER_IS_BETTER, Task, TaskSettings
from bertfit.tasks.classification import ClassificationTask
from bertfit.tasks.features import IGNORE, Features
from bertfit.tasks.multilabel import MultiLabelTask
from bertfit.tasks.regression import RegressionTask
from bertfit.tasks.token import TokenTask

TASKS: dict[str, type[Task]] = {}

__all__ = [
    "IGNORE",
    "LOWER_IS_BETTER",
    "TASKS",
    "Features",
    "Task",
    "TaskSettings",
    "build_task",
    "detect",
    "kind_of",
    "normalise",
    "register",
    "task_for",
]


def register(task: type[Task]) -> type[Task]:
    """A task kind becomes one that recipes may name (`task: KIND`) and runs, reports and predict read."""
    TASKS[task.kind] = task
    if task.kind not in config.TASK_KINDS:
        config.TASK_KINDS.append(task.kind)
    return task


for _kind in (ClassificationTask, MultiLabelTask, RegressionTask, TokenTask):
    register(_kind)


def build_task(kind: str, *args, **kwargs) -> Task:
    """A task of `kind` from its settings (`TaskSettings`' fields, by position or name)."""
    return TASKS[kind](TaskSettings(*args, **kwargs))


def task_for(cfg) -> Task:
    """The task of a resolved recipe (one whose task, columns, labels and max_length are filled in)."""
    return TASKS[cfg.task](TaskSettings.of(cfg))


def detect(splits, train_split: str, task: str, *args, **kwargs) -> schema.DataSpec:
    """The data's columns and labels, read as the data of the kind `task` names (a kind built on another reads
    its data: `Task.data_kind`), or of the first registered kind that claims the data's shape, else as data with
    one label per example (classification or regression, by its values). `spec.task` is the data kind, `kind_of`
    the task kind. The other arguments are `schema.found`'s."""
    found = schema.found(splits, train_split, *args, **kwargs)
    if task == "auto":
        kind = next((kind for kind in TASKS.values() if kind.claims(found)), None)
        return kind.read_data(found) if kind is not None else schema.single_label(found, "auto")
    reader = TASKS[TASKS[task].data_kind]
    if found.label_columns and not reader.claims(found):
        raise BertfitError(f"label_columns gives multi-label data, but task is {task}: use --task multi_label")
    return reader.read_data(found)


def normalise(splits, spec: schema.DataSpec):
    """The splits as the spec's kind reads them (tags named and in IOB2, label sets as lists), with detection's
    notes; a new object: the given splits are left as they are."""
    return TASKS[spec.task].normalise_data(schema.with_notes(splits, spec), spec)


def kind_of(task: str, spec: schema.DataSpec) -> str:
    """The task kind of a run: the one the recipe names, else the one its data was detected as."""
    return spec.task if task == "auto" else task
