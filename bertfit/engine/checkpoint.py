"""Checkpoints that survive crashes: written to a temp folder, fsynced, renamed; the best one is never rotated away."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from bertfit.config import RESULT_FIELDS, Config
from bertfit.errors import BertfitError, first_line
from bertfit.runfolder import RunFolder

FOLDER = "checkpoints"  # in the run folder
PREFIX = "step-"
STATE_FILE = "training_state.pt"
# The layout of the training state; a checkpoint of another layout is named, not half-read.
FORMAT = 2
WEIGHTS_FILE = "model.safetensors"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gauss": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Damaged(BertfitError):
    """A checkpoint whose files cannot be read back (torn, truncated, overwritten with junk)."""


def save(
    run_folder: RunFolder,
    step: int,
    model: torch.nn.Module,
    training_state: dict,
    recipe: Config,
    keep: int,
    best_step: int | None,
) -> Path:
    """Write checkpoint `step` atomically, then drop old ones but the newest `keep` and the best."""

    def write(tmp: Path) -> None:
        tmp.mkdir()
        save_model(model, str(tmp / WEIGHTS_FILE))
        torch.save(training_state, tmp / STATE_FILE)
        (tmp / "recipe.yaml").write_text(recipe.to_yaml())
        for file in tmp.iterdir():
            _fsync(file)

    name = f"{PREFIX}{step:08d}"
    final = run_folder.replace(
        f"{FOLDER}/{name}",
        write,
        f"checkpoint {name}",
        "free space and resume with --resume (the previous checkpoint is intact)",
    )
    _fsync(final.parent)
    _rotate(run_folder, keep, best_step)
    return final


def set_aside(run_folder: RunFolder, path: Path) -> Path:
    """A damaged checkpoint keeps its files for a post-mortem but no longer counts as complete."""
    run_folder.rename(f"{FOLDER}/{path.name}", f"{FOLDER}/damaged-{path.name}")
    return path.with_name(f"damaged-{path.name}")


def _rotate(run_folder: RunFolder, keep: int, best_step: int | None) -> None:
    checkpoints = complete(run_folder.path / FOLDER)
    protected = {f"{PREFIX}{best_step:08d}"} if best_step is not None else set()
    for old in checkpoints[:-keep]:
        if old.name not in protected:
            run_folder.remove(f"{FOLDER}/{old.name}")


def complete(folder: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a torn write never gets its final name)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file() and (p / WEIGHTS_FILE).is_file()
    )


def load_state(path: Path) -> dict:
    """Only tensors and plain containers: a pickle that would run code is refused, not skipped."""
    try:
        state = torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise BertfitError(
                f"checkpoint '{path}' holds objects other than tensors and plain values "
                f"({first_line(err, 80)}); bertfit only loads its own checkpoints"
            ) from None
        raise Damaged(f"checkpoint '{path}' is damaged ({first_line(err, 80)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise Damaged(f"checkpoint '{path}' is damaged ({first_line(err, 80)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format", 1) if isinstance(state, dict) else "unknown"
        raise BertfitError(
            f"checkpoint '{path}' was written by another bertfit version (format {found}, this one "
            f"reads {FORMAT}); resume it with that version, or start the run again"
        )
    return state


def load_weights(path: Path, model: torch.nn.Module) -> None:
    try:
        load_model(model, str(path / WEIGHTS_FILE), device=str(next(model.parameters()).device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise Damaged(f"checkpoint '{path}' has damaged weights ({first_line(err, 80)})") from None


def recipe_differences(saved: dict, current: Config) -> list[str]:
    now = current.model_dump()
    return [
        f"{key}: {saved.get(key)!r} in the checkpoint, {now.get(key)!r} now"
        for key in RESULT_FIELDS
        if saved.get(key) != now.get(key)
    ]


def saved_recipe(path: Path) -> dict:
    try:
        recipe = yaml.safe_load((path / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise Damaged(f"checkpoint '{path}' has a damaged recipe.yaml ({first_line(err, 80)})") from None
    if not isinstance(recipe, dict):
        raise Damaged(f"checkpoint '{path}' has a damaged recipe.yaml")
    return recipe
