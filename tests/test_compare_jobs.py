"""iclvsft compare --jobs: worker processes give the same cells as one process, resume across job
counts, and a failure, a dead worker or Ctrl-C ends the run in one line with no process left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iclvsft.compare import jobs
from iclvsft.compare.config import Experiment, load_experiment
from iclvsft.compare.run import Cell, RunContext, Training
from iclvsft_tasks.errors import IclvsftError
from iclvsft_train import launch

BIN = Path(sys.executable).parent


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _flags(model: Path, out: Path, *, ft: str = "8,16", size: int = 6, shots: str = "0,1,3") -> list[str]:
    sizes = ["--test-size", str(size), "--test-broken-size", str(size), "--validation-size", str(size)]
    return [
        *("--model", str(model), "--tasks", "parity_pattern", "--shots", shots, "--ft-samples", ft),
        *sizes,
        *("--train-size", "60", "--draws", "2", "--out", str(out), "--learning_rate", "3e-3"),
    ]


def _compare(args, timeout=900):
    return subprocess.run(
        [str(BIN / "iclvsft"), "compare", *args], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _as_a_terminal_starts_it() -> None:
    # Ctrl-C on, as for a foreground job: a suite started in the background (nohup, `cmd &` in a
    # script) has SIGINT ignored, which its children inherit and rightly keep.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "iclvsft"), "compare", *args],
        env=_env(),
        start_new_session=True,
        preexec_fn=_as_a_terminal_starts_it,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition, process: subprocess.Popen | None = None, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        assert process is None or process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.05)


def _cells(out: Path) -> int:
    return len(list((out / "cells").glob("*.json")))


def _worker_pids(out: Path) -> set[int]:
    return {int(p.stem.split("-")[1]) for p in (out / jobs.LOGS_DIR).glob("worker-*.log")}


def _alive_in_groups(groups: set[int]) -> list[int]:
    """Live (not zombie) processes whose process group is one of ``groups``: workers and their subprocesses."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in groups:
            alive.append(int(stat.parent.name))
    return alive


def _assert_none_left(groups: set[int]) -> None:
    assert groups
    deadline = time.time() + 10  # a watchdog polls its parent every 0.5 s
    while _alive_in_groups(groups) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive_in_groups(groups)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.strip().splitlines() if line.strip() and "%|" not in line]


