"""The one rule for everything bertfit writes: only inside what it owns, and only after proving ownership.

A run folder is bertfit's to write when
- its location is safe: never `/`, the home folder, the working directory, nor a folder that holds (or is) the
  data or the model;
- one process holds it (`fcntl.flock` on a lock file holding the pid; the kernel drops it when the process dies,
  so a killed run never leaves a folder locked);
- and each path it replaces or removes is proven bertfit's (`RunFolder.target`, the function every write in a run
  folder goes through): the folder's marker lists it, it has the shape of a path bertfit writes (`KINDS`: a marker
  is data from disk and is never trusted to name anything else, like `../elsewhere` or `/home`), and no link lies
  on the way to it. The marker lists every file and folder, at every depth, so a user's `plots/mine.png` or
  `checkpoints/notes.txt` is never bertfit's. `--overwrite` removes exactly the proven paths, and a folder holding
  anything else is not overwritten at all.

A file outside any run folder that the user names for bertfit to write (`predict --output`) goes through
`claim_file`: never an input, never inside a run folder, and an existing file only with `--overwrite`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from bertfit.errors import BertfitError
from bertfit.files import TEMP_PREFIX, atomic_write, follow_umask, writing

LOCK = ".bertfit.lock"
MARKER = ".bertfit-run.json"
MARKER_VERSION = 2
BOOKKEEPING = ".bertfit"  # the lock, the marker and temporary files all start with this

# The shapes of the paths bertfit writes in a run folder, relative to it, one pattern per path component.
KINDS = (
    # the run's records and reports
    "recipe.yaml",
    "log.jsonl",
    "metrics.json",
    "results.md",
    "data_profile.json",
    "diagnosis.json",
    "mislabeled.jsonl",
    "README.md",
    "plots",
    "plots/*.png",
    "checkpoints",
    "checkpoints/step-*",
    "checkpoints/damaged-step-*",
    "checkpoints/*step-*/*",
    "tensorboard",
    "tensorboard/events.out.tfevents.*",
    "tensorboard/*",
    "tensorboard/*/events.out.tfevents.*",
    # what save_pretrained writes for a model, its tokenizer, a LoRA adapter or an ONNX export (file names the
    # libraries choose, so shapes rather than a list)
    "*.json",
    "*.safetensors",
    "*.model",
    "*.jinja",
    "*.onnx",
    "*.onnx.data",
    "vocab.txt",
    "merges.txt",
    # method setfit: SetFit's layout (bertfit.engine.fewshot), the encoder and tokenizer in body/
    "body",
    "body/*.json",
    "body/*.safetensors",
    "body/*.model",
    "body/*.jinja",
    "body/vocab.txt",
    "body/merges.txt",
    "1_Pooling",
    "1_Pooling/config.json",
    "model_head.pkl",
    # bertfit review: the decisions, appended one by one, and the corrected copy of the training split
    "review",
    "review/decisions.jsonl",
    "review/train.corrected.jsonl",
)


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def check_location(out: Path, protected: dict[str, Path | None]) -> None:
    """Refuse outputs that could hold the user's own files: `protected` maps a description to a path."""
    where = out.resolve()
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
    run = _inside_a_run(where)
    if run is not None:
        raise BertfitError(
            f"output '{out}' lies inside the run folder '{run}', whose files are the run's own; choose a folder "
            "outside it"
        )
    for what, path in protected.items():
        if path is not None and _contains(where, path.expanduser().resolve()):
            raise BertfitError(
                f"output '{out}' is or contains {what} ({path}); bertfit never writes over its "
                "inputs: choose another --output"
            )


# What bertfit before marker version 2 wrote inside its folders, name for name.
VERSION_1_FILES = (
    "plots/loss.png",
    "plots/metrics.png",
    "plots/confusion.png",
    "plots/entities.png",
    "plots/lengths.png",
    "checkpoints/step-*",
    "checkpoints/damaged-step-*",
    "checkpoints/*step-*/model.safetensors",
    "checkpoints/*step-*/training_state.pt",
    "checkpoints/*step-*/recipe.yaml",
    "tensorboard/events.out.tfevents.*",
    "tensorboard/*/events.out.tfevents.*",
    "tensorboard/*",
)


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    parts = PurePosixPath(rel).parts
    return any(
        len(shape) == len(parts) and all(fnmatchcase(p, s) for p, s in zip(parts, shape))
        for shape in (pattern.split("/") for pattern in patterns)
    )


def is_kind(rel: str) -> bool:
    """A relative path of a shape bertfit writes: plain names (no `..`, no root), matching one of KINDS."""
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or any(p in ("", ".", "..") or "\\" in p for p in parts):
        return False
    if str(PurePosixPath(*parts)) != rel:  # `a//b`, `a/./b`, a trailing slash: not how bertfit names anything
        return False
    return _matches(rel, KINDS)


