"""The GPU check (#28): one short run on a bare GPU machine that proves bertfit's CUDA path and writes the GPU rows.

GPU time comes in slots of minutes on a machine that holds only the project tree, so the check is one command whose
parts run most important first, each writing its lines to OUT as it ends (a cut-off keeps what was done):

  1. correctness on CUDA: a packed (FlexAttention) step against a padded one under bf16 autocast (loss and
     gradients); fp16 with the grad scaler skipping a step whose gradient is not finite (NonFiniteGuard, as the
     loop calls it); compiled against eager, and SIGKILLed runs resumed bit-exactly (bf16, packed), through the
     suite's own tests; host synchronisations during training counted by CUDA's sync debug mode;
  2. the minilm seed recipe (lr 2e-5, bs 16, linear, AMP) on the staged IMDB slice, the Trainer and bertfit side by
     side (`compare.py gpu`): end to end, evaluation and accuracy;
  3. bert-base-sized (random init) training throughput at bs 16 and 32: the Trainer, bertfit's default and
     `padding: packed`, with tokens/s and MFU (`compare.py throughput`);
  4. a profile of a few bertfit training steps: the GPU's kernel time against the wall time.

    python benchmarks/gpu_check.py stage          # here: wheels, IMDB slice -> .carry/gpu; minilm -> .carry/minilm-fp16
    device run, carry [".carry/gpu", ".carry/minilm-fp16"], timeout_s 480:  bash benchmarks/gpu_check.sh
    python benchmarks/gpu_check.py run OUT --dry-run  # the same parts on the CPU, tiny (tests/test_gpu_check.py)

OUT receives `check.log` (every part's output) and `rows.md` (the BENCHMARKS.md sections, to append here).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CARRY = REPO / ".carry" / "gpu"
# What bertfit's training needs that the device image lacks (its package list: ../.library/device/KINDS.md), for its
# Python 3.12 on x86-64; torch, transformers, pandas, pyarrow, scikit-learn, typer, rich and pytest are there.
WHEELS = (
    *("datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "pydantic==2.14.3", "pydantic_core==2.50.4"),
    *("annotated-types==0.8.0", "typing-inspection==0.4.5", "typing_extensions==4.16.0"),
    *("cleanlab==2.9.0", "termcolor==3.3.0"),
)
# The suite's tests that pick CUDA when there is one: run there, they check the CUDA path.
CUDA_TESTS = (
    "tests/test_batching.py::test_compiled_and_eager_give_the_same_loss",
    "tests/test_precision.py::test_a_bf16_cpu_run_resumes_bit_exactly",
    "tests/test_packing.py::test_a_packed_run_resumes_bit_exactly",
)
SIZES = {
    # About 8 minutes on an H100 in all: part 2 on 4,000 IMDB reviews (1 epoch, 512 tokens), part 3 on 80 steps.
    "gpu": {"train": 4000, "test": 1000, "epochs": 1, "max_length": 512, "layers": 12, "hidden": 768, "steps": 80},
    # One batch size (compare.py throughput runs 16 and 32 unless one is set): each is three training processes.
    "dry-run": {
        "train": 48,
        "test": 16,
        "epochs": 1,
        "max_length": 64,
        "layers": 2,
        "hidden": 64,
        "steps": 6,
        "throughput": ["batch_size=8"],
    },
}


class Report:
    """check.log and rows.md in OUT, each line written through as it comes."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.log, self.rows = out / "check.log", out / "rows.md"

    def line(self, text: str) -> None:
        print(text, flush=True)
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")

    def section(self, text: str) -> None:
        self.line(text)
        with open(self.rows, "a", encoding="utf-8") as handle:
            handle.write("\n" + text.rstrip("\n") + "\n")


def tiny_classifier(tokenizer, device):
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    return AutoModelForSequenceClassification.from_config(config).to(device).train()


