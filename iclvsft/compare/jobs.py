"""``iclvsft compare --jobs N``: the run's cells and fine-tunes in N worker processes.

On 2 busy cores one process with 2 torch threads ran 6-30x slower than with 1, while separate
one-thread processes do not interfere; so instead of threads the comparison uses a process pool
(``concurrent.futures`` with the spawn context), each worker pinned to one torch thread
(``OMP_NUM_THREADS`` if set), which its ``iclvsft-train`` subprocess inherits.

The work is split into *units*, each a disjoint set of cells, so no two workers ever evaluate or
write the same cell (cells are written atomically under their own keys, as in one process):

* a fine-tune (``iclvsft-train``), submitted first since it is the longest;
* one milestone's FT cells, submitted only once its fine-tune has finished;
* the ICL cells of one (task, draw), most shots first, on the base model each worker loads once.

``jobs`` decides how the work is spread, never what it computes: no cell key or training hash
includes it, so results and resume do not depend on it. The parent keeps the one progress bar
(workers report each stored cell; their own output goes to ``<out>/logs/``) and, on a worker's
error, a dead worker or Ctrl-C, ends every worker with its subprocesses: each worker leads its own
process group, and ends that group when the parent disappears.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from iclvsft.compare.run import (
    Cell,
    CellRunner,
    RunContext,
    Training,
    ensure_trained,
    load_lm,
    milestone_lm,
)
from iclvsft_tasks.errors import IclvsftError

#: Each worker's stdout and stderr, as ``<out>/logs/worker-<pid>.log`` (the parent shows the one bar).
LOGS_DIR = "logs"
#: Seconds a stopped worker gets to end its subprocesses after SIGTERM before SIGKILL.
STOP_GRACE_S = 10.0


def physical_cores() -> int:
    """Physical cores this process may run on: the CPUs of its affinity mask, with the hardware
    threads of one core (same ``physical_package_id`` and ``core_id`` in Linux's sysfs topology)
    counted once. Where the topology cannot be read, every CPU counts."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def default_jobs(device: str) -> int:
    """Workers when ``jobs`` is not given: one per physical core on CPU; 1 on an accelerator."""
    return physical_cores() if device == "cpu" else 1


def worker_threads() -> int:
    """Torch threads of each worker: ``OMP_NUM_THREADS`` when set to a count, else 1."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


@dataclasses.dataclass(frozen=True)
class Unit:
    """What one worker does in one go: a fine-tune, or cells that share one model."""

    kind: str  # "train" | "icl" | "ft"
    cells: tuple[Cell, ...] = ()
    training: Training | None = None
    logging: tuple[str, ...] = ()  # train: iclvsft-train's logging flags (from plan_training)

    @property
    def label(self) -> str:
        if self.kind == "train":
            return f"training {self.training.name}"
        first = self.cells[0]
        if self.kind == "ft":
            return f"FT {first.task} n={first.ft_samples}"
        return f"ICL {first.task}" + (f" draw {first.draw}" if first.draw else " k=0")


def plan_units(
    run: RunContext, todo: list[Cell], trainings: list[Training], logging_flags: dict[str, list[str]]
) -> tuple[list[Unit], dict[str, list[Unit]]]:
    """The units ready now (fine-tunes first, then FT cells of finished fine-tunes, then ICL by most
    shots), and the FT units that wait for each fine-tune (by its name)."""
    from iclvsft_train.run_state import RunStatus, TrainingRun

    trains: list[Unit] = []
    ready_ft: list[Unit] = []
    waiting: dict[str, list[Unit]] = {}
    for training in trainings:
        ft = [c for c in todo if c.training == training]
        if not ft:
            continue
        units = [
            Unit("ft", tuple(c for c in ft if c.ft_samples == n), training)
            for n in run.exp.ft_samples
            if any(c.ft_samples == n for c in ft)
        ]
        if TrainingRun.load(training.directory).status is RunStatus.COMPLETE:
            ready_ft += units
        else:
            trains.append(Unit("train", training=training, logging=tuple(logging_flags.get(training.name, []))))
            waiting[training.name] = units
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in todo:
        if cell.condition == "icl":
            groups.setdefault((cell.task, cell.draw), []).append(cell)
    icl = sorted((Unit("icl", tuple(c)) for c in groups.values()), key=lambda u: -sum(c.shots for c in u.cells))
    return trains + ready_ft + icl, waiting


# --- in the worker --------------------------------------------------------------------------------

_worker: dict[str, Any] = {}  # this worker's event queue, CellRunner and base model


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.killpg(0, signal.SIGKILL)  # the parent is gone (killed): end this worker and its subprocesses


def _init_worker(events: Any, threads: int, logs: Path) -> None:
    """Before any torch work: own process group, watchdog, one torch thread, output to its own log."""
    os.setpgid(0, 0)
    logs.mkdir(parents=True, exist_ok=True)
    log = os.open(logs / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd in (1, 2):  # lm-eval's and TRL's bars and logs, its iclvsft-train subprocess's too
        os.dup2(log, fd)
    os.close(log)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by iclvsft-train's trl sft subprocess too
    os.environ["TQDM_DISABLE"] = "1"  # bars that honour it stay out of the log
    import torch
    import tqdm

    # A thread lock for lm-eval's bars: tqdm's default multiprocessing lock is a semaphore that a
    # killed worker would leave behind (and the resource tracker would warn about it).
    tqdm.tqdm.set_lock(threading.RLock())
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before any inter-op work
        torch.set_num_interop_threads(1)
    _worker["events"] = events


def _send(*event: Any) -> None:
    _worker["events"].put(event)


def run_unit(run: RunContext, unit: Unit) -> list[dict[str, Any]]:
    """Do ``unit`` in this worker; returns the records of its cells, each stored as it finished."""
    if unit.kind == "train":
        _send("ready")
        ensure_trained(run.exp, run.model_path, unit.training, list(unit.logging))
        return []
    if _worker.get("run") != run:
        _worker.update(run=run, runner=CellRunner(run), base=None)
    runner: CellRunner = _worker["runner"]
    if unit.kind == "icl":
        if _worker["base"] is None:
            _worker["base"] = load_lm(run.exp, run.model_path)  # kept for this worker's next ICL unit
        lm, extra = _worker["base"], {"train_tokens": 0}
    else:
        from iclvsft_train.run_state import TrainingRun

        _worker["base"] = None  # one model in memory at a time
        trained = TrainingRun.load(unit.training.directory)
        lm, extra = milestone_lm(run.exp, run.model_path, trained, unit.cells[0].ft_samples)
    _send("ready")
    records = []
    for cell in unit.cells:
        records.append(runner.evaluate(cell, lm, extra))
        _send("cell", records[-1]["key"])
    return records


# --- in the parent --------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Workers started in here inherit an ignored SIGINT: Ctrl-C is the parent's to handle."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _signal_group(process: Any, sig: int) -> None:
    """``sig`` to a worker's process group (it and its subprocesses), or to it alone before it made one."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        if process.is_alive():  # not yet its own group leader (or already reaped: then nothing to do)
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)