def _linked(root: Path, rel: str) -> bool:
    """A link anywhere on the way from the run folder to `rel`: bertfit never makes links, so such a path is
    never its own (and following it could lead anywhere)."""
    here = root
    for part in PurePosixPath(rel).parts:
        here = here / part
        try:
            if stat.S_ISLNK(os.lstat(here).st_mode):
                return True
        except FileNotFoundError:
            return False
    return False


def _is_run(folder: Path) -> bool:
    return (folder / MARKER).is_file() or ((folder / "recipe.yaml").is_file() and (folder / "log.jsonl").is_file())


def _read_marker(folder: Path) -> tuple[set[str], int | None]:
    """The paths the marker lists, kept only where they have a shape bertfit writes, and its version (None: no
    marker, so nothing here is provably bertfit's)."""
    marker = folder / MARKER
    if not marker.is_file():
        return set(), None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        listed = data["owned"]
        if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
            raise TypeError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError):
        raise BertfitError(
            f"run folder '{folder}' has a damaged {MARKER}; move the folder's contents away by hand or choose "
            "another --output"
        ) from None
    owned, version = {name for name in listed if is_kind(name)}, data.get("version", 1)
    if version < MARKER_VERSION:
        # Markers before version 2 listed top-level names only: what lies in their folders is bertfit's where it
        # is exactly what that version wrote there (its plot names, its checkpoint files), so a plot of the
        # user's in plots/ stays theirs.
        for name in [n for n in owned if (folder / n).is_dir()]:
            owned |= {rel for rel in _walk(folder, name) if _matches(rel, VERSION_1_FILES)}
    return {name for name in owned if not _linked(folder, name)}, version


def require_run(path: Path) -> None:
    if not path.is_dir() or not _is_run(path):
        raise BertfitError(
            f"'{path}' is not a bertfit run folder (no recipe.yaml and log.jsonl); give the --output folder of a "
            "`bertfit train`"
        )


def _walk(root: Path, rel: str) -> Iterator[str]:
    """Every path under `rel` (not following links), as paths relative to `root`."""
    for child in sorted((root / rel).iterdir()):
        child_rel = f"{rel}/{child.name}"
        yield child_rel
        if child.is_dir() and not child.is_symlink():
            yield from _walk(root, child_rel)


def foreign_paths(folder: Path) -> list[str]:
    """What in `folder` bertfit cannot prove it wrote, at any depth (a foreign folder is named, not entered);
    bookkeeping files and bertfit's own temporary files aside."""
    if not folder.is_dir():
        return []
    owned, _ = _read_marker(folder)
    foreign = []
    pending = sorted(p.name for p in folder.iterdir() if not p.name.startswith(BOOKKEEPING))
    while pending:
        rel = pending.pop(0)
        if rel not in owned:
            foreign.append(rel)
        elif (folder / rel).is_dir():
            pending[:0] = sorted(
                f"{rel}/{p.name}" for p in (folder / rel).iterdir() if not p.name.startswith(TEMP_PREFIX)
            )
    return foreign


