"""Every file the package writes goes through here: write to a temporary sibling, then rename.

A crash, a full disk or Ctrl-C therefore never leaves a half-written file under the final name.
Temporary siblings carry the writer's process id (``.<name>.<pid>.<random>.tmp``), so the next write
of the same path removes those of writers that no longer run (a kill -9 leaves them behind) and
never touches a live writer's. Files and folders end up with the permissions the umask gives any
new file (``mkstemp``/``mkdtemp`` alone would leave them private to the owner).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from iclvsft_tasks.errors import IclvsftError


def _umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(directory: Path) -> None:
    """Give a filled folder and everything in it the umask's permissions (``mkdtemp`` makes it 0700,
    and writers such as safetensors make their files 0600)."""
    mask = _umask()
    os.chmod(directory, 0o777 & ~mask)
    for path in directory.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary siblings of ``path`` left by writers that no longer run; returns them."""
    path = Path(path)
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.*"):
        pid = candidate.name[len(path.name) + 2 :].split(".", 1)[0]
        if not candidate.name.endswith((".tmp", ".old")) or not pid.isdigit() or _alive(int(pid)):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
        removed.append(candidate)
    return removed


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
    remove_stale_temps(path)
    return parent


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    parent = _prepare_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=_temp_prefix(path), suffix=".tmp")
    except OSError as exc:
        raise IclvsftError(f"cannot write {path}: {exc.strerror}") from None
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
        os.chmod(tmp, 0o666 & ~_umask())
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
        remove_stale_temps(path)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=_temp_prefix(path), suffix=".tmp"))
    except (FileExistsError, NotADirectoryError):
        raise IclvsftError(f"cannot write {path}: {parent} is not a directory") from None
    except OSError as exc:
        raise IclvsftError(f"cannot write {path}: {exc.strerror}") from None
    try:
        fill(tmp)
        _follow_umask(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=_temp_prefix(path), suffix=".old"))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _pathconf(path: str, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def check_creatable(path: str | os.PathLike[str], flag: str = "--out", *, directory: bool = True) -> Path:
    """``path`` as a Path once it is known that it can be written, as a folder (``directory``) or a
    file, or one IclvsftError naming ``flag`` and what to do. Creates nothing that stays: where the
    path does not exist yet, a probe folder is made and removed in its nearest existing parent (the
    only test that holds for root and for read-only or virtual file systems such as /proc)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise IclvsftError(f"{flag} must be a path, got {path!r}")
    given = Path(path).expanduser()
    absolute = Path(os.path.abspath(given))
    shown = str(given) if len(str(given)) <= 80 else f"{str(given)[:40]}...{str(given)[-30:]}"
    parent = absolute
    while not os.path.lexists(parent):  # False also for a name the file system refuses
        parent = parent.parent
    name_max = _pathconf(str(parent), "PC_NAME_MAX", 255)
    for part in absolute.parts[1:]:
        if len(os.fsencode(part)) > name_max:
            raise IclvsftError(
                f"{flag} {shown}: the name {part[:24]}... is {len(os.fsencode(part))} bytes long, more than the "
                f"{name_max} this file system allows; choose a shorter name"
            )
    path_max = _pathconf(str(parent), "PC_PATH_MAX", 4096)
    if len(os.fsencode(str(absolute))) >= path_max:
        raise IclvsftError(f"{flag} {shown}: the path is over the {path_max} bytes allowed; choose a shorter one")
    if parent == absolute:
        if directory and not absolute.is_dir():
            raise IclvsftError(f"{flag} {shown} exists and is not a directory; choose a folder")
        if not directory and absolute.is_dir():
            raise IclvsftError(f"{flag} {shown} is a directory; give a file name")
        folder = absolute if directory else absolute.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise IclvsftError(f"{flag} {shown}: {folder} is not writable; choose a folder you can write to")
        return given
    if not parent.is_dir():
        raise IclvsftError(f"{flag} {shown} cannot be created: {parent} is a file; choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".iclvsft-probe-"))
    except OSError as exc:
        raise IclvsftError(
            f"{flag} {shown} cannot be created in {parent} ({exc.strerror}); choose a folder you can write to"
        ) from None
    return given


def ensure_output_dir(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Create ``path`` as a writable folder, or one clear error naming ``flag``."""
    out = check_creatable(path, flag)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IclvsftError(f"cannot create {flag} {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise IclvsftError(f"{flag} {out} is not writable")
    return out
