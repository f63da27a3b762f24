"""The wheel ships the lm-eval YAMLs as package data, the training package, the console scripts
and the forward-compatible `lm_eval.tasks` entry point."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from iclvsft_tasks.lm_eval_configs import render_configs

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_yamls_scripts_and_entry_point(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Package discovery is complete: setuptools warns of no data folder it would skip, nor of anything else.
    output = proc.stdout + proc.stderr
    for warning in ("would be ignored", "SetuptoolsWarning", "SetuptoolsDeprecationWarning", "BuildBackendWarning"):
        assert warning not in output, output[-3000:]
    [wheel] = list(tmp_path.glob("iclvsft-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in render_configs():
        assert f"iclvsft_tasks/task_configs/{rel}" in names, rel
    assert "iclvsft_train/__init__.py" in names
    assert "iclvsft_tasks/tasks/code.py" in names
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[lm_eval.tasks]\niclvsft = iclvsft_tasks.task_configs" in text
    assert "iclvsft = iclvsft.cli:main" in text and "iclvsft-eval = iclvsft_tasks.eval_cli:main" in text
    [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
    meta = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: lm_eval<0.5,>=0.4.13" in meta
    assert 'Requires-Dist: trl<2,>=1.0; extra == "train"' in meta