def _shown(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def check_contents(folder: Path, resume: bool, overwrite: bool) -> None:
    """What a run may do with a folder as it is now (read-only: the launcher calls this before workers start)."""
    if resume:
        if not _is_run(folder):
            raise BertfitError(
                f"'{folder}' is not a bertfit run folder (no recipe.yaml and log.jsonl); give the "
                "--output folder of an earlier `bertfit train`, or start without --resume"
            )
        if not (folder / MARKER).is_file():
            raise BertfitError(
                f"'{folder}' has no run marker ({MARKER}), so bertfit cannot tell its files from yours (a run "
                "copied by hand without it, or one written before markers); start a new run in another --output"
            )
        return
    entries = [p for p in folder.iterdir() if not p.name.startswith(BOOKKEEPING)] if folder.is_dir() else []
    if not entries:
        return
    if not overwrite:
        advice = (
            "pass --overwrite to replace the run in it, or --resume to continue it"
            if _is_run(folder)
            else "choose an empty or new folder"
        )
        raise BertfitError(f"output folder '{folder}' is not empty; {advice}")
    foreign = foreign_paths(folder)
    if foreign:
        raise BertfitError(
            f"output folder '{folder}' holds files bertfit did not write ({_shown(foreign)}); --overwrite only "
            "replaces bertfit's own runs: move them away or choose another --output"
        )


class RunFolder:
    """A run folder held by this process. Use as a context manager: the lock is released on exit, and a folder
    this process created but never wrote into is removed again (a refused run leaves nothing behind)."""

    def __init__(self, path: Path):
        self.path = path
        self.created = False
        self._lock: int | None = None
        self._owned: set[str] | None = None  # the marker's list, read once under the lock

    @classmethod
    def claim(
        cls, path: Path, resume: bool = False, overwrite: bool = False, protected: dict[str, Path | None] | None = None
    ) -> RunFolder:
        check_location(path, protected or {})
        folder = cls(path)
        try:
            with writing(
                "the run folder", path if path.exists() else path.parent, "free space or choose another --output"
            ):
                if not path.is_dir():
                    path.mkdir(parents=True)
                    folder.created = True
                folder._acquire()
            check_contents(path, resume, overwrite)
        except BaseException:
            folder.release()
            raise
        return folder

    @classmethod
    def update(cls, path: Path) -> RunFolder:
        """An existing run, for commands that rewrite its reports (card, doctor --write): they replace only what
        bertfit proves it wrote, so in a folder without a marker they add files but replace none."""
        require_run(path)
        folder = cls(path)
        try:
            with writing("the run folder", path, "free space or make the folder writable, and run the command again"):
                folder._acquire()
        except BaseException:
            folder.release()
            raise
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
        self._lock = fd  # held from here: `release` gives it back (and removes the file) whatever happens next
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())

    @property
    def owned(self) -> set[str]:
        if self._owned is None:
            self._owned = _read_marker(self.path)[0]
        return self._owned

    def begin(self, resume: bool, overwrite: bool) -> None:
        """Just before the first write: check again under the lock, clear the old run's paths, mark the folder."""
        check_contents(self.path, resume, overwrite)
        self._owned, version = _read_marker(self.path)
        for stale in self.path.glob(f"{TEMP_PREFIX}*"):  # left by a process killed mid-write
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
        if not resume:
            for name in sorted(n for n in self.owned if "/" not in n):
                self.remove(name)
            self._write_marker(set())
        elif version != MARKER_VERSION:  # a marker of an older version, written anew
            self._write_marker(self.owned)

    # ------------------------------------------------------------ the rule every write goes through

    def _prove(self, rel: str) -> Path:
        """The rule itself: `rel` has a shape bertfit writes, no link lies on the way to it, and whatever is there
        already is bertfit's."""
        if not is_kind(rel):
            raise ValueError(f"bertfit does not write '{rel}' in a run folder")  # a bug of ours, not the user's
        if _linked(self.path, rel):
            raise BertfitError(
                f"'{self.path / rel}' is or lies behind a link bertfit did not make; remove the link or choose "
                "another --output"
            )
        path = self.path / rel
        if (path.exists() or path.is_symlink()) and rel not in self.owned:
            raise BertfitError(
                f"'{path}' was not written by bertfit (its run marker does not list it); move it away and run the "
                "command again"
            )
        return path

    def check(self, rels: Iterable[str]) -> None:
        """Prove every path before the first is written, so a command that may not write one writes none."""
        for rel in rels:
            self._prove(rel)

    def target(self, rel: str) -> Path:
        """The path at which bertfit may write `rel` now (proven by `_prove`), recorded as its own before anything
        is written, so a crash mid-write leaves nothing unowned. Folders on the way are made (and owned) where
        missing."""
        path = self._prove(rel)
        parts = PurePosixPath(rel).parts
        new = [rel]
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if not (self.path / parent).is_dir():
                with writing(parent, self.path, "check the folder's permissions"):
                    (self.path / parent).mkdir()
                new.append(parent)
        self.own(new)
        return path

    def own(self, rels: Iterable[str]) -> None:
        new = set(rels) - self.owned
        if new:
            self._write_marker(self.owned | new)

    def write(self, rel: str, data: str | bytes, then: str = "free space and run the command again") -> None:
        atomic_write(self.target(rel), data, then)

    def replace(self, rel: str, produce: Callable[[Path], None], what: str, then: str) -> Path:
        """`produce` writes a file or folder at the temporary path it is given; it then replaces `rel` whole, so
        readers see the old one or the new one. A failure leaves the old one and nothing torn."""
        final = self.target(rel)
        tmp = final.with_name(f"{TEMP_PREFIX}{final.name}")
        with writing(what, final.parent, then, cleanup=tmp):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            produce(tmp)
            follow_umask(tmp)
            if tmp.is_dir():
                inside = [f"{rel}/{p.relative_to(tmp).as_posix()}" for p in sorted(tmp.rglob("*"))]
                unexpected = [p for p in inside if not is_kind(p)]
                if unexpected:
                    raise ValueError(f"bertfit does not write {unexpected} in a run folder")
                if final.is_dir():
                    self.remove(rel)
                self.own([rel, *inside])
            os.replace(tmp, final)
        return final

    def move_in(self, source: Path, what: str, then: str) -> None:
        """Each entry of the folder `source` (written by a library that names its own files) moved to the run
        folder's top level through `target`."""
        names = sorted(p.name for p in source.iterdir())
        with writing(what, self.path, then, cleanup=source):
            follow_umask(source)
            for name in names:
                os.replace(source / name, self.target(name))
            source.rmdir()

    def remove(self, rel: str) -> None:
        """Remove what bertfit wrote at `rel` (inside a folder, what it wrote there, deepest first); anything
        else stays, and so does a folder that still holds it."""
        removed = self._remove(rel)
        if removed:
            self._write_marker(self.owned - removed)

    def _remove(self, rel: str) -> set[str]:
        if rel not in self.owned or _linked(self.path, rel):
            return set()
        path, removed = self.path / rel, set()
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.name.startswith(TEMP_PREFIX):
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                else:
                    removed |= self._remove(f"{rel}/{child.name}")
            with contextlib.suppress(OSError):  # not empty: something not bertfit's is in it
                path.rmdir()
        else:
            path.unlink(missing_ok=True)
        return removed | ({rel} if not path.exists() else set())

    def rename(self, rel: str, new_rel: str) -> None:
        """Move bertfit's `rel` to `new_rel` (a damaged checkpoint set aside), both proven by the rule."""
        moved = {n for n in self.owned if n == rel or n.startswith(f"{rel}/")}
        if rel not in self.owned:
            raise BertfitError(f"'{self.path / rel}' was not written by bertfit; move it away by hand")
        destination = self.target(new_rel)
        if destination.is_dir():
            self.remove(new_rel)
        self.own(new_rel + n[len(rel) :] for n in moved)
        os.replace(self.path / rel, destination)
        self._write_marker(self.owned - moved)

    @contextlib.contextmanager
    def recording(self, rel: str) -> Iterator[Path]:
        """For a library that writes files of its own naming into the folder `rel` (TensorBoard): what appears
        there while inside becomes bertfit's; what was there before stays whose it was."""
        folder = self.target(rel)
        if not folder.exists():
            folder.mkdir()
        before = set(_walk(self.path, rel))
        try:
            yield folder
        finally:
            self.own(p for p in set(_walk(self.path, rel)) - before if is_kind(p) and not _linked(self.path, p))

    def _write_marker(self, owned: set[str]) -> None:
        atomic_write(self.path / MARKER, json.dumps({"version": MARKER_VERSION, "owned": sorted(owned)}, indent=1))
        self._owned = set(owned)

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path / LOCK)
            os.close(self._lock)
            self._lock = None
        if (
            self.created
            and self.path.is_dir()
            and not any(not p.name.startswith(BOOKKEEPING) for p in self.path.iterdir())
        ):
            # A folder this process made and nothing was written into (refused, or failed before its first file,
            # whose torn writes are cleaned up): removed again, so a failure leaves nothing behind.
            with contextlib.suppress(OSError):
                (self.path / MARKER).unlink(missing_ok=True)
                (self.path / LOCK).unlink(missing_ok=True)  # one this process made but could not lock
                self.path.rmdir()  # only if empty: a file someone put there meanwhile stays
            self.created = False

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind, error, trace) -> None:
        removed = isinstance(error, Exception) and not self.path.is_dir()  # asked before `release` tidies up
        self.release()
        if removed:
            # Whatever failed first (a write, a read of the run's own files), the cause is the folder's removal.
            raise BertfitError(
                f"the run folder '{self.path}' was removed while the run was writing it, so nothing of the run is "
                "left to resume; run the command again"
            ) from error


