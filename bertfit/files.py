"""Writing files the way a run's guarantees need: whole or not at all, with a full or read-only disk reported in
one line, and JSON that other tools can read."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bertfit.errors import BertfitError, first_line

# What a full disk, a read-only file system or a missing permission looks like from the libraries that write for
# us: safetensors reports the Rust io::Error in its message, torch's zip writer only says "file write failed".
DISK_FULL_MARKERS = ("No space left", "StorageFull", "os error 28", "code: 28", "Disk quota")
READ_ONLY_MARKERS = ("Read-only file system", "ReadOnlyFilesystem", "os error 30", "code: 30")
DENIED_MARKERS = ("Permission denied", "PermissionDenied", "os error 13", "code: 13")
# Names bertfit gives its temporary files: a run folder's own bookkeeping, never mistaken for a user's file.
TEMP_PREFIX = ".bertfit-tmp-"


def write_failure(err: BaseException, folder: Path) -> str | None:
    """'disk full', 'read-only' or 'permission denied' when that is why a write failed, else None."""
    code = getattr(err, "errno", None)
    text = str(err)
    if code in (errno.ENOSPC, errno.EDQUOT) or any(m in text for m in DISK_FULL_MARKERS):
        return "disk full"
    if code == errno.EROFS or any(m in text for m in READ_ONLY_MARKERS):
        return "read-only file system"
    if code in (errno.EACCES, errno.EPERM) or any(m in text for m in DENIED_MARKERS):
        return "permission denied"
    if not isinstance(err, OSError):  # torch's writer hides the cause: ask the file system
        with contextlib.suppress(OSError):
            if shutil.disk_usage(folder).free < 1 << 20:
                return "disk full"
    return None


@contextlib.contextmanager
def writing(what: str, folder: Path, then: str, cleanup: Path | None = None) -> Iterator[None]:
    """Writes inside become one-line errors when the disk is full, read-only or forbidden; `cleanup` (a temp file
    or folder) is removed on any failure, so nothing torn is left to fill the disk."""
    try:
        yield
    except BaseException as err:
        # Asked before the cleanup: removing the torn file frees the very space whose lack caused the failure.
        reason = write_failure(err, folder) if isinstance(err, Exception) else None
        if cleanup is not None:
            if cleanup.is_dir():
                shutil.rmtree(cleanup, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(cleanup)
        if isinstance(err, BertfitError) or not isinstance(err, Exception):
            raise
        if reason is None and isinstance(err, OSError):
            reason = err.strerror or first_line(err)
        if reason is None:
            raise
        raise BertfitError(f"{reason} while writing {what} in '{folder}'; {then}") from None


def atomic_write(path: Path, data: str | bytes, then: str = "free space and run the command again") -> None:
    """Readers see the old file or the new one, never half of one. Text is written as UTF-8."""
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}")
    with writing(path.name, path.parent, then, cleanup=tmp):
        with open(tmp, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def follow_umask(path: Path) -> None:
    """Files a library wrote through a private temporary file (safetensors: 0600) get the permissions every
    other file of the run has under the user's umask; a folder, every file in it."""
    mask = os.umask(0)  # the only way to read the umask is to set it: set back at once
    os.umask(mask)
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        os.chmod(file, 0o666 & ~mask)


def plain(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers, and strict readers reject Python's `NaN`."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy and torch scalars
        return plain(value.item())
    return value


def to_json(value: Any, indent: int | None = None) -> str:
    return json.dumps(plain(value), indent=indent, allow_nan=False, ensure_ascii=False)
