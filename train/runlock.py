"""One live run per ``iclvsft-train`` folder: an ``flock`` on a lock file inside it.

``iclvsft-train`` holds the lock exclusively while it checks and writes the folder, and shared while
TRL trains; each training worker takes a shared lock of its own. The kernel drops a lock when its
holder dies, so the folder counts as in use exactly while some process of the run is alive: a second
run (or ``iclvsft compare`` deciding to start a fine-tune over) cannot take it, and so never writes
or deletes a folder that a live trainer writes, even one left by a killed parent.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from iclvsft_tasks.atomic import check_creatable
from iclvsft_tasks.errors import IclvsftError

LOCK_FILE = ".iclvsft-train.lock"
_held: dict[Path, RunLock] = {}  # this process's locks, so nested holds of one folder share one lock


class RunLock:
    def __init__(self, directory: Path, fd: int, created: str | None) -> None:
        self.directory, self.fd, self.created, self.depth = directory, fd, created, 0

    def share(self) -> None:
        """Exclusive -> shared, so the training workers can take their own shared locks."""
        fcntl.flock(self.fd, fcntl.LOCK_SH)


def _key(directory: Path) -> Path:
    return Path(os.path.abspath(directory))


@contextlib.contextmanager
def hold(directory: Path) -> Iterator[RunLock]:
    """The folder's lock for this process (creating the folder); one clear error when another live
    process holds it. A folder this call created is removed again if nothing but the lock went in."""
    key = _key(directory)
    lock = _held.get(key)
    if lock is None:
        check_creatable(directory, "--output_dir")  # one line on a bad path, before anything is created
        # what this call adds, to take away again if the run writes nothing: the folder, or its lock file
        created = "lock" if key.exists() else "folder"
        created = None if (key / LOCK_FILE).exists() else created
        try:
            key.mkdir(parents=True, exist_ok=True)
            fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise IclvsftError(f"--output_dir {directory} is not writable ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise IclvsftError(
                f"--output_dir {directory} is in use by another live iclvsft-train run; "
                "wait for it to end, or choose another directory"
            ) from None
        lock = _held[key] = RunLock(key, fd, created)
    lock.depth += 1
    try:
        yield lock
    finally:
        lock.depth -= 1
        if lock.depth == 0:
            del _held[key]
            if lock.created and [p.name for p in key.iterdir()] == [LOCK_FILE]:
                (key / LOCK_FILE).unlink()  # nothing was written: leave the folder as it was found
                if lock.created == "folder":
                    key.rmdir()
            os.close(lock.fd)


def clear(lock: RunLock) -> None:
    """Delete everything in the held folder but its lock file: starting a run over, with no moment
    at which another process could take the folder."""
    for entry in lock.directory.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextlib.contextmanager
def share(directory: str | os.PathLike[str]) -> Iterator[None]:
    """A training worker's shared lock on its run folder, if iclvsft-train made one (plain trl sft: none)."""
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)
