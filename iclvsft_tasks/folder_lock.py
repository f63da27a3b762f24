"""One process at a time in an output folder: an advisory lock that a dead process does not keep.

``fcntl.flock`` on a file in the folder: the kernel drops the lock when its holder ends, however it
ends (``kill -9`` included), so a killed run never blocks the next one and nothing needs cleaning by
hand. The descriptor is not inherited by subprocesses or spawned workers (Python opens files
non-inheritable), so a run's own workers neither hold nor trip it. The file keeps the holder's pid
for the message a second run gets; it stays in the folder (removing it would let two runs lock two
different files).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from iclvsft_tasks.errors import IclvsftError

LOCK_FILE = ".iclvsft.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str, flag: str = "--out") -> Iterator[Path]:
    """Hold ``folder``'s lock while the body runs; if another process holds it, one clear error.

    ``what`` names the holder in the message (``"iclvsft compare run"``), ``flag`` the option that
    chose the folder.
    """
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise IclvsftError(f"cannot lock {flag} {folder}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise IclvsftError(
                f"{flag} {folder} is in use by another {what} (pid {holder or 'unknown'}); "
                f"wait for it to finish, or pass another {flag}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
