"""The report layer: what a run tells its user after the fact (model card, plots, diagnosis, data inspection),
computed from the run's files alone. It imports nothing from the engine, so reports can be redrawn anywhere."""

from __future__ import annotations

from pathlib import Path

from bertfit.config import build_config
from bertfit.files import to_json
from bertfit.report.card import model_card
from bertfit.report.diagnose import diagnose
from bertfit.report.plots import draw_all
from bertfit.runfiles import Diagnosis, Finding, read_events, read_run
from bertfit.runfolder import RunFolder, require_run


def diagnosis(run: Path) -> list[Finding]:
    """The findings of a finished run, read from its files; nothing is written."""
    require_run(run)
    files = read_run(run)
    return diagnose(files.events, files.profile, files.metrics, files.cfg)


def write_reports(folder: RunFolder, finished: bool = True, plots: bool = True) -> list[Finding]:
    """Diagnosis, plots and model card of a finished run; of a run that stopped without finishing (diverged), the
    diagnosis alone. `plots=False`: the card without the plots (a sweep's trials, whose plots only the winner's copy
    draws: about a second a trial). Every file through the run folder's ownership rule. Returns the findings."""
    if not finished:
        cfg = build_config(str(folder.path / "recipe.yaml"))
        findings = diagnose(read_events(folder.path / "log.jsonl"), None, None, cfg)
        folder.write("diagnosis.json", to_json(Diagnosis(findings=findings).dump(), indent=2))
        return findings
    files = read_run(folder.path)
    findings = diagnose(files.events, files.profile, files.metrics, files.cfg)
    drawn = draw_all(files.events, files.metrics, files.profile, files.cfg) if plots else {}
    card = model_card(files.cfg, files.events, files.metrics, files.profile, findings, list(drawn))
    folder.check(["diagnosis.json", "README.md", *drawn])  # all or nothing: one refused file writes none
    folder.write("diagnosis.json", to_json(Diagnosis(findings=findings).dump(), indent=2))
    for path, png in drawn.items():
        folder.write(path, png, "free space and run `bertfit card` on the run")
    folder.write("README.md", card)
    return findings
