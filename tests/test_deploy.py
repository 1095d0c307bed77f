"""Where a run goes next: ONNX export checked against torch, and `bertfit serve` driven by a real HTTP client
against a real server process on a loopback port."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from conftest import free_port, run_cli, sample_run_args

# Training subprocesses, servers and process groups: the full suite runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "run"
    args = sample_run_args(tiny_bert, out, "--max-steps", 6, "--eval-every", 6, "--lr", "1e-3", "--batch-size", 16)
    done = subprocess.run([sys.executable, "-m", "bertfit", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_onnx_export_predicts_as_torch_and_loads_as_a_run(trained, tmp_path, capsys):
    out = tmp_path / "onnx"
    code, stdout, stderr = run_cli(["export", trained, "--output", out], capsys)
    assert code == 0, stderr
    assert "labels agree on 100.00%" in stdout and "max |Δlogit|" in stdout
    assert {"model.onnx", "config.json", "recipe.yaml", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    texts = ["a gripping, funny film", "dull and far too long", "fine"]
    answers = []
    for folder in (trained, out):
        code, stdout, _ = run_cli(["predict", folder, *sum((["--text", t] for t in texts), [])], capsys)
        assert code == 0
        answers.append([json.loads(line) for line in stdout.strip().splitlines()])
    onnx, torch_run = answers[1], answers[0]
    assert [a["label"] for a in onnx] == [a["label"] for a in torch_run]
    # torch predicts in the run's bf16; onnxruntime in fp32
    assert [a["score"] for a in onnx] == pytest.approx([a["score"] for a in torch_run], abs=2e-2)
    code, _, stderr = run_cli(["export", trained, "--output", out], capsys)
    assert code == 2 and "exists and is not empty" in stderr


def test_int8_export_is_smaller_and_still_agrees(trained, tmp_path, capsys):
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    assert run_cli(["export", trained, "--output", fp32], capsys)[0] == 0
    code, stdout, _ = run_cli(["export", trained, "--output", int8, "--quantize", "int8"], capsys)
    assert code == 0 and "quantize int8" in stdout
    assert (int8 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size


def start_server(folder, port, *extra):
    process = subprocess.Popen(
        [sys.executable, "-m", "bertfit", "serve", str(folder), "--port", str(port), *map(str, extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode()[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("server did not start in 120 s")


def test_server_endpoints_errors_and_batching(trained, capsys):
    port = free_port()
    server = start_server(trained, port, "--max-texts", 8, "--max-queue", 64)
    base = f"http://127.0.0.1:{port}"
    try:
        metadata = httpx.get(f"{base}/metadata").json()
        assert metadata["task"] == "classification" and metadata["labels"] == ["0", "1"]
        assert metadata["runtime"] == "torch" and metadata["text_columns"] == ["sentence"]
        cores = torch.get_num_threads()  # this process's, as the server's: both take the machine's default
        assert metadata["workers"] == min(2, cores) and metadata["threads_per_worker"] == cores // min(2, cores)
        one = httpx.post(f"{base}/predict", json={"text": "a gripping film"})
        assert one.status_code == 200
        code, stdout, _ = run_cli(["predict", trained, "--text", "a gripping film"], capsys)
        assert one.json()["predictions"] == [json.loads(stdout)]  # the same answer as the CLI
        many = httpx.post(f"{base}/predict", json={"texts": ["good", "bad", "so-so"]})
        assert len(many.json()["predictions"]) == 3
        for body, status, message in (
            (b"not json", 422, "request body is not JSON"),
            (b'{"text": ""}', 422, "text 1 is empty"),
            (b'{"text": 3}', 422, "text 1 is not a string"),
            (b'{"texts": "abc"}', 422, '"texts" must be a list of strings'),
            (b'{"nothing": 1}', 422, 'no "text", "texts" or "pairs"'),
            (b'{"text": "a", "pair": "b"}', 422, "this model reads 1 text(s) per example"),
            (json.dumps({"texts": ["x"] * 9}).encode(), 413, "9 texts in one request; the limit is 8"),
            (json.dumps({"text": "x" * 1_100_000}).encode(), 413, "the limit is 1,000,000"),
            (b'{"text": "\\ud800"}', 422, "text 1 holds a lone surrogate ('\\ud800'), which is not a character"),
            (b'{"texts": ["ok", "a\\udfffb"]}', 422, "text 2 holds a lone surrogate"),
            (b"[" * 100_000 + b"]" * 100_000, 422, "request body nests too deeply to be a request"),
            (b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 422, "nests too deeply"),
            (b'{"text": "a", "texts": ["b"]}', 422, 'send one of "text", "texts" or "pairs", not text and texts'),
        ):
            answer = httpx.post(f"{base}/predict", content=body, headers={"content-type": "application/json"})
            assert answer.status_code == status and message in answer.json()["error"], (body[:40], answer.text)
            assert answer.headers["content-type"] == "application/json"

        async def burst():
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                replies = await asyncio.gather(*(client.post("/predict", json={"text": f"t {i}"}) for i in range(40)))
            return replies

        replies = asyncio.run(burst())
        assert all(r.status_code == 200 for r in replies)
        # Batches computed at once by two threads on one model answer as one request for all of them does.
        together = [
            prediction
            for start in range(0, 40, 8)  # --max-texts 8
            for prediction in httpx.post(
                f"{base}/predict", json={"texts": [f"t {i}" for i in range(start, start + 8)]}, timeout=60
            ).json()["predictions"]
        ]
        for reply, expected in zip(replies, together, strict=True):
            (answer,) = reply.json()["predictions"]
            assert answer["label"] == expected["label"]
            assert answer["score"] == pytest.approx(expected["score"], abs=1e-2)
        health = httpx.get(f"{base}/health").json()
        assert health["texts"] >= 44 and health["batches"] < health["texts"]  # concurrent requests shared batches
    finally:
        server.kill()
        server.wait()


def test_sigterm_finishes_requests_in_flight(trained):
    port = free_port()
    server = start_server(trained, port, "--max-wait-ms", 200)
    base = f"http://127.0.0.1:{port}"

    async def request_then_stop():
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            pending = asyncio.ensure_future(client.post("/predict", json={"texts": ["a", "b"]}))
            await asyncio.sleep(0.05)  # the request is in, waiting out its 200 ms batch window
            os.kill(server.pid, signal.SIGTERM)
            return await pending

    try:
        reply = asyncio.run(request_then_stop())
        assert reply.status_code == 200 and len(reply.json()["predictions"]) == 2
        # uvicorn re-raises the signal once it has shut down gracefully: the exit status says SIGTERM
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()


def test_a_busy_port_is_one_line(trained, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, stderr = run_cli(["serve", trained, "--port", port], capsys)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in stderr


def test_a_full_queue_is_503_at_once_never_a_hang(trained):
    port = free_port()
    server = start_server(trained, port, "--max-queue", 1, "--max-batch", 1, "--max-wait-ms", 0)
    base = f"http://127.0.0.1:{port}"

    async def burst():
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            return await asyncio.gather(*(client.post("/predict", json={"text": f"text {i}"}) for i in range(30)))

    try:
        replies = asyncio.run(burst())
        codes = [r.status_code for r in replies]
        assert set(codes) == {200, 503}  # the queued ones answered, the rest refused at once
        refused = next(r for r in replies if r.status_code == 503).json()
        assert refused == {"error": "server busy: 1 requests waiting; retry shortly"}
    finally:
        server.kill()
        server.wait()
