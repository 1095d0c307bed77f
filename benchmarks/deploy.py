"""Serving and export on this CPU, side by side with what a user would otherwise run, in one invocation:

1. ONNX: a minilm SST-2 run exported with `bertfit export` (fp32, and int8), scored on all of SST-2's validation
   split through `bertfit eval` (torch in the run's precision, torch fp32, onnxruntime fp32 and int8): accuracy,
   samples/s, and label agreement with torch.
2. Load: `bertfit serve` (micro-batching) against the naive server a user writes (FastAPI, one `pipeline()` call
   per request), each in its own process on loopback: N concurrent clients send a fixed number of one-sentence
   requests; requests/s, p50/p95/p99 latency, errors, and the server's RSS sampled over the run.

    python benchmarks/deploy.py [--clients 32] [--requests 5000]     # appends to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import sections

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--model", "minilm", "--data", "sst2", "--max-train-samples", "4000", "--epochs", "1", "--batch-size", "32"]
TRAIN += ["--max-length", "128", "--no-find-mislabeled"]

RUN_PRECISION = "torch (the run's precision)"

NAIVE_SERVER = """
import sys
import uvicorn
from fastapi import FastAPI
from transformers import pipeline

classifier = pipeline("text-classification", model=sys.argv[1])
app = FastAPI()