def _inside_a_run(path: Path) -> Path | None:
    for folder in path.parents:
        if _is_run(folder):
            return folder
    return None


def claim_file(path: Path, overwrite: bool, inputs: dict[str, Path | None], option: str = "--output") -> Path:
    """A file the user names for bertfit to write outside run folders: never one of the command's inputs, never
    inside a run folder (where it could replace a run's own files), and one that exists only with --overwrite."""
    where = Path(os.path.abspath(path))
    if where.is_dir():
        raise BertfitError(f"{option} '{path}' is a folder; give a file name such as '{where / 'predictions.jsonl'}'")
    if not where.parent.is_dir():
        raise BertfitError(f"the folder of {option} '{path}' does not exist; create '{where.parent}' first")
    resolved = where.resolve()
    for what, given in inputs.items():
        if given is not None and given.exists() and _contains(given.resolve(), resolved):
            raise BertfitError(f"{option} '{path}' is {what} ({given}); bertfit never writes over its inputs")
    run = _inside_a_run(resolved)
    if run is not None:
        raise BertfitError(
            f"{option} '{path}' lies inside the run folder '{run}', whose files are the run's own; write it "
            "somewhere else"
        )
    if (where.exists() or where.is_symlink()) and not overwrite:
        raise BertfitError(f"{option} '{path}' exists; pass --overwrite to replace it, or choose another file")
    if where.exists() and not where.is_file():
        raise BertfitError(f"{option} '{path}' is not a regular file; choose another file")
    return where
