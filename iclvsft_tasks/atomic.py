"""Every file the package writes goes through here: write to a temporary sibling, then rename.

A crash, a full disk or Ctrl-C therefore never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from iclvsft_tasks.errors import IclvsftError


def _prepare_parent(path: Path) -> Path:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise IclvsftError(f"cannot write {path}: {parent} is not a directory") from None
    except OSError as exc:
        raise IclvsftError(f"cannot write {path}: {exc.strerror}") from None
    if path.is_dir() and not path.is_symlink():
        raise IclvsftError(f"cannot write {path}: it is a directory")
    return parent


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    parent = _prepare_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise IclvsftError(f"cannot write {path}: {exc.strerror}") from None
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def save_figure(fig: object, path: str | os.PathLike[str], dpi: int) -> Path:
    """A matplotlib figure as a PNG, rendered in memory first so a failed render writes nothing."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)  # type: ignore[attr-defined]
    with atomic_open(path, "wb") as handle:
        handle.write(buf.getvalue())
    return Path(path)


def atomic_write_dir(path: str | os.PathLike[str], fill: Callable[[Path], None]) -> None:
    """Let ``fill`` populate a temporary sibling directory, then move it to ``path``.

    An existing directory at ``path`` is replaced only after the new one is complete.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise IclvsftError(f"cannot write {path}: it exists and is not a directory")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp"))
    except (FileExistsError, NotADirectoryError):
        raise IclvsftError(f"cannot write {path}: {parent} is not a directory") from None
    except OSError as exc:
        raise IclvsftError(f"cannot write {path}: {exc.strerror}") from None
    try:
        fill(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_output_dir(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Create ``path`` as a writable folder, or one clear error naming ``flag``."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise IclvsftError(f"{flag} {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IclvsftError(f"cannot create {flag} {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise IclvsftError(f"{flag} {out} is not writable")
    return out