def _stop(executor: ProcessPoolExecutor, processes: dict[int, Any]) -> None:
    """End every worker and its subprocesses: SIGTERM (a fine-tune passes it on to trl), then SIGKILL."""
    executor.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(p.is_alive() for p in processes.values()):
        for process in processes.values():
            _signal_group(process, signal.SIGTERM)  # again each round: a worker back from training then ends
        time.sleep(0.2)
    for process in processes.values():
        _signal_group(process, signal.SIGKILL)
        process.join()


def run_parallel(
    run: RunContext,
    todo: list[Cell],
    trainings: list[Training],
    logging_flags: dict[str, list[str]],
    jobs: int,
    new_bar: Callable[[], Any],
    records: dict[str, dict[str, Any]],
    after_training: Callable[[Training], bool] | None = None,
) -> int:
    """Evaluate ``todo`` (training what it needs) in up to ``jobs`` workers, adding each cell's record
    to ``records``; returns the workers' torch threads. The bar starts once a worker is ready, so a
    model that fails to load fails with its one line before any bar.

    ``after_training(training)`` is called in this process once the fine-tune's FT cells are all in,
    and again after later units until it returns True (it may need the ICL cells too); the workers go
    on with their units meanwhile."""
    ready, waiting = plan_units(run, todo, trainings, logging_flags)
    size = min(jobs, len(ready) + sum(map(len, waiting.values())))
    threads = worker_threads()
    context = multiprocessing.get_context("spawn")  # fork would copy torch's threads and CUDA state
    events = context.Queue()
    executor = ProcessPoolExecutor(
        size, mp_context=context, initializer=_init_worker, initargs=(events, threads, run.out / LOGS_DIR)
    )
    processes: dict[int, Any] = {}
    in_flight: dict[Future, Unit] = {}
    counted: set[str] = set()  # cells on the bar: a worker's event and its unit's result count once
    bar = None

    def note(event: tuple[Any, ...]) -> None:
        nonlocal bar
        if bar is None:
            bar = new_bar()
        if event[0] == "cell" and event[1] not in counted:
            counted.add(event[1])
            bar.update(1)

    def drain() -> None:
        while True:
            try:
                note(events.get_nowait())
            except queue.Empty:
                return

    hooks = list(trainings) if after_training else []  # fine-tunes whose after_training is still due

    def call_hooks() -> None:
        import torch

        pending = {u.training.name for u in [*ready, *in_flight.values()] if u.training} | set(waiting)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)  # the workers hold the cores: this process takes one worker's share
        try:
            for training in [t for t in hooks if t.name not in pending]:
                if after_training(training):
                    hooks.remove(training)
        finally:
            torch.set_num_threads(before)

    try:
        while ready or in_flight:
            while ready and len(in_flight) < size:
                unit = ready.pop(0)
                # Only a submit that may start a worker ignores Ctrl-C (the worker inherits that); one
                # that lands in the window is lost, so the window is closed once every worker exists.
                spawning = len(executor._processes) < size
                with _sigint_ignored() if spawning else contextlib.nullcontext():
                    in_flight[executor.submit(run_unit, run, unit)] = unit
                processes.update(executor._processes)  # the pool's workers: no public handle before 3.14
            if bar is not None:
                bar.set_postfix_str("; ".join(u.label for u in in_flight.values()))
            done, _ = wait(in_flight, timeout=0.25, return_when=FIRST_COMPLETED)
            drain()
            for future in done:
                unit = in_flight[future]
                for record in future.result():  # the worker's error, raised here
                    note(("cell", record["key"]))
                    records[record["key"]] = record
                del in_flight[future]
                if unit.kind == "train":
                    ready[:0] = waiting.pop(unit.training.name)  # its milestones next, before ICL
            if done and hooks:
                call_hooks()
        if hooks:
            call_hooks()  # nothing was left to run
        executor.shutdown(wait=True)
    except BaseException as exc:
        _stop(executor, processes)
        if isinstance(exc, BrokenProcessPool):
            raise IclvsftError(
                f"a compare worker process died (its output: {run.out / LOGS_DIR}) while running one of: "
                + "; ".join(u.label for u in in_flight.values())
                + ". Finished cells are kept: rerun the same command to resume"
            ) from None
        raise
    finally:
        if bar is not None:
            bar.close()  # ends the bar's line, so an error message starts on its own
        events.close()
    return threads
