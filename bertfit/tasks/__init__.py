"""The task layer: one module per task kind. A `Task` owns everything that differs between kinds (the model's head,
encoding, collation, loss, metrics, window stitching, decoding for predict, the data profile of labels, the card's
task type); to add a kind, add a module with a `Task` subclass and register it in `TASKS`."""

from __future__ import annotations

from bertfit.tasks.base import IGNORE, LOWER_IS_BETTER, Features, Task
from bertfit.tasks.classification import ClassificationTask
from bertfit.tasks.multilabel import MultiLabelTask
from bertfit.tasks.regression import RegressionTask
from bertfit.tasks.token import TokenTask

TASKS: dict[str, type[Task]] = {
    task.kind: task for task in (ClassificationTask, MultiLabelTask, RegressionTask, TokenTask)
}

__all__ = ["IGNORE", "LOWER_IS_BETTER", "TASKS", "Features", "Task", "build_task", "task_for"]


def build_task(
    kind: str,
    text_columns: list[str],
    label_column: str,
    label_names: list[str] | None,
    max_length: int,
    truncation: str = "head",
    extra_metrics: tuple[str, ...] = (),
    stride: int = 32,
    label_all_subtokens: bool = False,
    class_weights: str | list[float] | None = None,
    threshold: str | float = "tuned",
    window_pooling: str = "mean",
) -> Task:
    return TASKS[kind](
        text_columns,
        label_column,
        label_names,
        max_length,
        truncation,
        extra_metrics,
        stride,
        label_all_subtokens,
        class_weights,
        threshold,
        window_pooling,
    )


def task_for(cfg) -> Task:
    """The task of a resolved recipe (one whose task, columns, labels and max_length are filled in)."""
    return build_task(
        cfg.task,
        cfg.text_columns,
        cfg.label_column,
        cfg.label_names,
        cfg.max_length,
        cfg.truncation,
        tuple(cfg.metrics),
        cfg.stride,
        cfg.label_all_subtokens,
        cfg.class_weights,
        cfg.threshold,
        cfg.window_pooling,
    )
