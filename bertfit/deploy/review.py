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
from bertfit.engine.setup import training_frame
from bertfit.errors import BertfitError, first_line
from bertfit.files import to_json, writing
from bertfit.runfiles import (
    Decision,
    Diagnosis,
    read_decisions,
    read_file,
    read_run,
    read_suspects,
    standing,
    text_hash,
)
from bertfit.runfolder import RunFolder

DECISIONS = "review/decisions.jsonl"
EXPORT = "review/train.corrected.jsonl"


class Choice(BaseModel):
    """What the page sends: a suspected example's row, and what to do with it."""

    row: int
    action: str
    new_label: str | None = None


class Review:
    """A run under review: its suspects, and the decisions file appended to under a lock."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.run = read_run(folder.path)
        mislabeled = folder.path / "mislabeled.jsonl"
        if not mislabeled.is_file():
            raise BertfitError(
                f"'{folder.path}' has no mislabeled.jsonl to review (a classification run with find_mislabeled on "
                "writes one); train with find_mislabeled: true"
            )
        self.suspects = {s.row: s for s in read_suspects(mislabeled)}
        self.lock = threading.Lock()

    @property
    def decisions_path(self) -> Path:
        return self.folder.path / DECISIONS

    def decisions(self) -> dict[int, Decision]:
        return standing(read_decisions(self.decisions_path)) if self.decisions_path.is_file() else {}

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
            "plots": sorted(p.name for p in (self.folder.path / "plots").glob("*.png")),
            "issues": [
                {**s.dump(), "decision": decided[s.row].dump() if s.row in decided else None}
                for s in self.suspects.values()
            ],
        }

    def _findings(self) -> list:
        path = self.folder.path / "diagnosis.json"
        return read_file(path, Diagnosis).findings if path.is_file() else []

    def decide(self, choice: Choice) -> dict:
        suspect = self.suspects.get(choice.row)
        if suspect is None:
            raise HTTPException(404, f"row {choice.row} is not among the suspected examples")
        if choice.action not in ("relabel", "keep", "drop", "undo"):
            raise HTTPException(422, f"action '{choice.action}' is not relabel, keep, drop or undo")
        if choice.action == "relabel" and choice.new_label not in (self.run.cfg.label_names or []):
            raise HTTPException(422, f"label '{choice.new_label}' is not one of the run's labels")
        decision = Decision(
            row=suspect.row,
            text_sha256=text_hash(suspect.text),
            label=suspect.label,
            action=choice.action,
            new_label=choice.new_label if choice.action == "relabel" else None,
            time=round(time.time(), 3),
        )
        with self.lock:
            self.append(to_json(decision.dump()) + "\n")
            now = self.decisions().get(suspect.row)
        return {"row": suspect.row, "decision": now.dump() if now is not None else None}

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
        from bertfit.engine.setup import correct
        from bertfit.tasks import task_for

        if not self.decisions_path.is_file():
            raise HTTPException(409, "no decisions yet: decide on some examples first")
        cfg = self.run.cfg
        frame, note = correct(training_frame(cfg), task_for(cfg), str(self.decisions_path))
        self.folder.write(EXPORT, frame.to_json(orient="records", lines=True, force_ascii=False))
        return {"path": str(self.folder.path / EXPORT), "rows": len(frame), "note": note}


def build_app(review: Review) -> FastAPI:
    app = FastAPI(title="bertfit review", docs_url=None, redoc_url=None, openapi_url=None)
    page = files("bertfit.deploy").joinpath("review.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/api/state")
    def state():
        return JSONResponse(review.state())

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
        if name not in review.state()["plots"]:  # only the run's own plots, by name: no path reaches further
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


def review(run_dir: str, host: str = "127.0.0.1", port: int = 0) -> None:
    import uvicorn

    with RunFolder.update(Path(run_dir)) as folder:
        state = Review(folder)
        sock = bind(host, port)
        bound = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(build_app(state), log_level="warning", access_log=False))
        print(
            f"reviewing {run_dir} at http://{host}:{bound}/ ({len(state.suspects):,} suspected examples; decisions "
            f"in {folder.path / DECISIONS}); Ctrl-C to stop",
            flush=True,
        )
        server.run(sockets=[sock])
