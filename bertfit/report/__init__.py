"""The report layer: what a run tells its user after the fact (model card, plots, diagnosis, data inspection),
computed from the run's files alone. It imports nothing from the engine, so reports can be redrawn anywhere."""

from __future__ import annotations

from pathlib import Path

from bertfit.config import build_config
from bertfit.files import atomic_write_text, to_json, writing
from bertfit.records import read_events, read_run
from bertfit.report.card import model_card
from bertfit.report.diagnose import as_dicts, diagnose
from bertfit.report.plots import draw_all


def write_reports(folder: Path, finished: bool = True) -> list[dict]:
    """Diagnosis, plots and model card of a finished run; of a run that stopped without finishing (diverged), the
    diagnosis alone. Returns the findings."""
    if not finished:
        cfg = build_config(str(folder / "recipe.yaml"))
        findings = as_dicts(diagnose(read_events(folder / "log.jsonl"), None, {}, cfg))
        atomic_write_text(folder / "diagnosis.json", to_json(findings, indent=2))
        return findings
    cfg, events, summary, profile = read_run(folder)
    findings = as_dicts(diagnose(events, profile, summary, cfg))
    atomic_write_text(folder / "diagnosis.json", to_json(findings, indent=2))
    with writing("the plots", folder, "free space and run `bertfit card` on the run"):
        plots = draw_all(folder, events, summary, profile, cfg)
    atomic_write_text(folder / "README.md", model_card(cfg, events, summary, profile, findings, plots))
    return findings