def packed_against_padded(device) -> str:
    """One bf16-autocast step padded and packed (FlexAttention on a GPU): the same loss and gradients."""
    import numpy as np
    import pandas as pd
    import torch
    from transformers import AutoTokenizer

    from bertfit import models
    from bertfit.models import resolve_model
    from bertfit.tasks import build_task

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    texts = ["a short one", "a much longer example sentence with quite a few more words in it", "mid length", "ok"]
    task = build_task("classification", ["text"], "label", ["0", "1"], 64)
    features = task.encode(pd.DataFrame({"text": texts, "label": [0, 1, 1, 0]}), tokenizer)
    indices = np.array([1, 0, 2, 3])
    padded_model = tiny_classifier(tokenizer, device)
    packed_model = copy.deepcopy(padded_model)

    def step(model, batch, forward):
        labels = batch.pop("labels").to(device)
        batch = {key: value.to(device) for key, value in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = task.loss_sum(forward(model)(**batch).logits.float(), labels)
        loss.backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        return loss.item(), grads

    padded_loss, padded_grads = step(padded_model, task.collate(features, indices, pad_id=0), lambda m: m)
    flex = device.type == "cuda"
    packed_loss, packed_grads = step(
        packed_model, task.collate_packed(features, indices), lambda m: models.packed(m, task.labels_tokens, flex=flex)
    )
    cosine = float(torch.nn.functional.cosine_similarity(padded_grads, packed_grads, dim=0))
    relative = abs(packed_loss - padded_loss) / abs(padded_loss)
    if relative > 0.02 or cosine < 0.99:
        raise AssertionError(f"loss {padded_loss:.5f} padded vs {packed_loss:.5f} packed; gradient cosine {cosine:.5f}")
    attention = "FlexAttention" if flex else "the dense mask"
    return f"loss {padded_loss:.5f} padded, {packed_loss:.5f} packed ({attention}); gradient cosine {cosine:.5f}"


def fp16_skips_a_non_finite_step(device) -> str:
    """fp16 with the grad scaler, as the loop steps it: an inf gradient leaves the weights alone and halves the
    scale; the next, finite step moves them."""
    import torch
    from transformers import AutoTokenizer

    from bertfit.config import build_config
    from bertfit.engine.loop import NonFiniteGuard
    from bertfit.engine.setup import make_optimizer
    from bertfit.models import resolve_model

    model = tiny_classifier(AutoTokenizer.from_pretrained(resolve_model("minilm")), device)
    optimizer = make_optimizer(build_config(None, {"model": "minilm", "data": "imdb"}), model, 1e-3, 0.0)
    scaler = torch.amp.GradScaler(device.type)
    guard = NonFiniteGuard(device, 4, 3, 0)
    inputs = torch.randint(1000, 2000, (2, 16), device=device)

    def step(poison: bool) -> float:
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=torch.float16):
            loss = model(input_ids=inputs, labels=torch.tensor([0, 1], device=device)).loss
        scaler.scale(loss).backward()
        if poison:
            next(p for p in model.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        before = scaler.get_scale()
        guard.step(optimizer, scaler, norm)
        scaler.update()
        return before

    weights = [p.detach().clone() for p in model.parameters()]
    scale = step(poison=True)
    unchanged = all(torch.equal(a, p) for a, p in zip(weights, model.parameters(), strict=True))
    if not unchanged or scaler.get_scale() != scale / 2:
        raise AssertionError(
            f"an inf gradient changed the weights ({not unchanged}) or the scale ({scale} -> {scaler.get_scale()})"
        )
    step(poison=False)
    if all(torch.equal(a, p) for a, p in zip(weights, model.parameters(), strict=True)):
        raise AssertionError("a finite step after the skipped one left the weights unchanged")
    return f"the inf step was skipped (scale {scale:g} -> {scale / 2:g}), the next one applied"


def suite_tests(dry_run: bool) -> str:
    """The suite's CUDA-capable tests; a dry run only checks that they are still there."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS]
    done = subprocess.run(command + (["--collect-only"] if dry_run else []), cwd=REPO, capture_output=True, text=True)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    if done.returncode != 0:
        raise AssertionError(f"pytest exited {done.returncode}: {done.stdout[-3000:]}{done.stderr[-1000:]}")
    return tail


def host_synchronisations(device, data: str, size: dict) -> str:
    """A short fp16 bertfit run with CUDA's sync debug mode on: the calls that made the host wait for the GPU. On a
    CPU (the dry run) the same run, shorter, with nothing to count."""
    import warnings

    import torch

    from bertfit.cli import fit
    from bertfit.config import build_config

    cuda = device.type == "cuda"
    steps = 60 if cuda else 4
    out = Path(tempfile.mkdtemp(prefix="gpu-check-sync-")) / "run"
    recipe = {"model": "minilm", "data": data, "output": str(out), "method": "finetune", "test_split": "none"}
    recipe.update({"max_steps": steps, "eval_every": steps, "log_every": 20, "max_length": size["max_length"]})
    recipe.update({"max_train_samples": 2000, "max_eval_samples": 64, "precision": "fp16" if cuda else "auto"})
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(build_config(None, recipe), overwrite=True)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
    if not cuda:
        return f"no CUDA here: the {steps}-step run only, nothing to count"
    where: dict[str, int] = {}
    for warning in caught:
        if "synchroniz" in str(warning.message):
            key = f"{Path(warning.filename).name}:{warning.lineno}"
            where[key] = where.get(key, 0) + 1
    places = ", ".join(f"{key} ×{count}" for key, count in sorted(where.items(), key=lambda kv: -kv[1])[:8])
    counted = f"{sum(where.values())} synchronising calls in a {steps}-step run ({steps // 20} log lines, 1 evaluation)"
    return counted + (f": {places}" if places else "")


def compare(mode: str, sets: list[str], env: dict) -> str:
    command = [sys.executable, str(REPO / "benchmarks" / "compare.py"), mode, "--no-write"]
    command += [item for value in sets for item in ("--set", value)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise AssertionError(f"compare.py {mode} exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout[done.stdout.index("### ") :]


def profile(device, data: str, size: dict, model: str) -> str:
    """torch.profiler over a few steps of a bertfit run: the device's kernel time against the steps' wall time."""
    import torch
    from torch.profiler import ProfilerActivity

    from bertfit.cli import fit
    from bertfit.config import build_config

    steps = 10
    out = Path(tempfile.mkdtemp(prefix="gpu-check-profile-")) / "run"
    recipe = {"model": model, "data": data, "output": str(out), "max_steps": steps, "eval_every": steps}
    recipe["method"] = "finetune"
    recipe.update({"max_train_samples": 32 * steps, "max_eval_samples": 16, "batch_size": 32, "test_split": "none"})
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    started = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profiler:
        metrics = fit(build_config(None, {**recipe, "max_length": size["max_length"]}), overwrite=True).metrics
    wall = time.perf_counter() - started
    train_seconds = metrics.train.train_seconds
    events = profiler.key_averages()
    if device.type == "cuda":
        kernels = sum(e.self_device_time_total for e in events) / 1e6
        top = sorted(events, key=lambda e: -e.self_device_time_total)[:6]
        shown = ", ".join(f"{e.key[:40]} {e.self_device_time_total / 1e6:.2f} s" for e in top)
        share = kernels / train_seconds
        busy = f"GPU kernels {kernels:.2f} s against {train_seconds:.2f} s of training ({share:.0%} busy)"
    else:
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
        shown = ", ".join(f"{e.key[:40]} {e.self_cpu_time_total / 1e6:.2f} s" for e in top)
        busy = f"no CUDA: CPU operators only, {train_seconds:.2f} s of training"
    return f"{steps} steps of {model} at batch 32 ({wall:.1f} s with setup): {busy}; most time: {shown}"


def run(out: Path, dry_run: bool) -> int:
    import torch

    from bertfit.engine.device import default_device, hardware

    report, size = Report(out), SIZES["dry-run" if dry_run else "gpu"]
    device = default_device()
    if not dry_run and device.type != "cuda":
        report.line("no CUDA device: run with --dry-run on a CPU")
        return 2
    data = os.environ.get("BERTFIT_DATA_DIR", "")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    report.line(
        f"# GPU check {datetime.datetime.now().isoformat(timespec='seconds')} on {hardware(device)}, torch "
        f"{torch.__version__}; data from {data or '(default)'}{' (dry run)' if dry_run else ''}"
    )
    failed = 0
    checks = [
        ("packed against padded, bf16", lambda: packed_against_padded(device)),
        ("fp16 grad scaler skips a non-finite step", lambda: fp16_skips_a_non_finite_step(device)),
        ("the suite's CUDA tests", lambda: suite_tests(dry_run)),
        ("host synchronisations while training", lambda: host_synchronisations(device, "imdb", size)),
    ]
    lines = [
        f"### GPU check, correctness: {datetime.date.today().isoformat()}",
        "",
        f"- machine: {hardware(device)}",
        "",
    ]
    for name, check in checks:
        started = time.perf_counter()
        try:
            said, verdict = check(), "ok"
        except Exception as error:  # a failed check is reported and the next one runs
            failed += 1
            said, verdict = f"{type(error).__name__}: {error}", "FAILED"
            report.line(traceback.format_exc())
        lines.append(f"- {name}: **{verdict}** ({time.perf_counter() - started:.0f} s): {said}")
        report.line(lines[-1])
    report.section("\n".join(lines))
    minilm = "minilm"  # on the device, gpu_check.sh points the alias at the staged fp16 copy
    parts = [
        (
            "gpu",
            [
                f"model={minilm}",
                "method=finetune",  # the seed recipe, also on the dry run's few dozen reviews
                f"max_train_samples={size['train']}",
                f"epochs={size['epochs']}",
                f"max_length={size['max_length']}",
            ],
        ),
        (
            "throughput",
            [
                f"tokenizer={minilm}",
                f"layers={size['layers']}",
                f"hidden={size['hidden']}",
                f"max_steps={size['steps']}",
                f"max_length={size['max_length']}",
                *size.get("throughput", []),
            ],
        ),
    ]
    for mode, sets in parts:
        started = time.perf_counter()
        try:
            report.section(compare(mode, sets, env))
        except Exception as error:
            failed += 1
            report.line(f"compare.py {mode}: FAILED ({time.perf_counter() - started:.0f} s): {error}")
    try:
        report.section(
            f"### GPU check, profile: {datetime.date.today().isoformat()}\n\n- {profile(device, 'imdb', size, minilm)}"
        )
    except Exception as error:
        failed += 1
        report.line(f"profile: FAILED: {error}\n{traceback.format_exc()}")
    report.line(f"# done: {failed} part(s) failed")
    return 1 if failed else 0


def stage(dest: Path, train: int, test: int, wheels: bool) -> None:
    """What the device machine lacks, into .carry/ (ignored) within the 64 MiB a call carries: the wheels, a seeded
    IMDB slice (`dest/data/imdb`), the suite's sample files and, beside it, the fp16 minilm of
    ../shared/tools/device_prep.sh (about 56 MB with the project tree)."""
    import pandas as pd

    shared = Path(os.environ.get("BERTFIT_SHARED_DATA", REPO.parent / "shared" / "data"))
    imdb = dest / "data" / "imdb"
    imdb.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        frame = pd.read_parquet(shared / "imdb" / f"{split}.parquet")
        frame.sample(n=min(rows, len(frame)), random_state=42).to_parquet(imdb / f"{split}.parquet", index=False)
    shutil.copytree(shared / "samples", dest / "data" / "samples", dirs_exist_ok=True)  # the suite's tests read them
    if wheels:
        platforms = [
            f"--platform={tag}" for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
        ]
        pip = [sys.executable, "-m", "pip"]
        subprocess.run(
            [
                *pip,
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.12",
                "--implementation",
                "cp",
                *platforms,
                "-d",
                str(dest / "whl"),
                *WHEELS,
            ],
            check=True,
        )
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(dest / "whl"), "seqeval==1.2.2"], check=True)
        subprocess.run([str(REPO.parent / "shared" / "tools" / "device_prep.sh"), "model"], cwd=REPO, check=True)
        subprocess.run(["du", "-sh", str(dest), str(REPO / ".carry" / "minilm-fp16")], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    staging = commands.add_parser("stage", help="gather what the device machine needs into .carry/")
    staging.add_argument("--dest", type=Path, default=CARRY)
    staging.add_argument("--train", type=int, default=SIZES["gpu"]["train"])
    staging.add_argument("--test", type=int, default=SIZES["gpu"]["test"])
    staging.add_argument("--no-wheels", action="store_true", help="the data slice only (no wheels, no model)")
    running = commands.add_parser("run", help="the check, writing check.log and rows.md into OUT")
    running.add_argument("out", type=Path)
    running.add_argument("--dry-run", action="store_true", help="on the CPU at tiny sizes")
    args = parser.parse_args()
    if args.command == "stage":
        stage(args.dest, args.train, args.test, wheels=not args.no_wheels)
        return
    sys.exit(run(args.out, args.dry_run))


if __name__ == "__main__":
    main()
