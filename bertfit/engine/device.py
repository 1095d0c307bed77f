"""Where the run computes: the process group, the device, and the numeric precision."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bertfit.errors import BertfitError

# Dense bf16 matmul peaks from the vendors' datasheets, for model FLOP utilisation; a GPU not listed gets no MFU
# figure rather than a wrong one. Checked in name order, so "H100 PCIe" is found before "H100".
GPU_PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    host_group: object = None  # a gloo group for host-side agreement; None: the default group is gloo already

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(choice: str = "auto") -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = default_device(choice)
    if world > 1 and device.type == "mps":
        raise BertfitError("training on several processes needs CUDA GPUs or CPUs (mps has no DDP); use --device cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        # Signals are agreed on every step; over NCCL that would make each step wait for the GPU.
        host_group = dist.new_group(backend="gloo") if world > 1 else None
        return Dist(rank, world, local_rank, host_group), torch.device("cuda", local_rank)
    return Dist(rank, world, local_rank), device


@contextlib.contextmanager
def main_first(ranks: Dist):
    """Rank 0 runs the block first; the others run it after (reading what rank 0 cached, e.g. the features)."""
    if ranks.enabled and not ranks.main:
        dist.barrier(group=ranks.host_group)
    yield
    if ranks.enabled and ranks.main:
        dist.barrier(group=ranks.host_group)


def default_device(choice: str = "auto") -> torch.device:
    """`auto`: a CUDA GPU, else Apple's GPU (mps), else the CPU; a device asked for by name must be there."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if choice == "auto":
        return torch.device(next(name for name, present in available.items() if present))
    if not available[choice]:
        found = ", ".join(name for name, present in available.items() if present)
        raise BertfitError(f"device '{choice}' is not available on this machine (found: {found}); use --device auto")
    return torch.device(choice)


def agreed(signum: int, ranks: Dist) -> int:
    """Every rank stops at the same step: a signal seen by any rank counts for all."""
    if not ranks.enabled:
        return signum
    received = torch.tensor([signum])
    dist.all_reduce(received, op=dist.ReduceOp.MAX, group=ranks.host_group)
    return int(received.item())


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: oneDNN multiplies bf16 natively there (1.4-2.4x fp32 here); elsewhere it is emulated."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, device: torch.device) -> str:
    if device.type != "cuda":
        if precision == "fp16":
            raise BertfitError("precision fp16 needs a CUDA GPU (no GPU found); use --precision fp32 or bf16")
        if precision == "auto":
            return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
        return precision
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def inference_precision(trained: str, device: torch.device) -> str:
    """Evaluate and predict as the run trained, except fp16, which needs a GPU."""
    return "fp32" if trained == "fp16" and device.type != "cuda" else trained


def autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(device)}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for model, peak in GPU_PEAK_FLOPS if model in name), None)


def release_free_memory() -> None:
    """Hand the memory the data phases freed (the tokenizer's lists, pandas temporaries) back to the system. glibc
    keeps freed heap pages for reuse, so without this a run carries its largest transient through every training
    step: about 140 MB per million rows after tokenizing. A no-op where the C library has no malloc_trim."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
