"""The run folder as bertfit's own: a place it may write, held by one process, cleared only of what it wrote.

Three rules keep users' files safe:
- location: the output is never `/`, the home folder, the working directory, nor a folder that holds (or is)
  the data or the model;
- a lock: one process writes a run folder at a time (`fcntl.flock` on a lock file holding the pid; the kernel
  drops it when the process dies, so a killed run never leaves a folder locked);
- ownership: a marker file lists the entries bertfit wrote; `--overwrite` removes those and nothing else, and
  a folder holding anything bertfit did not write is never overwritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from bertfit.errors import BertfitError
from bertfit.files import TEMP_PREFIX, atomic_write_text, writing

LOCK = ".bertfit.lock"
MARKER = ".bertfit-run.json"
BOOKKEEPING = ".bertfit"  # the lock, the marker and temporary files all start with this
# What bertfit wrote before runs carried a marker: such folders are still recognised as runs.
LEGACY_ENTRIES = {
    "recipe.yaml",
    "log.jsonl",
    "metrics.json",
    "results.md",
    "data_profile.json",
    "diagnosis.json",
    "README.md",
    "plots",
    "checkpoints",
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "generation_config.json",
}


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def check_location(out: Path, protected: dict[str, Path | None]) -> None:
    """Refuse outputs that could hold the user's own files: `protected` maps a description to a path."""
    where = out.expanduser().resolve()
    if where.exists() and not where.is_dir():
        raise BertfitError(f"output '{out}' is a file; choose a folder with --output")
    named = {
        "the file system root": Path("/"),
        "your home folder": Path.home().resolve(),
        "the working directory": Path.cwd().resolve(),
    }
    for what, path in named.items():
        if _contains(where, path):
            raise BertfitError(
                f"output '{out}' is or contains {what} ({path}); choose a new folder for the run, "
                "e.g. --output runs/NAME"
            )
    for what, path in protected.items():
        if path is not None and _contains(where, path.expanduser().resolve()):
            raise BertfitError(
                f"output '{out}' is or contains {what} ({path}); bertfit never writes over its "
                "inputs: choose another --output"
            )


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(BOOKKEEPING)} if folder.is_dir() else set()


def _is_run(folder: Path) -> bool:
    return (folder / MARKER).is_file() or ((folder / "recipe.yaml").is_file() and (folder / "log.jsonl").is_file())


def owned_entries(folder: Path) -> set[str]:
    marker = folder / MARKER
    if marker.is_file():
        try:
            return set(json.loads(marker.read_text(encoding="utf-8"))["owned"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise BertfitError(
                f"run folder '{folder}' has a damaged {MARKER}; move the folder's contents "
                "away by hand or choose another --output"
            ) from None
    if _is_run(folder):
        return _entries(folder) & LEGACY_ENTRIES
    return set()


def check_contents(folder: Path, resume: bool, overwrite: bool) -> None:
    """What a run may do with a folder as it is now (read-only: the launcher calls this before workers start)."""
    entries = _entries(folder)
    if resume:
        if not _is_run(folder):
            raise BertfitError(
                f"'{folder}' is not a bertfit run folder (no recipe.yaml and log.jsonl); give the "
                "--output folder of an earlier `bertfit train`, or start without --resume"
            )
        return
    if not entries:
        return
    if not overwrite:
        advice = (
            "pass --overwrite to replace the run in it, or --resume to continue it"
            if _is_run(folder)
            else "choose an empty or new folder"
        )
        raise BertfitError(f"output folder '{folder}' is not empty; {advice}")
    foreign = sorted(entries - owned_entries(folder))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise BertfitError(
            f"output folder '{folder}' holds files bertfit did not write ({shown}); --overwrite only "
            "replaces bertfit's own runs: move them away or choose another --output"
        )


class RunFolder:
    """A run folder held by this process. Use as a context manager: the lock is released on exit, and a folder
    this process created but never wrote into is removed again (a refused run leaves nothing behind)."""

    def __init__(self, path: Path):
        self.path = path
        self.created = False
        self.began = False
        self._lock: int | None = None

    @classmethod
    def claim(
        cls, path: Path, resume: bool = False, overwrite: bool = False, protected: dict[str, Path | None] | None = None
    ) -> RunFolder:
        check_location(path, protected or {})
        folder = cls(path)
        with writing("the run folder", path.parent if not path.exists() else path, "choose a writable --output"):
            if not path.is_dir():
                path.mkdir(parents=True)
                folder.created = True
            folder._acquire()
        try:
            check_contents(path, resume, overwrite)
        except BaseException:
            folder.release()
            raise
        return folder

    @classmethod
    def update(cls, path: Path) -> RunFolder:
        """An existing run, for commands that rewrite its reports (card, doctor)."""
        if not path.is_dir() or not _is_run(path):
            raise BertfitError(
                f"'{path}' is not a bertfit run folder (no recipe.yaml and log.jsonl); give the "
                "--output folder of a `bertfit train`"
            )
        folder = cls(path)
        with writing("the run folder", path, "check the folder's permissions"):
            folder._acquire()
        folder.began = True
        return folder

    def _acquire(self) -> None:
        lock_path = self.path / LOCK
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise BertfitError(
                    f"run folder '{self.path}' is in use by another bertfit process (pid {holder}); "
                    "wait for it to finish or choose another --output"
                ) from None
            # The holder before us may have removed the lock file between our open and our lock: then we hold
            # a lock on a file nobody else can see, and must take the one that is there now.
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd

    def begin(self, resume: bool, overwrite: bool) -> None:
        """Just before the first write: check again under the lock, clear the old run's entries, mark the folder."""
        check_contents(self.path, resume, overwrite)
        for stale in self.path.glob(f"{TEMP_PREFIX}*"):  # left by a process killed mid-write
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        if not resume:
            for name in owned_entries(self.path):
                target = self.path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            self._write_marker(set())
        elif not (self.path / MARKER).is_file():  # a run from before markers: adopt what it wrote
            self._write_marker(owned_entries(self.path))
        self.began = True

    def own(self, names: Iterable[str]) -> None:
        """Record entries bertfit wrote (top-level names), so a later --overwrite may remove exactly these."""
        new = {name for name in names if not name.startswith(BOOKKEEPING)}
        owned = owned_entries(self.path)
        if not new <= owned:
            self._write_marker(owned | new)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Entries that appear inside (from libraries that choose their own file names) become bertfit's."""
        before = _entries(self.path)
        try:
            yield
        finally:
            self.own(_entries(self.path) - before)

    def write_text(self, name: str, text: str, then: str = "free space and run the command again") -> None:
        self.own([name])
        atomic_write_text(self.path / name, text, then)

    def _write_marker(self, owned: set[str]) -> None:
        atomic_write_text(self.path / MARKER, json.dumps({"owned": sorted(owned)}, indent=1))

    def release(self) -> None:
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path / LOCK)
        os.close(self._lock)
        self._lock = None
        if self.created and not self.began:
            with contextlib.suppress(OSError):
                (self.path / MARKER).unlink(missing_ok=True)
                self.path.rmdir()  # only if empty: a file someone put there meanwhile stays

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
