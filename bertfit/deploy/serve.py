"""`bertfit serve`: a run folder (torch, or its ONNX export) behind HTTP, with dynamic micro-batching.

FastAPI on uvicorn: the stack most Python model servers use, kept by active maintainers, with graceful shutdown
(uvicorn finishes requests in flight on SIGTERM) and an async core that lets one model thread be fed by many
connections. Requests already queued, and those that arrive within `max_wait_ms` of the first, share one forward
pass, up to `max_batch` texts. The model runs in worker threads, so the event loop keeps accepting while it computes;
on a CPU two of them each compute a batch on half the cores (see `plan_workers`).

Every response is JSON. Bad input is a 422 with bertfit's one-line message; a body or text list over the limits is
a 413; a full queue is a 503 at once, never a hang."""

from __future__ import annotations

import asyncio
import errno
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bertfit.engine.device import autocast, default_device
from bertfit.engine.predict import LoadedRun, load_run, predict
from bertfit.errors import BertfitError, first_line

# Texts per forward pass within a batch of requests, sorted by length: less padding than one pass over all of them
# (one-sentence SST-2 requests, one thread: 5.8 ms of model time per text in passes of 8 rounded to 8 tokens,
# 8.3 ms in passes of 16 rounded to 16).
FORWARD_BATCH = 8
# Batch lengths are rounded up to a multiple of this: a server meets a bounded set of shapes, so the CPU kernels'
# per-shape caches (oneDNN's primitives) stop growing, and the process's memory with them (measured: flat at
# 740 MB from the first 10 s to the end of 14,000 requests).
PAD_MULTIPLE = 8


