"""`bertfit review RUN`: a local page to look at the training examples whose labels look wrong, decide on each
(accept the suggested label, keep, drop, undo) and export a corrected copy; `bertfit train --corrections
RUN/review/decisions.jsonl` retrains with the decisions.

FastAPI on uvicorn, as `bertfit serve`, on 127.0.0.1 and a free port unless told otherwise; the page and its
script are one file in the package (bertfit/deploy/review.html), so nothing is fetched from the internet. The
server holds the run folder's lock for its life (a training cannot replace the run under the reviewer), and every
decision is one line appended to review/decisions.jsonl at once, under a lock, before the page hears it was kept:
a closed tab, a crash or a reload loses nothing, and two tabs append rather than overwrite each other."""

from __future__ import annotations

import os
import socket
import threading
import time
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel

from bertfit.deploy.serve import listen_advice
from bertfit.engine.setup import correct_frames, run_frames
from bertfit.errors import BertfitError, first_line
from bertfit.files import to_json, writing
from bertfit.runfiles import (
    Decision,
    Diagnosis,
    Train,
    read_decisions,
    read_file,
    read_run,
    read_suspects,
    standing,
    text_hash,
)
from bertfit.runfolder import RunFolder
from bertfit.tasks import task_for

DECISIONS = "review/decisions.jsonl"
EXPORT = "review/train.corrected.jsonl"


class Choice(BaseModel):
    """What the page sends: a suspected training example's row (or a validation error's), and what to do."""

    row: int
    split: str = "train"
    action: str
    new_label: str | None = None


class Review:
    """A run under review: its suspects, and the decisions file appended to under a lock."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.run = read_run(folder.path)
        mislabeled = folder.path / "mislabeled.jsonl"
        if not mislabeled.is_file():
            why = (
                "a setfit run ranks no examples: train with --method finetune"
                if self.run.cfg.method == "setfit"
                else "classification, multi-label and token-classification runs with find_mislabeled on write one: "
                "train with find_mislabeled: true"
            )
            raise BertfitError(f"'{folder.path}' has no mislabeled.jsonl to review ({why})")
        self.suspects = {s.row: s for s in read_suspects(mislabeled)}
        self.task = task_for(self.run.cfg)
        self.lock = threading.Lock()
        self._errors: dict[int, dict] | None = None  # validation errors, computed when first asked for
        self._scoring = threading.Lock()  # apart from `lock`: decisions on training examples go on meanwhile

    @property
    def decisions_path(self) -> Path:
        return self.folder.path / DECISIONS

    def decisions(self, split: str = "train") -> dict[int, Decision]:
        return standing(read_decisions(self.decisions_path), split) if self.decisions_path.is_file() else {}

    def errors(self) -> dict[int, dict]:
        """The validation examples the kept model gets wrong, by row, with the label it predicts: scored once, as
        `bertfit predict` scores, on the run's validation split as it read it."""
        with self._scoring:
            if self._errors is None:
                from bertfit.engine.evaluation import infer
                from bertfit.engine.predict import load_run

                task, loaded = self.task, load_run(str(self.folder.path))
                frame = run_frames(self.run.cfg)["validation"]
                features = loaded.task.encode(frame, loaded.tokenizer)
                scores = infer(loaded.scorer(64), features, loaded.task.scores).outputs
                given = task.reviewed_labels(task.label_ids(frame))
                words = task.review_words(frame)
                texts = task.profile_texts(frame).tolist()
                self._errors = {
                    row: {
                        "row": row,
                        "text": texts[row],
                        "label": given[row],
                        "suspected": label,
                        "score": score,
                        "pairs": pairs,
                        "shown": self.shown(texts[row], given[row], label, words[row] if words else None),
                    }
                    for row, (label, score) in enumerate(loaded.task.reviewed_predictions(features, frame, scores))
                    if (pairs := task.confusions(given[row], label))
                }
            return self._errors

    def error_state(self) -> dict:
        decided = self.decisions("validation")
        errors = sorted(self.errors().values(), key=lambda e: (e["pairs"][0], -e["score"]))
        pairs: dict[str, int] = {}
        for error in errors:
            for pair in error["pairs"]:
                pairs[pair] = pairs.get(pair, 0) + 1
        return {
            "pairs": dict(sorted(pairs.items(), key=lambda item: -item[1])),
            "errors": [{**e, "decision": decided[e["row"]].dump() if e["row"] in decided else None} for e in errors],
        }

    def shown(self, text: str, label: str, other: str, words: list[str] | None) -> dict:
        return dict(zip(("text", "label", "suspected"), self.task.shown_review(text, label, other, words), strict=True))

    def state(self) -> dict:
        metrics = self.run.metrics
        decided = self.decisions()
        return {
            "run": self.folder.path.name,
            "labels": self.run.cfg.label_names,
            "validation": metrics.validation.dump() if metrics.validation is not None else {},
            "probe": metrics.probe.metrics.dump() if metrics.probe is not None else None,
            "findings": [f.dump() for f in self._findings()],
            "profile": self.run.events.start.profile if self.run.events.start is not None else [],
            "plots": self.plots(),
            "issues": [
                {
                    **s.dump(),
                    "shown": self.shown(s.text, s.label, s.suspected, s.words),
                    "classes": self.task.filed_under(s.label, s.suspected),
                    "decision": decided[s.row].dump() if s.row in decided else None,
                }
                for s in self.suspects.values()
            ],
        }

    def plots(self) -> list[str]:
        return sorted(p.name for p in (self.folder.path / "plots").glob("*.png"))

    def _findings(self) -> list:
        path = self.folder.path / "diagnosis.json"
        return read_file(path, Diagnosis).findings if path.is_file() else []

    def decide(self, choice: Choice) -> dict:
        if choice.split not in ("train", "validation"):
            raise HTTPException(422, f"split '{choice.split}' is not train or validation")
        if choice.split == "train":
            suspect = self.suspects.get(choice.row)
            found = None if suspect is None else (suspect.text, suspect.label)
        else:
            error = self.errors().get(choice.row)
            found = None if error is None else (error["text"], error["label"])
        if found is None:
            raise HTTPException(404, f"{choice.split} row {choice.row} is not among the examples to review")
        text, label = found
        if choice.action not in ("relabel", "keep", "drop", "undo"):
            raise HTTPException(422, f"action '{choice.action}' is not relabel, keep, drop or undo")
        refusal = self.task.relabel_refusal(label, choice.new_label or "") if choice.action == "relabel" else None
        if refusal is not None:
            raise HTTPException(422, f"row {choice.row} cannot be relabelled '{choice.new_label}': {refusal}")
        decision = Decision(
            row=choice.row,
            **({"split": "validation"} if choice.split == "validation" else {}),
            text_sha256=text_hash(text),
            label=label,
            action=choice.action,
            new_label=choice.new_label if choice.action == "relabel" else None,
            time=round(time.time(), 3),
        )
        with self.lock:
            self.append(to_json(decision.dump()) + "\n")
            now = self.decisions(choice.split).get(choice.row)
        return {"row": choice.row, "decision": now.dump() if now is not None else None}

    def append(self, line: str) -> None:
        """One write of one line with O_APPEND, flushed to disk before the page is told: whole or, if the process
        dies inside the write, a torn last line that reading leaves out."""
        path = self.folder.target(DECISIONS)
        with writing("the review decisions", path.parent, "free space and decide again"):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)

    def export(self) -> dict:
        """The run's training split with the decisions in force applied, as review/train.corrected.jsonl: inside
        the run folder, beside nothing of the user's and never over the original."""
        if not self.decisions_path.is_file():
            raise HTTPException(409, "no decisions yet: decide on some examples first")
        cfg = self.run.cfg
        frames, corrections = correct_frames(run_frames(cfg), self.task, str(self.decisions_path))
        self.folder.write(EXPORT, frames["train"].to_json(orient="records", lines=True, force_ascii=False))
        return {"path": str(self.folder.path / EXPORT), "rows": len(frames["train"]), "note": corrections.note()}


