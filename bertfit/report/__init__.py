"""The report layer: what a run tells its user after the fact (model card, plots, diagnosis, data inspection),
computed from the run's files alone. It imports nothing from the engine, so reports can be redrawn anywhere."""

from __future__ import annotations

from pathlib import Path

from bertfit.config import build_config
from bertfit.files import to_json
from bertfit.records import read_events, read_run
from bertfit.report.card import model_card
from bertfit.report.diagnose import as_dicts, diagnose
from bertfit.report.plots import draw_all
from bertfit.runfolder import RunFolder, require_run


def diagnosis(run: Path) -> list[dict]:
    """The findings of a finished run, read from its files; nothing is written."""
    require_run(run)
    cfg, events, summary, profile = read_run(run)
    return as_dicts(diagnose(events, profile, summary, cfg))


def write_reports(folder: RunFolder, finished: bool = True) -> list[dict]:
    """Diagnosis, plots and model card of a finished run; of a run that stopped without finishing (diverged), the
    diagnosis alone. Every file through the run folder's ownership rule. Returns the findings."""
    if not finished:
        cfg = build_config(str(folder.path / "recipe.yaml"))
        findings = as_dicts(diagnose(read_events(folder.path / "log.jsonl"), None, {}, cfg))
        folder.write("diagnosis.json", to_json(findings, indent=2))
        return findings
    cfg, events, summary, profile = read_run(folder.path)
    findings = as_dicts(diagnose(events, profile, summary, cfg))
    plots = draw_all(events, summary, profile, cfg)
    card = model_card(cfg, events, summary, profile, findings, list(plots))
    folder.check(["diagnosis.json", "README.md", *plots])  # all or nothing: one refused file writes none
    folder.write("diagnosis.json", to_json(findings, indent=2))
    for path, png in plots.items():
        folder.write(path, png, "free space and run `bertfit card` on the run")
    folder.write("README.md", card)
    return findings