@dataclass(frozen=True)
class Limits:
    max_batch: int = 16  # texts per batch of requests
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_queue: int = 256  # requests waiting; more are refused with 503
    max_texts: int = 256  # texts per request
    max_body_bytes: int = 1_000_000


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_request(body: bytes, text_columns: list[str], limits: Limits) -> list[list[str]]:
    """{"text": "..."} | {"text": "...", "pair": "..."} | {"texts": [...]} | {"pairs": [[a, b], ...]} → rows."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body is {len(body):,} bytes; the limit is {limits.max_body_bytes:,}")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(422, f"request body is not JSON ({err.msg if hasattr(err, 'msg') else err})") from None
    except RecursionError:  # Python's parser recurses per level: [[[[...]]]] 100,000 deep exhausts the stack
        raise RequestError(422, "request body nests too deeply to be a request") from None
    if not isinstance(payload, dict):
        raise RequestError(422, 'send a JSON object: {"text": "..."}, {"texts": [...]} or {"pairs": [[a, b], ...]}')
    given = [key for key in ("text", "texts", "pairs") if key in payload]
    if len(given) > 1:
        raise RequestError(422, f'send one of "text", "texts" or "pairs", not {" and ".join(given)} together')
    if "text" in payload:
        rows = [[payload["text"]] + ([payload["pair"]] if "pair" in payload else [])]
    elif "texts" in payload:
        texts = payload["texts"]
        if not isinstance(texts, list):
            raise RequestError(422, '"texts" must be a list of strings')
        rows = [[text] for text in texts]
    elif "pairs" in payload:
        pairs = payload["pairs"]
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise RequestError(422, '"pairs" must be a list of [text, text] pairs')
        rows = [list(pair) for pair in pairs]
    else:
        raise RequestError(422, 'no "text", "texts" or "pairs" in the request')
    if not rows:
        raise RequestError(422, "no texts to predict")
    if len(rows) > limits.max_texts:
        raise RequestError(413, f"{len(rows):,} texts in one request; the limit is {limits.max_texts:,}")
    for number, row in enumerate(rows, start=1):
        if not all(isinstance(text, str) for text in row):
            raise RequestError(422, f"text {number} is not a string")
        if not all(text.strip() for text in row):
            raise RequestError(422, f"text {number} is empty")
        for text in row:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:  # JSON can spell a lone surrogate ("\ud800"); no text holds one
                raise RequestError(
                    422, f"text {number} holds a lone surrogate ({text[err.start]!r}), which is not a character"
                ) from None
        if len(row) != len(text_columns):
            raise RequestError(
                422,
                f"this model reads {len(text_columns)} text(s) per example ({', '.join(text_columns)}); "
                f"text {number} has {len(row)}",
            )
    return rows


def plan_workers(requested: int | None) -> tuple[int, int]:
    """(batches computed at once, threads for each). On a CPU, two at once by default, on half the cores each:
    measured on 2 cores under 32 clients (benchmarks/deploy.py), 192 requests/s against 143 for one batch on both
    cores, because one batch's serial parts (tokenizing, the Python between kernels, results going back) overlap
    the other's kernels, and a batch on one core never waits at a thread barrier for a core the HTTP side has
    taken. A GPU runs one batch at a time anyway."""
    cores = torch.get_num_threads()
    if default_device().type != "cpu":
        return requested or 1, cores
    workers = requested or min(2, cores)
    return workers, max(1, cores // workers)


class MicroBatcher:
    """Collects requests from the event loop into batches for the model threads."""

    def __init__(self, run: LoadedRun, limits: Limits, workers: int):
        self.run, self.limits, self.workers = run, limits, workers
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=limits.max_queue)
        # Each model thread inside one autocast context for its whole life: the weights' bf16 copies are cast once
        # and kept (a context per call casts all of them again, and the churn grew the server's memory).
        self.executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="bertfit-model", initializer=self._enter_autocast
        )
        self.worker: asyncio.Task | None = None
        self.running: set[asyncio.Task] = set()  # the event loop keeps only weak references to its tasks
        self.batches = self.texts = 0

    def _enter_autocast(self) -> None:
        autocast(self.run.device, self.run.precision).__enter__()  # autocast state is per thread

    def _predict(self, rows: list[list[str]]) -> list[dict]:
        return predict(self.run, rows, FORWARD_BATCH, PAD_MULTIPLE)

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, rows: list[list[str]]) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((rows, future))
        except asyncio.QueueFull:
            raise RequestError(503, f"server busy: {self.limits.max_queue} requests waiting; retry shortly") from None
        return await future

    async def _work(self) -> None:
        # A batch is collected only once a model thread is free to take it, so requests that arrive while every
        # thread computes wait in the queue and join the next batch together.
        free = asyncio.Semaphore(self.workers)
        while True:
            await free.acquire()
            batch = await self._collect()
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self.running.add(task)
            task.add_done_callback(lambda done: (self.running.discard(done), free.release()))

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        size = len(batch[0][0])
        deadline = loop.time() + self.limits.max_wait_ms / 1000
        while size < self.limits.max_batch:
            # What is queued already joins at once; only then does the batch wait for company.
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                if (left := deadline - loop.time()) <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            batch.append(item)
            size += len(item[0])
        return batch

    async def _run(self, batch: list) -> None:
        rows = [row for request, _ in batch for row in request]
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self._predict, rows)
        except Exception as err:  # one bad batch fails its requests, not the server
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        self.batches, self.texts = self.batches + 1, self.texts + len(rows)
        at = 0
        for request, future in batch:
            if not future.done():
                future.set_result(results[at : at + len(request)])
            at += len(request)


def metadata(run: LoadedRun, run_dir: str, workers: int) -> dict:
    cfg = run.cfg
    return {
        "run": run_dir,
        "task": run.task.kind,
        "labels": cfg.label_names,
        "text_columns": cfg.text_columns,
        "model": cfg.model,
        "max_length": cfg.max_length,
        "runtime": "onnxruntime" if type(run.model).__name__ == "OnnxModel" else "torch",
        "precision": run.precision,
        "device": str(run.device),
        "workers": workers,
        "threads_per_worker": torch.get_num_threads(),
    }


def build_app(run_dir: str, limits: Limits = Limits(), workers: int | None = None) -> FastAPI:
    workers, threads = plan_workers(workers)
    torch.set_num_threads(threads)  # before loading: an ONNX session takes its thread count from torch's
    run = load_run(run_dir)
    predict(run, [["warm up"] * len(run.cfg.text_columns)])  # first-call costs are paid before the first request
    batcher = MicroBatcher(run, limits, workers)
    info = metadata(run, run_dir, workers)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="bertfit", lifespan=lifespan)

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception):  # a bug of ours: still JSON, and one line in the log
        print(f"bertfit serve: internal error: {type(err).__name__}: {first_line(err)}", file=sys.stderr, flush=True)
        return JSONResponse({"error": f"internal error ({type(err).__name__})"}, status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "queued": batcher.queue.qsize(), "batches": batcher.batches, "texts": batcher.texts}

    @app.get("/metadata")
    async def describe():
        return info

    @app.post("/predict")
    async def predict_texts(request: Request):
        try:
            declared = int(request.headers.get("content-length") or 0)
            if declared > limits.max_body_bytes:
                raise RequestError(413, f"request body is {declared:,} bytes; the limit is {limits.max_body_bytes:,}")
            rows = parse_request(await request.body(), run.cfg.text_columns, limits)
            # A JSONResponse as it is: the predictions are plain JSON already, and FastAPI's encoder walking them
            # again costs the event loop, which shares the CPU with the model, a millisecond per request.
            return JSONResponse({"predictions": await batcher.submit(rows)})
        except RequestError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        except BertfitError as err:
            return JSONResponse({"error": str(err)}, status_code=422)

    return app


def listen_advice(err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return "another program listens there: choose another --port"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "ports below 1024 need root: choose a --port above 1023"
    return "use 127.0.0.1, 0.0.0.0 or an address of this machine as --host"


def serve(
    run_dir: str, host: str, port: int, limits: Limits = Limits(), workers: int | None = None, grace_seconds: float = 30
) -> None:
    import socket

    import uvicorn

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:  # uvicorn would log the failure and exit 1; checked first, it is one line and exit 2
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as err:
            raise BertfitError(f"cannot listen on {host}:{port} ({err.strerror}); {listen_advice(err)}") from None
        except (socket.gaierror, UnicodeError, OverflowError) as err:  # not an address this machine could have
            raise BertfitError(
                f"--host {host} is not an address to listen on ({first_line(err)}); use 127.0.0.1, 0.0.0.0 or an "
                "address of this machine"
            ) from None
    app = build_app(run_dir, limits, workers)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=grace_seconds, access_log=False
    )
    server = uvicorn.Server(config)
    print(f"serving {run_dir} on http://{host}:{port} (POST /predict, GET /health, GET /metadata)", flush=True)
    server.run()
