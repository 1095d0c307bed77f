"""What every benchmark section of BENCHMARKS.md starts and ends with: a dated title, the machine, and the append."""

from __future__ import annotations

import datetime
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    """The hardware as a run's card names it, and torch's version."""
    import torch

    from bertfit.engine.device import default_device, hardware

    return f"{hardware(default_device())}; torch {torch.__version__}"


def append(title: str, lines: list[str]) -> None:
    """Print the section `### title: date` with `lines` under it, and append it to BENCHMARKS.md."""
    text = "\n".join([f"### {title}: {datetime.date.today().isoformat()}", "", *lines]) + "\n"
    print(text)
    with open(BENCHMARKS, "a", encoding="utf-8") as handle:
        handle.write("\n" + text)