def compared_runs(paths: list[str]) -> list[Path]:
    """Run folders to compare: each path a finished run, or a folder of them (a sweep's `trials/`, or the sweep)."""
    runs = []
    for given in paths:
        path = Path(given)
        if (path / "metrics.json").is_file():
            runs.append(path)
            continue
        inside = sorted(p.parent for p in [*path.glob("*/metrics.json"), *path.glob("trials/*/metrics.json")])
        if not inside:
            raise BertfitError(f"--compare '{given}' is not a finished run, nor a folder of them (a sweep)")
        runs.extend(inside)
    return runs


def curves(folder: Path) -> dict:
    """What the compare view draws of one run: its validation metric and training loss by step."""
    files = read_run(folder)
    metric = files.metrics.metric_for_best or "loss"
    return {
        "run": str(folder),
        "method": files.cfg.method,
        "metric": metric,
        "best": files.metrics.best_metric,
        "validation": files.metrics.validation.dump() if files.metrics.validation is not None else {},
        "probe": files.metrics.probe.metrics.metric(metric) if files.metrics.probe is not None else None,
        "evals": [[e.step, e.metrics.metric(metric)] for e in files.events.evals],
        "losses": [[t.step, t.loss] for t in files.events.of(Train) if t.loss is not None],
    }


def build_app(review: Review, compare: list[Path] = ()) -> FastAPI:
    app = FastAPI(title="bertfit review", docs_url=None, redoc_url=None, openapi_url=None)
    page = files("bertfit.deploy").joinpath("review.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/api/state")
    def state():
        return JSONResponse(review.state())

    @app.get("/api/errors")
    def errors():
        return JSONResponse(review.error_state())

    @app.get("/api/compare")
    def compare_runs():
        return JSONResponse([curves(folder) for folder in [review.folder.path, *compare]])

    @app.post("/api/decisions")
    def decide(choice: Choice):
        return JSONResponse(review.decide(choice))

    @app.post("/api/export")
    def export():
        try:
            return JSONResponse(review.export())
        except BertfitError as err:
            return JSONResponse({"error": str(err)}, status_code=422)

    @app.get("/plots/{name}")
    def plot(name: str):
        if name not in review.plots():  # only the run's own plots, by name: no path reaches further
            raise HTTPException(404, "no such plot")
        return FileResponse(review.folder.path / "plots" / name, media_type="image/png")

    return app


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts: a busy port is one line, and port 0 a free one."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise BertfitError(f"cannot listen on {host}:{port} ({err.strerror}); {listen_advice(err)}") from None
    except (socket.gaierror, UnicodeError, OverflowError) as err:
        sock.close()
        raise BertfitError(f"--host {host} is not an address to listen on ({first_line(err)})") from None
    sock.listen(64)
    return sock


def review(run_dir: str, host: str = "127.0.0.1", port: int = 0, compare: list[str] = ()) -> None:
    import uvicorn

    others = compared_runs(list(compare))
    with RunFolder.update(Path(run_dir)) as folder:
        state = Review(folder)
        sock = bind(host, port)
        bound = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(build_app(state, others), log_level="warning", access_log=False))
        print(
            f"reviewing {run_dir} at http://{host}:{bound}/ ({len(state.suspects):,} suspected examples; decisions "
            f"in {folder.path / DECISIONS}); Ctrl-C to stop",
            flush=True,
        )
        server.run(sockets=[sock])
