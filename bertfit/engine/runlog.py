"""log.jsonl, one line per event, and the training-loss sums between events.

The sums are added on the device each micro-step and read only at log, evaluation and checkpoint time, so a
training step never waits for the device; `state_dict` saves them exactly, so a resumed run adds up the same
numbers as one that was never stopped."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from bertfit.files import atomic_write, writing
from bertfit.records import table_lines
from bertfit.runfiles import Eval, Event, Scores, Train, event_line, parse_event

COUNTERS = ("items", "examples", "tokens", "padded")


def empty_window() -> dict:
    """Training-loss sums over a stretch of steps (since the last log line, or the last evaluation)."""
    return {"loss": 0.0, "items": 0, "correct": 0, "examples": 0}


class RunLog:
    def __init__(self, path: Path, enabled: bool, device: torch.device):
        self.path, self.enabled = path, enabled
        self.events: list[Event] = []
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.host = dict.fromkeys(COUNTERS, 0)
        # Flushed sums: since the last log line, since the last evaluation, and over the whole run.
        self.window, self.since_eval = empty_window(), empty_window()
        self.samples = self.tokens = self.padded = 0
        self.header_printed = False
        self.console = None
        self.bars = Progress(None)  # replaced by `progress` on the rank that prints
        self.sinks: list = []  # experiment trackers, fed every event (engine.tracking)

    # -- saved in each checkpoint
    def state_dict(self) -> dict:
        return {
            "lines": len(self.events),
            "window": dict(self.window),
            "since_eval": dict(self.since_eval),
            "pending": {"loss": float(self.loss), "correct": int(self.correct), **self.host},
            "samples": self.samples,
            "tokens": self.tokens,
            "padded": self.padded,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint: the log is cut back to the lines written up to it."""
        kept = self.path.read_text(encoding="utf-8").splitlines()[: state["lines"]] if self.path.is_file() else []
        self.events = [parse_event(json.loads(line)) for line in kept]
        if self.enabled:
            atomic_write(self.path, "".join(line + "\n" for line in kept), "free space and resume again")
        self.window, self.since_eval = dict(state["window"]), dict(state["since_eval"])
        self.loss.fill_(state["pending"]["loss"])
        self.correct.fill_(state["pending"]["correct"])
        self.host = {k: state["pending"][k] for k in COUNTERS}
        self.samples, self.tokens, self.padded = state["samples"], state["tokens"], state["padded"]

    @property
    def evals(self) -> list[Eval]:
        return [e for e in self.events if isinstance(e, Eval)]

    def event(self, record: Event) -> Event:
        record.time = round(time.time(), 3)
        self.events.append(record)
        if self.enabled:
            with (
                writing("the run log", self.path.parent, "free space and resume with --resume"),
                self.path.open("a", encoding="utf-8") as handle,
            ):
                handle.write(event_line(record) + "\n")
            for sink in self.sinks:
                sink.event(record)
        return record

    def accumulate(
        self, loss_sum: torch.Tensor, correct: torch.Tensor | None, items: int, examples: int, tokens: int, padded: int
    ) -> None:
        self.loss += loss_sum.double()
        if correct is not None:
            self.correct += correct
        for key, value in zip(COUNTERS, (items, examples, tokens, padded)):
            self.host[key] += value

    def _flush(self) -> None:
        host = torch.tensor([float(v) for v in self.host.values()], dtype=torch.float64).to(self.loss.device)
        values = torch.cat([torch.stack([self.loss, self.correct.double()]), host])
        if dist.is_initialized():
            dist.all_reduce(values)
        loss, correct, items, examples, tokens, padded = values.tolist()
        for window in (self.window, self.since_eval):
            window["loss"] += loss
            window["correct"] += int(correct)
            window["items"] += int(items)
            window["examples"] += int(examples)
        self.samples += int(examples)
        self.tokens += int(tokens)
        self.padded += int(padded)
        self.loss.zero_()
        self.correct.zero_()
        self.host = dict.fromkeys(self.host, 0)

    def train_event(self, step: int, epoch: float, lr: float, grad_norm: float, train_seconds: float) -> None:
        self._flush()
        window = self.window
        self.event(
            Train(
                step=step,
                epoch=epoch,
                lr=lr,
                loss=window["loss"] / max(1, window["items"]),
                grad_norm=grad_norm,
                **self.throughput(train_seconds),
            )
        )
        self.window = empty_window()

    def eval_event(self, step: int, epoch: float, result: Scores, best_step: int | None, with_accuracy: bool) -> None:
        """`with_accuracy`: the training accuracy since the last evaluation is reported too."""
        self._flush()
        since = self.since_eval
        record = Eval(
            step=step,
            epoch=epoch,
            train_loss=since["loss"] / since["items"] if since["items"] else None,
            metrics=result,
            best_step=best_step,
        )
        if with_accuracy and since["examples"]:
            record.train_accuracy = since["correct"] / since["examples"]
        self.event(record)
        self.since_eval = empty_window()
        if self.enabled and self.console is not None:
            header, row = table_lines([record])
            if not self.header_printed:
                self.console.print(header, markup=False, highlight=False)
                self.header_printed = True
            self.console.print(row[0], markup=False, highlight=False)

    def progress(self, console, total: int | None = None, done: int = 0) -> Progress:
        """The training bar (`total` steps), or with no total a bar for phases alone (the end of a run)."""
        self.console = console
        self.bars = Progress(console if self.enabled else None, total, done)
        return self.bars

    def phase(self, description: str, total: int, unit: str = "examples"):
        """A bar for one phase under the current progress bars (see `Progress.phase`)."""
        return self.bars.phase(description, total, unit)

    def throughput(self, train_seconds: float) -> dict:
        seconds = train_seconds or float("nan")
        return {
            "train_seconds": round(train_seconds, 3),
            "samples_per_second": round(self.samples / seconds, 2),
            "tokens_per_second": round(self.tokens / seconds, 1),
            "padding_ratio": round(1 - self.tokens / self.padded, 4) if self.padded else 0.0,
        }


class Progress:
    """Rich progress bars on rank 0 (nothing elsewhere): the training steps, and each phase that takes a while
    (an evaluation, the test split) as a bar of its own with an estimate of the time left, so a long phase never
    looks hung."""

    def __init__(self, console, total: int | None = None, done: int = 0):
        self.bar = None
        self.examples, self.seconds = 0, 0.0
        if console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TimeElapsedColumn(),
                TextColumn("<"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[speed]}"),
                console=console,
                transient=total is None,
            )
            if total is not None:
                self.task = self.bar.add_task("training", total=total, completed=done, unit="steps", speed="")

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)

    def advance(self, step: int, examples: int, seconds: float) -> None:
        if self.bar:
            self.examples += examples
            self.seconds += seconds
            self.bar.update(self.task, completed=step, speed=f"{self.examples / self.seconds:.1f} samples/s")

    @contextlib.contextmanager
    def phase(self, description: str, total: int, unit: str = "examples") -> Iterator[Callable[[int], None]]:
        """A bar for one phase, below the training bar; yields the callback that advances it."""
        if self.bar is None:
            yield lambda done: None
            return
        task = self.bar.add_task(description, total=total, unit=unit, speed="")
        try:
            yield lambda done: self.bar.advance(task, done)
        finally:
            self.bar.remove_task(task)
