"""iclvsft compare's stored state under faults, on the tiny model: tampered cells are re-evaluated,
one run per --out (a killed run's lock does not block), a copied output folder uses its own
checkpoints, and a fine-tune with an unreadable manifest is trained again by compare itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iclvsft_tasks.folder_lock import LOCK_FILE

BIN = Path(sys.executable).parent


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _flags(model: Path, out: Path) -> list[str]:
    sizes = ["--test-size", "6", "--test-broken-size", "6", "--validation-size", "6", "--train-size", "60"]
    settings = ["--tasks", "parity_pattern", "--shots", "0,1", "--draws", "1", "--ft-samples", "8", *sizes]
    return ["--model", str(model), *settings, "--learning_rate", "3e-3", "--jobs", "1", "--out", str(out)]


def _compare(model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "iclvsft"), "compare", *_flags(model, out), *extra],
        capture_output=True,
        text=True,
        timeout=900,
        env=_env(),
    )


def _results(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in json.loads((out / "results.json").read_text())]


def _reevaluated(stderr: str) -> dict[str, str]:
    """Cell key -> reason, from compare's one message about cells that did not verify."""
    lines = stderr.splitlines()
    if not any("did not verify" in line for line in lines):
        return {}
    start = next(i for i, line in enumerate(lines) if "did not verify" in line)
    found = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  cells/"):
            break
        key = line.split("cells/", 1)[1].split(".json", 1)[0]
        found[key] = line.split("): ", 1)[1]
    return found


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "run"
    proc = _compare(tiny_llama, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _copy(reference: Path, to: Path) -> Path:
    shutil.copytree(reference, to)
    return to


def test_tampered_cells_are_re_evaluated_with_one_message_and_the_same_results(reference, tiny_llama, tmp_path):
    out = _copy(reference, tmp_path / "run")
    records = sorted(json.loads((out / "results.json").read_text()), key=lambda r: r["key"])
    assert not any(r["checkpoint"].startswith("/") for r in records if r["condition"] == "ft")  # relative to --out
    keys = [r["key"] for r in records]
    edited, empty, listed, deleted, truncated, cut = keys[:6]
    cell = json.loads((out / "cells" / f"{edited}.json").read_text())
    cell["accuracy"] = 1.0 - cell["accuracy"] if cell["accuracy"] != 0.5 else 0.9  # valid JSON, a wrong number
    (out / "cells" / f"{edited}.json").write_text(json.dumps(cell))
    (out / "cells" / f"{empty}.json").write_text("{}")
    (out / "cells" / f"{listed}.json").write_text("[1, 2]")
    (out / "predictions" / f"{deleted}.jsonl").unlink()
    lines = (out / "predictions" / f"{truncated}.jsonl").read_text().splitlines()
    (out / "predictions" / f"{truncated}.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    text = (out / "cells" / f"{cut}.json").read_text()
    (out / "cells" / f"{cut}.json").write_text(text[: len(text) // 2])
    proc = _compare(tiny_llama, out)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    reasons = _reevaluated(proc.stderr)
    assert set(reasons) == {edited, empty, listed, deleted, truncated, cut}, proc.stderr[-3000:]
    assert "accuracy" in reasons[edited] and "empty object" in reasons[empty] and "list" in reasons[listed]
    assert "missing" in reasons[deleted] and "split's items" in reasons[truncated] and "unreadable" in reasons[cut]
    assert proc.stderr.count("did not verify") == 1  # said once
    assert _results(out) == _results(reference)
    again = _compare(tiny_llama, out)  # everything verifies now: nothing is evaluated, nothing said
    assert again.returncode == 0 and "did not verify" not in again.stderr


def test_a_second_run_on_the_same_out_is_one_line_and_a_killed_runs_lock_does_not_block(tiny_llama, tmp_path):
    out = tmp_path / "busy"
    first = subprocess.Popen(
        [str(BIN / "iclvsft"), "compare", *_flags(tiny_llama, out)],
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        lock = out / LOCK_FILE
        while time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
            assert first.poll() is None
            time.sleep(0.05)
        second = _compare(tiny_llama, out)
        assert first.poll() is None, "the first run ended before the second started: the test proves nothing"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # kill -9 while it holds the lock
        first.wait()
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"in use by another iclvsft compare run (pid {first.pid})" in lines[0], second.stderr
    assert "pass another --out" in lines[0]
    third = _compare(tiny_llama, out, "--jobs", "2")  # the dead run's lock is gone; workers do not trip it
    assert third.returncode == 0, third.stderr[-3000:]


def test_a_copied_out_folder_uses_its_own_checkpoints(reference, tiny_llama, tmp_path):
    original = _copy(reference, tmp_path / "original")
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    ft_cell = next(r for r in json.loads((copy / "results.json").read_text()) if r["condition"] == "ft")
    (copy / "cells" / f"{ft_cell['key']}.json").unlink()  # needs the milestone again
    proc = _compare(tiny_llama, copy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Training completed" not in proc.stdout + proc.stderr  # the copy's fine-tune is complete
    assert _results(copy) == _results(reference)
    run = json.loads((copy / "run.json").read_text())
    assert all(not Path(p).is_absolute() for p in run["fine_tunes"].values())


def test_a_fine_tune_with_an_unreadable_manifest_is_trained_again(reference, tiny_llama, tmp_path):
    out = _copy(reference, tmp_path / "run")
    (manifest,) = out.glob("ft/*/manifest.json")
    manifest.write_text(manifest.read_text()[:100])  # truncated
    ft_cell = next(r for r in json.loads((out / "results.json").read_text()) if r["condition"] == "ft")
    (out / "cells" / f"{ft_cell['key']}.json").unlink()
    proc = _compare(tiny_llama, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "has an unreadable manifest.json; training it again" in proc.stderr
    assert "--resume" not in proc.stderr
    assert _results(out) == _results(reference)
