"""What every benchmark section of BENCHMARKS.md starts and ends with: a dated title, the machine, and the append."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    import torch

    return (
        f"CPU {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}"
    )


def append(title: str, lines: list[str]) -> None:
    """Print the section `### title: date` with `lines` under it, and append it to BENCHMARKS.md."""
    text = "\n".join([f"### {title}: {datetime.date.today().isoformat()}", "", *lines]) + "\n"
    print(text)
    with open(BENCHMARKS, "a", encoding="utf-8") as handle:
        handle.write("\n" + text)
