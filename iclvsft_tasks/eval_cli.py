"""``iclvsft-eval``: lm-eval's own CLI, with iclvsft's tasks added.

It accepts every ``lm_eval`` argument and subcommand (``run``, ``ls``, ``validate``, or the legacy
form without one) and adds our task directory:
  * when the user gives no ``--include_path`` / ``--config``: by inserting ``--include_path``;
  * otherwise by prepending our directory inside lm-eval's TaskManager, so the user's own
    ``--include_path`` (or the one in their ``--config``) keeps working;
  * not at all when lm-eval already sees our tasks (a lm-eval with task plugins, or a current
    ``iclvsft-eval register`` copy), so nothing is indexed twice.
Three commands of our own manage that registered copy: ``register``, ``unregister``, ``status``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from iclvsft_tasks.atomic import atomic_write_dir, check_creatable
from iclvsft_tasks.cliutil import check_device, flag_value, run_cli, set_verbose, verbose, version_line
from iclvsft_tasks.errors import IclvsftError, model_load_message, model_path_problem, one_line

PROG = "iclvsft-eval"
_SUBCOMMANDS = ("run", "ls", "validate")
#: Name of the folder ``register`` creates inside lm-eval's task folder, and of its stamp file.
REGISTERED_DIR = "iclvsft"
_STAMP = "iclvsft_registered.json"
_SHOT_VARIANT = re.compile(r"_(\d+)shot$")


def _glue():
    """The lm-eval glue, imported on first use: without lm-eval installed, `status` and every other
    command say so in one line instead of failing on import."""
    if importlib.util.find_spec("lm_eval") is None:
        raise IclvsftError("lm_eval is not installed in this environment (pip install 'lm_eval>=0.4.13,<0.5')")
    from iclvsft_tasks import lm_eval_glue

    return lm_eval_glue


def _has_flag(argv: Sequence[str], *names: str) -> bool:
    return any(a in names or any(a.startswith(n + "=") for n in names) for a in argv)


def _requested_tasks(argv: Sequence[str]) -> list[str]:
    names: list[str] = []
    for i, arg in enumerate(argv):
        if arg in ("--tasks", "-t"):
            j = i + 1
            while j < len(argv) and not argv[j].startswith("-"):
                names += [n for n in argv[j].split(",") if n]
                j += 1
        elif arg.startswith("--tasks="):
            names += [n for n in arg.split("=", 1)[1].split(",") if n]
    return names


def num_fewshot_warnings(argv: Sequence[str]) -> list[str]:
    """Warnings for ``--num_fewshot`` given together with our fixed-shot variants or groups."""
    value = flag_value(argv, "--num_fewshot", "-f")
    if value is None:
        return []
    ours = _our_names()
    warnings = []
    for name in _requested_tasks(argv):
        match = _SHOT_VARIANT.search(name)
        if not match or name not in ours:
            continue
        shots = int(match.group(1))
        if shots == 0:
            what = "stays at 0 shots: lm-eval never overrides a YAML's num_fewshot: 0"
        else:
            what = f"runs at {value} shots, not {shots}"
        warnings.append(
            f"{PROG}: warning: --num_fewshot {value} given: {name} {what}; "
            f"drop --num_fewshot or pick the variant with the shots you want"
        )
    return warnings


def _our_names() -> set[str]:
    """Task and group names defined by our YAMLs (their file names)."""
    return {p.stem for p in Path(_glue().tasks_dir()).rglob("*.yaml") if not p.name.startswith("_")}


# --- the registered copy inside lm-eval's task folder ---------------------------------------------


def _lm_eval_tasks_folder() -> Path:
    try:
        lm_eval_tasks = importlib.import_module("lm_eval.tasks")
    except ImportError:
        raise IclvsftError(
            "lm_eval is not installed in this environment (pip install 'lm_eval>=0.4.13,<0.5')"
        ) from None
    return Path(lm_eval_tasks.__file__).resolve().parent


def lm_eval_has_task_plugins() -> bool:
    """True once lm-eval discovers ``lm_eval.tasks`` entry points itself (upstream PR #4015)."""
    try:
        manager = importlib.import_module("lm_eval.tasks.manager")
    except ImportError:
        return False
    return hasattr(manager, "discover_plugin_task_paths")


def _content_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.yaml")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def registration_state() -> tuple[str, Path]:
    """(``"absent"`` | ``"current"`` | ``"stale"``, path of the registered copy)."""
    target = _lm_eval_tasks_folder() / REGISTERED_DIR
    stamp = target / _STAMP
    if not stamp.is_file():
        return "absent", target
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8")).get("content_hash")
    except (OSError, ValueError):
        return "stale", target
    current = recorded == _content_hash(Path(_glue().tasks_dir())) == _content_hash(target)
    return ("current" if current else "stale"), target


def register() -> str:
    if lm_eval_has_task_plugins():
        return "not needed: this lm-eval discovers iclvsft's tasks through its lm_eval.tasks entry point"
    source = Path(_glue().tasks_dir())
    target = _lm_eval_tasks_folder() / REGISTERED_DIR
    if target.exists() and not (target / _STAMP).is_file():
        raise IclvsftError(f"{target} exists and was not made by `{PROG} register`; not touching it")

    def fill(folder: Path) -> None:
        for path in sorted(source.rglob("*.yaml")):
            dest = folder / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        stamp = {"content_hash": _content_hash(source), "source": str(source)}
        (folder / _STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")

    try:
        atomic_write_dir(target, fill)
    except PermissionError as exc:
        raise IclvsftError(f"cannot write {target}: {exc.strerror}") from None
    return (
        f"registered: a bare `lm_eval --tasks parity_pattern ...` now finds iclvsft's tasks "
        f"(copy in {target}; pip leaves it there through an lm-eval reinstall, upgrade or uninstall: "
        f"run `{PROG} unregister` before removing lm-eval)"
    )


def unregister() -> str:
    state, target = registration_state()
    if state == "absent":
        return f"not registered (nothing at {target})"
    try:
        shutil.rmtree(target)
    except OSError as exc:
        raise IclvsftError(f"cannot remove {target}: {exc.strerror}") from None
    return f"unregistered: removed {target}"


def status() -> str:
    if lm_eval_has_task_plugins():
        return "plugin: this lm-eval discovers iclvsft's tasks through its lm_eval.tasks entry point"
    state, target = registration_state()
    return {
        "absent": f"not registered: a bare `lm_eval` does not see iclvsft's tasks (use `{PROG}`, "
        f'`--include_path "$(python -m iclvsft_tasks)"`, or `{PROG} register`)',
        "current": f"registered and current: {target}",
        "stale": f"registered but stale (iclvsft's tasks changed since): {target}; run `{PROG} register` again",
    }[state]


# --- running lm-eval --------------------------------------------------------------------------------


def _prepend_our_tasks_in_task_manager(ours: str) -> None:
    """Make every TaskManager of this process index ``ours`` before the user's include paths."""
    from lm_eval.tasks import TaskManager

    original = TaskManager.__init__
    signature = inspect.signature(original)

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        given = bound.arguments.get("include_path")
        user = [given] if isinstance(given, (str, Path)) else list(given or [])
        bound.arguments["include_path"] = [ours, *user]
        original(*bound.args, **bound.kwargs)

    TaskManager.__init__ = __init__


def lm_eval_argv(argv: Sequence[str]) -> list[str]:
    """The argv for lm-eval's CLI, with our task directory added when it must be."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        return argv
    if lm_eval_has_task_plugins() or registration_state()[0] == "current":
        return argv
    if _has_flag(argv, "--include_path", "--config", "-C"):
        _prepend_our_tasks_in_task_manager(_glue().tasks_dir())
        return argv
    if argv[0] in _SUBCOMMANDS:
        return [argv[0], "--include_path", _glue().tasks_dir(), *argv[1:]]
    return ["run", "--include_path", _glue().tasks_dir(), *argv]


#: lm-eval flags whose value may be JSON (lm-eval fails in a traceback on a JSON-looking value it cannot parse).
_JSON_FLAGS = ("--model_args", "--gen_kwargs", "--metadata", "--samples", "-E")


def check_argv(argv: Sequence[str]) -> None:
    """The mistakes lm-eval reports late, with a traceback, or not at all, as one IclvsftError
    before lm-eval starts: JSON values that do not parse, an unknown ``--device``, an
    ``--output_path`` that cannot be created (lm-eval logs that and exits 0 without saving),
    a ``pretrained=`` model directory that does not exist."""
    for flag in _JSON_FLAGS:
        value = flag_value(argv, flag)
        if value is not None and value.lstrip().startswith("{"):
            try:
                json.loads(value)
            except ValueError as exc:
                raise IclvsftError(
                    f"{flag} is not valid JSON ({one_line(exc)}); write it with double quotes inside single "
                    """quotes, e.g. '{"iclvsft_seed": 1}'"""
                ) from None
    check_device(flag_value(argv, "--device"))
    output = flag_value(argv, "--output_path", "-o")
    if output is not None:
        check_creatable(output, "--output_path", directory=Path(output).suffix != ".json")
    model_args = flag_value(argv, "--model_args", "-a")
    if model_args is not None and not model_args.lstrip().startswith("{"):
        args = dict(part.split("=", 1) for part in model_args.split(",") if "=" in part)
        for key in ("pretrained", "peft"):
            problem = model_path_problem(args[key]) if key in args else None
            if problem and not (key == "peft" and problem.startswith(f"{args[key]} is a LoRA adapter")):
                raise IclvsftError(f"--model_args {key}: {problem}")


def _one_line_model_errors() -> None:
    """Turn a failure to build the ``--model`` (a bad ``--model_args`` value, an argument the model
    rejects, a missing checkpoint) into one ``error:`` line instead of lm-eval's traceback."""
    from lm_eval.api.model import LM

    for name in ("create_from_arg_string", "create_from_arg_obj"):
        original = getattr(LM, name).__func__
        if getattr(original, "_iclvsft_one_line", False):  # main() ran before in this process
            continue

        def create(cls, args, additional_config=None, _original=original):
            try:
                return _original(cls, args, additional_config)
            except Exception as exc:
                split = str(args).split(",")
                pretrained = args.get("pretrained") if isinstance(args, dict) else flag_value(split, "pretrained")
                explained = model_load_message(pretrained, exc) if pretrained else ""
                if explained and not explained.startswith("cannot load model"):  # a missing or uncached model
                    raise IclvsftError(f"--model_args pretrained: {explained}") from None
                raise IclvsftError(f"cannot create model {cls.__name__} from --model_args: {one_line(exc)}") from None

        create._iclvsft_one_line = True
        setattr(LM, name, classmethod(create))


#: Our flag, taken out before lm-eval sees the arguments; only the long form: ``-v`` is lm-eval's ``--verbosity``.
VERBOSE_FLAG = "--verbose"


@contextlib.contextmanager
def _lm_eval_log_level(argv: Sequence[str]) -> Iterator[None]:
    """lm-eval's INFO lines (selected tasks, seeds, device) off unless ``--verbose``, or the user chose
    a level (``--verbosity``/``-v``, ``LMEVAL_LOG_LEVEL``, which would override the flag)."""
    chosen = verbose() or "LMEVAL_LOG_LEVEL" in os.environ or _has_flag(argv, "--verbosity", "-v")
    if not chosen:
        os.environ["LMEVAL_LOG_LEVEL"] = "WARNING"
    try:
        yield
    finally:
        if not chosen:
            os.environ.pop("LMEVAL_LOG_LEVEL", None)


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """lm-eval's argparse mistakes as one line (as our own parsers do), without its usage text above."""
    original = argparse.ArgumentParser.error

    def error(self: argparse.ArgumentParser, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see {PROG} --help)\n")

    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


#: Printed above lm-eval's own help: what iclvsft-eval adds to it.
HELP_HEADER = f"""\
{PROG}: lm-eval's command line with iclvsft's pattern tasks added (every lm_eval argument and
subcommand works as in lm_eval; our task folder is included for you, alongside your --include_path).

iclvsft's additions:
  {PROG} register      copy iclvsft's task YAMLs into the installed lm-eval, so a bare `lm_eval` finds them
  {PROG} unregister    remove that copy
  {PROG} status        whether a bare `lm_eval` sees iclvsft's tasks (not registered / current / stale)
  {PROG} --version     the versions of iclvsft, lm-eval, transformers and torch
  --verbose            the libraries' logs (lm-eval's INFO lines are off without it) and warnings, and
                       a traceback above an error; only the long form: -v is lm-eval's own --verbosity
  --model iclvsft-hf   lm-eval's hf backend that computes a prompt prefix shared by many requests once
                       (same --model_args as hf, plus prefix_cache_mb, min_prefix_tokens, prefix_batch_size)
  tasks                `iclvsft tasks` lists them; e.g. --tasks parity_pattern_4shot,parity_pattern_broken_4shot
  --metadata           '{{"iclvsft_seed": 1, "iclvsft_test_size": 200, "iclvsft_demos": "fixed", "iclvsft_draw": 2}}'

lm-eval's help follows.
"""


def _main(argv: Sequence[str]) -> int:
    if VERBOSE_FLAG in argv:
        set_verbose()
        argv = [arg for arg in argv if arg != VERBOSE_FLAG]
    if list(argv) == ["--version"]:
        print(version_line(PROG))
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP_HEADER, flush=True)
    if argv and argv[0] in ("register", "unregister", "status"):
        if len(argv) > 1:
            raise IclvsftError(f"`{PROG} {argv[0]}` takes no arguments")
        print({"register": register, "unregister": unregister, "status": status}[argv[0]]())
        return 0
    check_argv(argv)
    for warning in num_fewshot_warnings(argv):
        print(warning, file=sys.stderr)
    new_argv = lm_eval_argv(argv)
    _glue().register_backend()  # --model iclvsft-hf
    _glue().quiet_lm_eval_noise()
    _one_line_model_errors()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *new_argv]
    try:
        with _one_line_usage_errors(), _lm_eval_log_level(new_argv):
            cli_evaluate()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ValueError as exc:
        if str(exc).startswith("Tasks not found"):  # lm-eval's own message, minus the traceback
            raise IclvsftError(f"{exc} (iclvsft's tasks: `iclvsft tasks`; all: `{PROG} ls tasks`)") from None
        raise
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