@app.post("/predict")
def predict(request: dict):
    return {"predictions": classifier([request["text"]])}


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def bertfit(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "bertfit", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bertfit {args[0]} failed: {done.stderr[-2000:]}")
    return done.stdout


def onnx_rows(run: Path, work: Path) -> list[dict]:
    folders = {RUN_PRECISION: run, "torch fp32": run}
    for name, extra in (("onnxruntime fp32", []), ("onnxruntime int8", ["--quantize", "int8"])):
        out = work / name.split()[1]
        bertfit("export", str(run), "--output", str(out), *extra)
        folders[name] = out
    sentences = work / "sentences.txt"
    sys.path.insert(0, str(REPO))
    from bertfit.data import sources

    sentences.write_text("\n".join(sources.load_splits("sst2").frames["validation"]["sentence"]) + "\n")
    rows, labels = [], {}
    for name, folder in folders.items():
        precision = ["--precision", "fp32"] if name == "torch fp32" else []
        scored = json.loads(bertfit("eval", str(folder), "--data", "sst2", "--split", "validation", *precision))
        predictions = work / f"{name.replace(' ', '_')}.jsonl"
        bertfit("predict", str(folder), "--input", str(sentences), "--output", str(predictions), *precision)
        labels[name] = [json.loads(line)["label"] for line in predictions.read_text().splitlines()]
        rows.append(
            {"runtime": name, "accuracy": scored["accuracy"], "samples_per_second": scored["samples_per_second"]}
        )
    for row in rows:
        for reference in ("torch fp32", RUN_PRECISION):
            pairs = zip(labels[row["runtime"]], labels[reference], strict=True)
            row[reference] = sum(a == b for a, b in pairs) / len(labels[reference])
    return rows


def onnx_profile(folder: Path) -> dict:
    """Where onnxruntime's fp32 time goes on SST-2 validation (batch 64, length-sorted, as `bertfit eval`), from its
    own profiler: the share of kernel time per operator type, and the matrix products' milliseconds per sentence."""
    import onnxruntime
    import torch

    from bertfit.data import sources
    from bertfit.engine import batching
    from bertfit.engine.predict import load_run

    run = load_run(str(folder))
    texts = sources.load_splits("sst2").frames["validation"]["sentence"].tolist()
    features = run.task.encode(run.task.prediction_frame([[text] for text in texts])[0], run.tokenizer)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    for indices in batching.eval_batches(features.lengths, 64, 0, 1):
        batch = run.task.collate(features, indices, run.tokenizer.pad_token_id)
        session.run(None, {k: v.numpy() for k, v in batch.items() if k in inputs})
    per_op: dict[str, float] = {}
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            per_op[op] = per_op.get(op, 0.0) + event["dur"] / 1000
    total = sum(per_op.values())
    matmul = sum(ms for op, ms in per_op.items() if "MatMul" in op or op == "Gemm")
    return {
        "shares": {op: ms / total for op, ms in sorted(per_op.items(), key=lambda item: -item[1])[:6]},
        "matmul_ms_per_sentence": matmul / len(texts),
        "kernel_ms_per_sentence": total / len(texts),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load(command: list[str], port: int, clients: int, requests: int, texts: list[str]) -> dict:
    import httpx

    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server failed: {server.stderr.read().decode()[-2000:]}")
            try:
                httpx.post(f"{base}/predict", json={"text": "warm up"}, timeout=30).raise_for_status()
                break
            except httpx.HTTPError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        samples: list[tuple[float, float]] = []
        sampling = threading.Event()

        def sample_rss():
            started = time.perf_counter()
            while not sampling.is_set():
                samples.append((time.perf_counter() - started, rss_mb(server.pid)))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample_rss)
        latencies: list[float] = []
        errors = 0

        async def client(queue: asyncio.Queue, http) -> None:
            nonlocal errors
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                try:
                    reply = await http.post("/predict", json={"text": texts[index % len(texts)]})
                    if reply.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        async def run_all() -> float:
            queue: asyncio.Queue = asyncio.Queue()
            for index in range(requests):
                queue.put_nowait(index)
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
                started = time.perf_counter()
                await asyncio.gather(*(client(queue, http) for _ in range(clients)))
                return time.perf_counter() - started

        sampler.start()
        seconds = asyncio.run(run_all())
        sampling.set()
        sampler.join()
    finally:
        server.terminate()
        server.wait(timeout=60)
    latencies.sort()

    def percentile(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]

    memory = [mb for _, mb in samples]

    def rss_at(fraction: float) -> float:  # warm-up fills the kernels' per-shape caches; after it, RSS should stay put
        return memory[max(0, int(len(memory) * fraction) - 1)] if memory else 0.0

    return {
        "requests_per_second": requests / seconds,
        "p50": percentile(50),
        "p95": percentile(95),
        "p99": percentile(99),
        "errors": errors,
        "rss_early": rss_at(0.1),
        "rss_half": rss_at(0.5),
        "rss_end": memory[-1] if memory else 0.0,
        "rss_peak": max(memory) if memory else 0.0,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    os.environ.setdefault("BERTFIT_DATA_DIR", str(REPO.parent / "shared" / "data"))

    with tempfile.TemporaryDirectory(prefix="bertfit-deploy-") as folder:
        work = Path(folder)
        run = work / "run"
        bertfit("train", "--output", str(run), *TRAIN)
        exports = onnx_rows(run, work)
        profile = onnx_profile(work / "fp32")
        sys.path.insert(0, str(REPO))
        from bertfit.data import sources

        texts = sources.load_splits("sst2").frames["validation"]["sentence"].tolist()
        naive_script = work / "naive_server.py"
        naive_script.write_text(NAIVE_SERVER)
        servers = {}
        port = free_port()
        servers["naive: FastAPI + pipeline() per request"] = load(
            [sys.executable, str(naive_script), str(run), str(port)], port, args.clients, args.requests, texts
        )
        for name, folder_served, extra in (
            ("bertfit serve (torch)", run, []),
            ("bertfit serve (torch, --workers 1)", run, ["--workers", "1"]),
            ("bertfit serve (ONNX int8)", work / "int8", []),
        ):
            port = free_port()
            command = [sys.executable, "-m", "bertfit", "serve", str(folder_served), "--port", str(port), *extra]
            servers[name] = load(command, port, args.clients, args.requests, texts)
    lines = [
        f"- machine: {sections.machine()}",
        f"- command: `python benchmarks/deploy.py --clients {args.clients} --requests {args.requests}`; the run: "
        f"`bertfit train {' '.join(TRAIN)}`",
        "",
        "ONNX export, scored on SST-2 validation (872 sentences) through `bertfit eval` (batch 64, length-sorted); "
        "labels compared with torch's on every sentence through `bertfit predict`:",
        "",
        "| runtime | accuracy | samples/s | labels equal to torch fp32 | labels equal to torch (run's precision) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['runtime']} | {r['accuracy']:.4f} | {r['samples_per_second']:.1f} | {r['torch fp32']:.2%} | "
        f"{r[RUN_PRECISION]:.2%} |"
        for r in exports
    ]
    torch_fp32 = next(r for r in exports if r["runtime"] == "torch fp32")["samples_per_second"]
    shares = ", ".join(f"{op} {share:.0%}" for op, share in profile["shares"].items())
    lines += [
        "",
        f"onnxruntime fp32 by its own profiler: {shares} of kernel time. Its matrix products alone take "
        f"{profile['matmul_ms_per_sentence']:.2f} ms per sentence (all kernels {profile['kernel_ms_per_sentence']:.2f}"
        f"); 1.5x torch fp32's {torch_fp32:.1f} sentences/s leaves {1000 / (1.5 * torch_fp32):.2f} ms for everything.",
    ]
    lines += [
        "",
        f"HTTP load on loopback: {args.clients} concurrent clients, {args.requests:,} one-sentence requests:",
        "",
        "| server | requests/s | p50 ms | p95 ms | p99 ms | errors | RSS MB at 10% / 50% / end / peak |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {name} | {r['requests_per_second']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | "
        f"{r['errors']} | {r['rss_early']:.0f} / {r['rss_half']:.0f} / {r['rss_end']:.0f} / {r['rss_peak']:.0f} |"
        for name, r in servers.items()
    ]
    sections.append("serving and export", lines)


if __name__ == "__main__":
    main()