def _keys_and_accuracies(out: Path) -> list[tuple[str, float]]:
    return [(r["key"], r["accuracy"]) for r in json.loads((out / "results.json").read_text())]


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory):
    """One run in one process (--jobs 1)."""
    out = tmp_path_factory.mktemp("jobs") / "one"
    proc = _compare([*_flags(tiny_llama, out), "--jobs", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / jobs.LOGS_DIR).exists()  # no pool
    return out


def test_two_workers_give_the_same_cells_keys_and_accuracies(reference, tiny_llama, tmp_path):
    out = tmp_path / "two"
    proc = _compare([*_flags(tiny_llama, out), "--jobs", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _keys_and_accuracies(out) == _keys_and_accuracies(reference)
    assert len(_worker_pids(out)) == 2
    run = json.loads((out / "run.json").read_text())
    assert run["jobs"] == 2 and run["torch_threads"] == 1
    assert "Running generate_until" not in proc.stderr  # lm-eval's bars stay in the workers' logs
    _assert_none_left(_worker_pids(out))


def test_a_killed_parallel_run_leaves_no_process_and_resumes_with_another_job_count(reference, tiny_llama, tmp_path):
    out = tmp_path / "killed"
    process = _start([*_flags(tiny_llama, out), "--jobs", "2"])
    try:
        _wait_for(lambda: _cells(out) >= 2 and len(_worker_pids(out)) == 2, process)
    finally:
        os.kill(process.pid, signal.SIGKILL)  # the parent alone: its workers must end themselves
        process.wait()
    assert 2 <= _cells(out) < 21
    _assert_none_left(_worker_pids(out))
    proc = _compare([*_flags(tiny_llama, out), "--jobs", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _keys_and_accuracies(out) == _keys_and_accuracies(reference)


def test_a_failing_worker_ends_the_run_in_one_line_and_stops_the_training_worker(tiny_llama, tmp_path):
    # The fine-tune starts first; the ICL worker then fails to load the model with a bad argument.
    out = tmp_path / "fail"
    proc = _compare([*_flags(tiny_llama, out, ft="8,16,24,32,40"), "--jobs", "2", "--eval-args", "no_such_arg=1"])
    lines = _error_lines(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "cannot load model" in lines[-1] and [line for line in lines if "error:" in line] == [lines[-1]]
    assert len(_worker_pids(out)) == 2
    _assert_none_left(_worker_pids(out))  # the training worker and its trl sft processes too
    assert not (out / "results.json").exists()


def test_a_dead_worker_or_ctrl_c_ends_the_run_in_one_line_keeping_finished_cells(tiny_llama, tmp_path):
    out = tmp_path / "dead"
    # 75 cells: enough that a loaded machine cannot finish them all between the checks and the signals
    args = [*_flags(tiny_llama, out, ft="", size=40, shots=",".join(map(str, range(13)))), "--jobs", "2"]
    process = _start(args)
    _wait_for(lambda: _cells(out) >= 1 and len(_worker_pids(out)) == 2, process)
    os.kill(min(_worker_pids(out)), signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    lines = _error_lines(stderr)
    assert process.returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
    assert "worker process died" in lines[-1] and len([x for x in lines if "error:" in x]) == 1
    _assert_none_left(_worker_pids(out))
    finished = _cells(out)
    assert finished >= 1

    process = _start(args)  # resumes; then Ctrl-C (SIGINT to the foreground group, as a terminal sends it)
    _wait_for(lambda: _cells(out) > finished and len(_worker_pids(out)) == 4, process)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert _error_lines(stderr)[-1] == "iclvsft: interrupted"
    _assert_none_left(_worker_pids(out))
    assert _cells(out) > finished


def test_units_split_the_cells_with_fine_tunes_first_and_milestones_after_their_training(tmp_path):
    exp = Experiment(
        tasks=["parity_pattern", "expression_pattern"], shots=[0, 2, 8], ft_samples=[8, 16], out=str(tmp_path)
    )
    training = Training("parity", ("parity_pattern",), tmp_path / "ft" / "parity", "h")
    icl = [
        Cell("icl", t, s, k, 0, draw=d)
        for t in exp.tasks
        for k in exp.shots
        for d in exp.draws_for(k)
        for s in ("validation", "test")
    ]
    ft = [Cell("ft", "parity_pattern", s, 0, n, training) for n in (8, 16) for s in ("validation", "test")]
    run = RunContext(exp, tmp_path, "/m", "m", {}, {})
    ready, waiting = jobs.plan_units(run, icl + ft, [training], {"parity": ["--logging_steps", "2"]})
    assert ready[0].kind == "train" and ready[0].logging == ("--logging_steps", "2")
    assert [u.kind for u in ready[1:]] == ["icl"] * 8  # (task, draw): draws 1-3 with k>0, and draw 0 (k=0)
    assert ready[-1].cells[0].shots == 0 and ready[1].cells[0].shots > 0
    assert [[c.ft_samples for c in u.cells] for u in waiting["parity"]] == [[8, 8], [16, 16]]
    units = ready[1:] + waiting["parity"]
    cells = [c for u in units for c in u.cells]
    assert sorted(cells, key=repr) == sorted(icl + ft, key=repr)  # every cell in exactly one unit
    assert all(len({(c.task, c.draw) for c in u.cells}) == 1 for u in ready[1:])


def test_jobs_setting_and_its_default(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("jobs: 3\n")
    assert load_experiment(str(config), {}).jobs == 3 and load_experiment(str(config), {"jobs": 1}).jobs == 1
    for bad in (0, -1, "2", True):
        with pytest.raises(IclvsftError, match="jobs must be an integer >= 1"):
            Experiment(jobs=bad)
    cores = jobs.physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert jobs.default_jobs("cpu") == cores and jobs.default_jobs("cuda") == 1


def test_resume_ignores_the_thread_count_in_the_resolved_config():
    base = {"learning_rate": 1e-3, "env": {"OMP_NUM_THREADS": "7", "WANDB_MODE": "offline"}}
    other = {"learning_rate": 1e-3, "env": {"WANDB_MODE": "offline"}}
    view = launch._resume_view
    assert view("resolved_config", base) == view("resolved_config", other)
    assert view("resolved_config", {"a": 1, "env": {"OMP_NUM_THREADS": "1"}}) == view("resolved_config", {"a": 1})
    assert view("resolved_config", {**other, "env": {"WANDB_MODE": "online"}}) != view("resolved_config", other)
    assert view("tasks", ["a"]) == ["a"]
