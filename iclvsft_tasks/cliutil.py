"""What every console script shares: one-line errors and a clean exit code."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from iclvsft_tasks.data.spec import SPLITS, DataSpec
from iclvsft_tasks.errors import IclvsftError


def version_line(prog: str, packages: Sequence[str] = ("lm_eval", "transformers", "torch")) -> str:
    """``prog 0.1.0 (lm_eval 0.4.13, ...)``: our version and the installed versions of what it drives,
    read from package metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from iclvsft_tasks import __version__

    found = []
    for package in packages:
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} not installed")
    return f"{prog} {__version__} ({', '.join(found)})"


def add_version_flag(parser: argparse.ArgumentParser, packages: Sequence[str] = ("lm_eval", "transformers", "torch")):
    """``--version``: print :func:`version_line` (unwrapped, unlike argparse's version action) and exit."""

    class _Version(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
            print(version_line(parser.prog, packages))
            parser.exit()

    parser.add_argument("--version", nargs=0, action=_Version, help="print the versions and exit")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (plus nothing else) and exits with 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


#: "1" while a command runs with ``-v``/``--verbose``; subprocesses (``trl sft``) inherit it.
VERBOSE_ENV = "ICLVSFT_VERBOSE"
#: What ``-v`` sets for the libraries (unless the user set it): their INFO logs, here and in subprocesses.
_VERBOSE_LIBRARY_ENV = {"TRANSFORMERS_VERBOSITY": "info", "DATASETS_VERBOSITY": "info"}
VERBOSE_HELP = "show the libraries' logs and warnings, and a traceback above an error (exit status unchanged)"


def verbose() -> bool:
    """Whether the running command was given ``-v``/``--verbose`` (or ``ICLVSFT_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def _library_loggers() -> list:
    """The ``logging`` helpers of transformers and datasets that are imported (importing them costs seconds)."""
    found = []
    for name in ("transformers.utils.logging", "datasets.utils.logging"):
        if name in sys.modules:
            found.append(sys.modules[name])
    return found


def set_verbose() -> None:
    """Turn ``-v`` on for the rest of the command: library INFO logs and warnings shown (also in the
    subprocesses it starts), tracebacks above errors. ``run_cli`` undoes it when the command ends."""
    os.environ[VERBOSE_ENV] = "1"
    for name, level in _VERBOSE_LIBRARY_ENV.items():
        os.environ.setdefault(name, level)
    for module in _library_loggers():
        module.set_verbosity_info()


def add_verbose_flag(parser: argparse.ArgumentParser, short: bool = True) -> None:
    """``-v``/``--verbose`` (``--verbose`` alone where ``-v`` is taken) on ``parser`` and every subcommand's parser."""

    class _Verbose(argparse.Action):
        def __call__(self, *_: object) -> None:
            set_verbose()

    names = ["-v", "--verbose"] if short else ["--verbose"]
    parser.add_argument(*names, nargs=0, action=_Verbose, default=argparse.SUPPRESS, help=VERBOSE_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                add_verbose_flag(child, short)


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """The libraries' Python warnings off inside (a probe that loads a config, parses flags...), unless ``-v``."""
    with warnings.catch_warnings():
        if not verbose():
            warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _restored_verbosity() -> Iterator[None]:
    """Undo ``set_verbose`` when the command ends (``main`` runs in-process in tests and library callers)."""
    names = [VERBOSE_ENV, *_VERBOSE_LIBRARY_ENV]
    env = {name: os.environ.get(name) for name in names}
    levels = {module.__name__: module.get_verbosity() for module in _library_loggers()}
    try:
        yield
    finally:
        was_verbose = verbose()
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if was_verbose and env[VERBOSE_ENV] != "1":
            for module in _library_loggers():
                module.set_verbosity(levels.get(module.__name__, logging.WARNING))


def run_cli(prog: str, body: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run ``body``; user errors become ``prog: error: ...`` on stderr and exit status 2.

    With ``-v`` (see ``add_verbose_flag``) the error's traceback comes first, including the library
    exception it was raised from (which the one line hides with ``from None``).
    """
    with _restored_verbosity():
        try:
            return body(list(sys.argv[1:] if argv is None else argv))
        except IclvsftError as exc:
            if verbose():
                exc.__suppress_context__ = False
                traceback.print_exception(exc, file=sys.stderr)
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130


def flag_value(argv: Sequence[str], *names: str) -> str | None:
    """The value argparse would give the flag spelled any of ``names``: ``--x V`` or ``--x=V``, the last one wins.

    For argument lists we pass on without parsing them (to ``trl sft``, to lm-eval).
    """
    value = None
    for i, token in enumerate(argv):
        for name in names:
            if token == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif token.startswith(name + "="):
                value = token.split("=", 1)[1]
    return value


def flag_on(argv: Sequence[str], *names: str) -> bool | None:
    """A boolean flag as HfArgumentParser reads one declared ``bool`` with a default (e.g. ``--use_peft``):
    bare (then another flag or the end), ``--x true`` or ``--x=1`` in its true words, the last one
    winning; None when no spelling in ``names`` (``--use_peft``, ``--use-peft``) is given."""
    truthy = ("true", "1", "yes", "y", "t")
    on = None
    for i, token in enumerate(argv):
        name, _, value = token.partition("=")
        if name not in names:
            continue
        if _:
            on = value.lower() in truthy
        else:
            following = argv[i + 1] if i + 1 < len(argv) else "--"
            on = following.startswith("-") or following.lower() in truthy
    return on


def default_threads() -> int:
    """Torch threads for CPU work: one core left for the OS and data loading.

    Measured on 2 busy cores: 2 threads ran 6-30x slower than 1 (OpenMP oversubscription).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def check_device(device: str | None, flag: str = "--device") -> str | None:
    """``device`` (None: choose later) if torch knows it and this machine has it, else one IclvsftError.

    ``tpu9`` or ``cuda:7`` on a machine with one GPU would otherwise run on the CPU, or fail deep
    inside a library, while the results record the device asked for.
    """
    if device is None or device == "cpu":
        return device
    if not isinstance(device, str) or not device.strip():
        raise IclvsftError(f"{flag} must be a device name such as cpu or cuda, got {device!r}")
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise IclvsftError(f"unknown {flag} {device!r}; use cpu, cuda, cuda:N or mps") from None
    backend = getattr(torch, parsed.type, None) if parsed.type != "mps" else torch.backends.mps
    is_available = getattr(backend, "is_available", None)
    if is_available is None:  # e.g. meta: a device torch names but nothing runs on
        raise IclvsftError(f"unknown {flag} {device!r}; use cpu, cuda, cuda:N or mps")
    if not is_available():
        raise IclvsftError(f"{flag} {device}: this machine has no {parsed.type} device; use {flag} cpu")
    count = getattr(backend, "device_count", None)
    if parsed.index is not None and count is not None and parsed.index >= count():
        raise IclvsftError(f"{flag} {device}: this machine has {count()} {parsed.type} device(s), numbered from 0")
    return device


def resolve_device(device: str | None) -> str:
    """The device asked for (checked by ``check_device``), else cuda when available, else cpu."""
    if device:
        return check_device(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pin_cpu_threads(device: str) -> int | None:
    """On CPU, set torch's threads to ``default_threads()`` unless ``OMP_NUM_THREADS`` says otherwise;
    returns the thread count (None on an accelerator)."""
    if device != "cpu":
        return None
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(default_threads())
    return torch.get_num_threads()


def machine_line() -> str:
    """The machine in one line for stored results, with what decides a CPU's speed: its name and torch's
    vector capability (bfloat16 is fast only where oneDNN supports it; BENCHMARKS.md)."""
    import platform

    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:  # not Linux
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{platform.machine()}, {cpu or 'CPU'} ({capability}), {os.cpu_count()} cores"


def slow_half_precision(dtype: str, device: str) -> str | None:
    """Why ``dtype`` would run slowly on ``device``, or None: a warning for the caller to print.

    On a CPU, torch multiplies bfloat16 and float16 matrices natively only where oneDNN supports the
    dtype on that CPU; elsewhere it falls back to a generic loop. On an AVX2-only AMD EPYC
    (BENCHMARKS.md, "bfloat16 on an AVX2 CPU") that made LoRA training 10x slower than float32, while
    an Intel Xeon with AMX-BF16 had run the demo 1.6x faster in bfloat16.
    """
    if dtype not in ("bfloat16", "float16"):
        return None
    import torch

    if torch.device(device).type != "cpu":
        return None
    check = getattr(torch.ops.mkldnn, f"_is_mkldnn_{'bf16' if dtype == 'bfloat16' else 'fp16'}_supported", None)
    try:
        native = check is None or bool(check())  # a torch without the check: no claim either way
    except RuntimeError:
        native = True
    if native:
        return None
    return (
        f"this CPU lacks torch's native {dtype} matrix products (oneDNN), so they run in a generic loop, many "
        f"times slower than float32's (BENCHMARKS.md; benchmarks/bench_half_precision.py measures a machine); "
        f"float32 is likely faster here"
    )


_half_precision_warned: set[str] = set()


def slow_half_precision_once(dtype: str, device: str) -> str | None:
    """``slow_half_precision``, said once per process for each dtype (it only speaks of CPUs):
    ``iclvsft compare`` warns, and the fine-tunes and model loads it runs in the same process stay quiet."""
    said = slow_half_precision(dtype, device)
    if said is None or dtype in _half_precision_warned:
        return None
    _half_precision_warned.add(dtype)
    return said


def add_split_size_flags(parser: argparse.ArgumentParser, defaults: dict[str, int] | None, note: str) -> None:
    """``--test-size --test-broken-size --validation-size --train-size`` (dest ``<split>_size``,
    read back by ``data_from_flags``).

    ``defaults=None`` leaves them None, for callers that layer flags over a config file.
    """
    group = parser.add_argument_group(f"split sizes ({note})")
    for split in SPLITS:
        default = defaults[split] if defaults else None
        group.add_argument(
            "--" + split.replace("_", "-") + "-size",
            type=non_negative_int,  # an empty split is legal (e.g. no training pool for an evaluation)
            default=default,
            dest=f"{split}_size",
            help=f"default {default:,}" if default else None,
        )


def data_from_flags(args: argparse.Namespace, seed: int) -> DataSpec:
    """The DataSpec of the flags of ``add_split_size_flags`` (None keeps a default) and a seed."""
    return DataSpec.from_sizes({split: getattr(args, f"{split}_size") for split in SPLITS}, seed=seed)


def parse_int_list(text: str, what: str, allow_empty: bool = False) -> list[int]:
    """``"0,1,4"`` -> ``[0, 1, 4]`` (order kept), or one clear error naming ``what``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise IclvsftError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values and not allow_empty:
        raise IclvsftError(f"{what} is empty")
    return values


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a count where none is legal, like a split size)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count that cannot be zero)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value
