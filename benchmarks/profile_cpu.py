"""Where a bertfit training step spends its time: torch.profiler over a short run, grouped by kind of work.

python benchmarks/profile_cpu.py [--steps 30] [--batch-size 32] [--data sst2] [--max-length 128]
"""

import argparse
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GROUPS = {
    "matmul (linear layers, attention)": (
        "addmm",
        "mm",
        "bmm",
        "matmul",
        "linear",
        "baddbmm",
        "scaled_dot_product",
        "_flash",
        "_efficient_attention",
    ),
    "elementwise and normalisation": (
        "gelu",
        "layer_norm",
        "native_layer_norm",
        "softmax",
        "dropout",
        "add",
        "mul",
        "div",
        "tanh",
        "copy_",
        "fill_",
        "where",
        "masked",
        "native_dropout",
        "bernoulli",
    ),
    "optimizer (AdamW)": ("adam", "_foreach", "lerp", "sqrt", "addcdiv", "addcmul"),
    "embedding": ("embedding",),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", default="sst2")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("BERTFIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    from torch.profiler import ProfilerActivity, profile

    from bertfit.cli import fit as train
    from bertfit.config import build_config

    cfg = build_config(
        None,
        {
            "model": "minilm",
            "data": args.data,
            "output": tempfile.mkdtemp(),
            "max_steps": args.steps,
            "eval_every": args.steps,
            "max_eval_samples": 64,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "max_train_samples": 4000,
        },
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        summary = train(cfg, overwrite=True)
    totals: dict = defaultdict(float)
    for event in prof.key_averages():
        name = event.key.lower()
        group = next((g for g, keys in GROUPS.items() if any(k in name for k in keys)), "other ops")
        totals[group] += event.self_cpu_time_total / 1e6
    all_ops = sum(totals.values())
    print(
        f"train {summary['train']['train_seconds']:.1f} s for {args.steps} steps "
        f"({summary['train']['samples_per_second']:.1f} samples/s, padding {summary['train']['padding_ratio']:.1%})"
    )
    for group, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {group:38s} {seconds:7.2f} s  {seconds / all_ops:6.1%}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
