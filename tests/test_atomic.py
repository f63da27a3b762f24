"""Atomic writes: nothing half-written, the umask's permissions, and no temporary file outliving its writer."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from iclvsft_tasks.atomic import atomic_open, atomic_write_dir, atomic_write_text, remove_stale_temps


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _fill_private(directory: Path) -> None:
    """Like safetensors: a file made private to its owner, in a sub-folder."""
    (directory / "sub").mkdir(mode=0o700)
    (directory / "sub" / "weights").write_text("w")
    os.chmod(directory / "sub" / "weights", 0o600)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_and_folders_get_the_umasks_permissions(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_dir(tmp_path / "d", _fill_private)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == 0o666 & ~umask
    assert _mode(tmp_path / "d") == _mode(tmp_path / "d" / "sub") == 0o777 & ~umask
    assert _mode(tmp_path / "d" / "sub" / "weights") == 0o666 & ~umask


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "a.txt") as handle:
        handle.write("half")
        raise RuntimeError
    assert (tmp_path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def _killed_writer_temp(tmp_path: Path) -> Path:
    """A temporary sibling as a writer killed mid-write leaves it (its process has ended)."""
    code = (
        "import os, sys, tempfile;"
        "fd, name = tempfile.mkstemp(dir=sys.argv[1], prefix=f'.out.jsonl.{os.getpid()}.', suffix='.tmp');"
        "print(name)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    return Path(proc.stdout.strip())


def test_the_next_write_removes_temporaries_of_dead_writers_only(tmp_path: Path) -> None:
    dead = _killed_writer_temp(tmp_path)
    live = tmp_path / f".out.jsonl.{os.getpid()}.abc.tmp"  # this process: alive
    live.write_text("in progress")
    other = tmp_path / ".other.jsonl.1.abc.tmp"
    other.write_text("not ours to judge")
    atomic_write_text(tmp_path / "out.jsonl", "done\n")
    assert not dead.exists()
    assert live.exists() and other.exists()
    assert (tmp_path / "out.jsonl").read_text() == "done\n"


def test_stale_temporary_folders_are_removed_too(tmp_path: Path) -> None:
    dead = _killed_writer_temp(tmp_path)
    stale_dir = tmp_path / dead.name.replace(".tmp", ".old")
    stale_dir.mkdir()
    (stale_dir / "previous").mkdir()
    assert sorted(remove_stale_temps(tmp_path / "out.jsonl")) == sorted([dead, stale_dir])
    assert not stale_dir.exists()
