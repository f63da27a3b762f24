"""``iclvsft-train`` as a library: data first, a resolved YAML, then ``trl sft`` as a subprocess.

The flow of one run:
  1. check every input (task, samples, model, output dir, flags) before writing anything;
  2. write the training data once, before any training process exists;
  3. resolve the config: recipe defaults <- platform fixes <- the user's ``--config`` <- explicit
     flags (TRL's own parser applies the last two, exactly as ``trl sft`` will), plus the keys this
     wrapper derives (data path, ``max_steps`` and checkpoint steps from the sample counts);
  4. run ``trl sft --config resolved.yaml <the user's other flags>``: TRL hands every flag it does not
     know to ``accelerate launch``, so DeepSpeed, FSDP and multi-node flags pass straight through;
  5. turn the checkpoints at milestone steps into ``milestones/samples-<n>`` and record everything in
     ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import importlib.util
import io
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from iclvsft_tasks.atomic import atomic_open, atomic_write_text, check_creatable
from iclvsft_tasks.cliutil import default_threads, flag_value, quiet_warnings, slow_half_precision_once, verbose
from iclvsft_tasks.data.spec import DataSpec
from iclvsft_tasks.errors import IclvsftError, model_load_message, model_path_problem, one_line
from iclvsft_train import fast_sft, runlock
from iclvsft_train.data import DataOptions, build_records, split_fingerprints, write_records
from iclvsft_train.run_state import (
    DATA_DIR,
    ITEMS_FILE,
    MANIFEST,
    MILESTONES_DIR,
    RESOLVED,
    TRAINED_FILE,
    RunStatus,
    TrainingRun,
    milestone_interval,
    read_trainer_state,
)

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
#: Keys this wrapper derives; a user setting them would silently break the sample accounting.
DERIVED_KEYS = (
    "dataset_name",
    "max_steps",
    "save_strategy",
    "save_steps",
    "resume_from_checkpoint",
    "dataset_train_split",
    "datasets",
    "include_num_input_tokens_seen",
)
#: The trainer's own token counter, kept in every checkpoint's ``trainer_state.json`` and restored on
#: resume (TRL's logged ``num_tokens`` restarts at 0 in a resumed process). It counts the input tokens
#: of every batch; with one sample per forward pass (every recipe) no batch is padded, so that is the
#: samples' tokens, TRL's count. (Its ``non_padding`` mode cannot be set: transformers 5 parses the
#: field as a boolean.)
TOKEN_COUNTER = {"include_num_input_tokens_seen": True}
#: Files of a checkpoint needed only to resume it; dropped from finished milestones.
_RESUME_ONLY_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")
#: What iclvsft-train runs: `trl sft` with the completion-only loss on CPU and a lifetime tied to this
#: process (see fast_sft), by this interpreter so the same environment is used.
TRL_COMMAND = [sys.executable, "-m", fast_sft.MODULE, fast_sft.LAUNCH]
#: What iclvsft-train runs instead where accelerate would start one plain process: the thin launcher
#: (see fast_sft.simple_launch), followed by the worker's command.
EXEC_COMMAND = [sys.executable, "-m", fast_sft.MODULE, fast_sft.EXEC]
#: The equivalent plain command a TRL user knows, as --dry-run prints it.
PLAIN_TRL_COMMAND = ["trl", "sft"]


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_yaml_mapping(path: Path, what: str, holds: str = "trl sft options") -> dict[str, Any]:
    """The mapping in the YAML file ``path`` ({} when empty), or one IclvsftError naming ``what``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise IclvsftError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise IclvsftError(
            f"{what} {path} is not UTF-8 text (byte {exc.object[exc.start]:#x} at offset {exc.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        raise IclvsftError(f"{what} {path} is not valid YAML: {one_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise IclvsftError(f"{what} {path} must hold a YAML mapping of {holds}")
    return data


def check_recipe(name: str) -> str:
    """``name`` if it is a shipped recipe; a name is never a path (``../x`` would load any YAML)."""
    if name not in recipe_names():
        raise IclvsftError(f"unknown recipe {name!r}; recipes: {', '.join(recipe_names())}")
    return name


def load_recipe(name: str) -> dict[str, Any]:
    return load_yaml_mapping(RECIPES_DIR / f"{check_recipe(name)}.yaml", "recipe")


def platform_defaults(cuda: bool | None = None) -> dict[str, Any]:
    """What TRL gets wrong by default on this machine."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        attention = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
        return {"bf16": True, "attn_implementation": attention}
    defaults: dict[str, Any] = {"bf16": False, "gradient_checkpointing": False}  # TRL's bf16 default fails on CPU
    if "OMP_NUM_THREADS" not in os.environ:
        defaults["env"] = {"OMP_NUM_THREADS": str(default_threads())}
    return defaults


def merge_configs(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; ``env`` blocks are merged key by key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "env" and isinstance(value, dict):
                merged["env"] = {**merged.get("env", {}), **value}
            else:
                merged[key] = value
    return merged


# --- flags ------------------------------------------------------------------------------------------


def _flag_name(token: str) -> str:
    return token.split("=", 1)[0]


def normalize_passthrough(argv: Sequence[str]) -> list[str]:
    """``--accelerate_config=X`` -> two tokens: TRL only resolves the two-token form (trl#6874)."""
    out: list[str] = []
    for token in argv:
        if token.startswith("--accelerate_config="):
            out += ["--accelerate_config", token.split("=", 1)[1]]
        else:
            out.append(token)
    return out


def _accelerate_flags() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return {opt for action in launch_command_parser()._actions for opt in action.option_strings}


def _trl_flags(parser: Any) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def parse_trl(config_path: Path, passthrough: Sequence[str]) -> tuple[Any, Any, Any, list[str]]:
    """Parse like ``trl sft`` does: returns (script args, SFTConfig, ModelConfig, strings for accelerate).

    Flags that neither TRL nor accelerate knows are named here, instead of TRL's message that
    blames accelerate ("Accelerate launch command: error: unrecognized arguments").
    """
    try:
        from trl.scripts.sft import make_parser
    except ImportError:
        raise IclvsftError("the training add-on needs the train extra: pip install 'iclvsft[train]'") from None
    parser = make_parser()
    known = _trl_flags(parser) | _accelerate_flags() | {"--accelerate_config"}
    for token in passthrough:
        if token.startswith("-") and not _is_number(token) and _flag_name(token) not in known:
            name = _flag_name(token)
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise IclvsftError(f"unknown option {name}: not an iclvsft-train, trl sft or accelerate flag{hint}")
    said = io.StringIO()  # argparse's usage (150 lines for trl sft) and message; only the message is kept
    try:
        # the YAML's env block is for the training process, not ours
        with fast_sft.restored_environ(), quiet_warnings(), contextlib.redirect_stderr(said):
            script_args, sft_args, model_args, _, remaining = parser.parse_args_and_config(
                ["--config", str(config_path), *passthrough], return_remaining_strings=True
            )
    except (ValueError, TypeError) as exc:
        raise IclvsftError(f"trl sft rejects the configuration: {one_line(exc)}") from None
    except SystemExit:
        if verbose():
            print(said.getvalue(), end="", file=sys.stderr)
        errors = [line.split("error:", 1)[1].strip() for line in said.getvalue().splitlines() if "error:" in line]
        reason = errors[-1] if errors else "see `trl sft --help`"
        raise IclvsftError(f"trl sft rejects the flags: {reason} (see `trl sft --help`)") from None
    return script_args, sft_args, model_args, list(remaining)


def _warn_if_half_precision_is_slow(sft_args: Any, model_args: Any) -> None:
    """One line when the run would multiply in bfloat16 or float16 on a CPU without native products for
    them: autocast (``bf16``, ``fp16``) or weights loaded in that dtype (``dtype``), as trl sft parsed them."""
    import torch

    dtype = "bfloat16" if sft_args.bf16 else "float16" if sft_args.fp16 else str(model_args.dtype)
    on_cpu = sft_args.use_cpu or not torch.cuda.is_available()
    slow = slow_half_precision_once(dtype, "cpu" if on_cpu else "cuda")
    if slow:
        print(f"iclvsft-train: warning: {slow}", file=sys.stderr)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def accelerate_config_file(passthrough: Sequence[str], resolved: dict[str, Any]) -> Path | None:
    """The accelerate config file a launch will read: ``--config_file``, else the file of an
    ``--accelerate_config`` profile (a path, or one shipped with TRL such as ``zero3``), else None."""
    config_file = flag_value(passthrough, "--config_file") or resolved.get("config_file")
    profile = flag_value(passthrough, "--accelerate_config") or resolved.get("accelerate_config")
    if profile and not config_file:
        path = Path(profile)
        if not path.is_file():
            spec = importlib.util.find_spec("trl")
            path = Path(next(iter(spec.submodule_search_locations))) / "accelerate_configs" / f"{profile}.yaml"
            if not path.is_file():
                shipped = sorted(p.stem for p in path.parent.glob("*.yaml"))
                raise IclvsftError(
                    f"--accelerate_config {profile}: no such file, nor a profile of TRL's ({', '.join(shipped)})"
                )
        return path
    return Path(config_file) if config_file else None


def check_launch_engines(passthrough: Sequence[str], resolved: dict[str, Any] | None = None) -> None:
    """One IclvsftError with the install command when the launch asks for an engine that is not
    installed (DeepSpeed, through a ``zero*`` profile, a config file or a flag), before any data is written;
    accelerate would otherwise fail in a traceback once training starts."""
    resolved = resolved or {}
    config_file = accelerate_config_file(passthrough, resolved)
    settings = load_yaml_mapping(config_file, "accelerate config") if config_file else {}
    deepspeed = (
        str(settings.get("distributed_type", "")).upper() == "DEEPSPEED"
        or "deepspeed_config" in settings
        or any(flag_value(passthrough, f) is not None for f in ("--deepspeed_config_file", "--zero_stage"))
        or "--use_deepspeed" in passthrough
        or flag_value(passthrough, "--deepspeed") is not None
    )
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        where = f" ({config_file.name})" if config_file else ""
        raise IclvsftError(
            f"the launch asks for DeepSpeed{where}, which is not installed: pip install deepspeed "
            "(needs a CUDA toolkit), or choose another --accelerate_config (e.g. fsdp2, multi_gpu)"
        )


def world_size(passthrough: Sequence[str], resolved: dict[str, Any]) -> int:
    """Processes accelerate will start: ``--num_processes``, else the accelerate config's, else 1."""
    value = flag_value(passthrough, "--num_processes") or resolved.get("num_processes")
    if value is None:
        config_file = accelerate_config_file(passthrough, resolved)
        if config_file:
            value = load_yaml_mapping(config_file, "accelerate config").get("num_processes", 1)
    try:
        size = int(value) if value is not None else 1
    except (TypeError, ValueError):
        raise IclvsftError(f"--num_processes must be an integer, got {value!r}") from None
    if size < 1:
        raise IclvsftError(f"--num_processes must be at least 1, got {size}")
    return size


# --- samples and steps ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How sample counts map to optimizer steps: one step = one effective batch of samples."""

    effective_batch: int  # per-device batch x gradient accumulation x processes
    max_steps: int
    milestone_steps: dict[int, int]  # samples seen -> step
    save_steps: int

    @property
    def samples_seen(self) -> int:
        return self.max_steps * self.effective_batch


def plan_schedule(
    samples: int, epochs: float, per_device: int, accumulation: int, processes: int, milestones: Sequence[int]
) -> Schedule:
    batch = per_device * accumulation * processes
    where = (
        f"the effective batch {batch} ({per_device} per device x {accumulation} accumulation x {processes} processes)"
    )

    def nearest(n: int) -> str:
        low, high = (n // batch) * batch, (n // batch + 1) * batch
        return " or ".join(str(v) for v in (low, high) if v > 0)

    if samples % batch:
        raise IclvsftError(
            f"--samples {samples} is not a multiple of {where}; sample counts are whole "
            f"batches: use {nearest(samples)}, or change the batch"
        )
    total = epochs * samples / batch
    if epochs <= 0 or abs(total - round(total)) > 1e-9:
        raise IclvsftError(
            f"num_train_epochs {epochs} x --samples {samples} is not a whole number of batches of {batch}"
        )
    max_steps = round(total)
    steps: dict[int, int] = {}
    for m in sorted(set(milestones)):
        if m <= 0 or m % batch or m > max_steps * batch:
            raise IclvsftError(
                f"milestone {m} must be a positive multiple of {where}, at most the "
                f"{max_steps * batch} samples the run sees; nearest: {nearest(m)}"
            )
        steps[m] = m // batch
    # Checkpoints every gcd of the milestone steps land on every milestone (the trainer also saves at
    # the last step); the ones in between are resume points, deleted when the run ends. Without
    # milestones, resume points fall about every tenth of the run.
    save_steps = milestone_interval(steps.values()) or max(1, math.ceil(max_steps / 10))
    return Schedule(batch, max_steps, steps, save_steps)


# --- the run -------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainOptions:
    task: str
    samples: int
    model: str
    output_dir: Path
    recipe: str = "lora"
    config: Path | None = None
    milestones: tuple[int, ...] = ()
    train_shots: tuple[int, ...] = (0,)
    data: DataSpec = dataclasses.field(default_factory=DataSpec)  # seed and split sizes
    resume: bool = False
    passthrough: tuple[str, ...] = ()
    dry_run: bool = False


def check_model(model: str) -> None:
    """Fail early and in one line when the model cannot be found (local path or cached hub id)."""
    problem = model_path_problem(model)
    if problem:
        raise IclvsftError(problem)
    path = Path(model).expanduser()
    looks_local = path.is_dir()
    from transformers import AutoConfig

    try:
        with quiet_warnings():
            AutoConfig.from_pretrained(str(path) if looks_local else model)
    except Exception as exc:
        raise IclvsftError(model_load_message(model, exc)) from None


def check_output_dir(output_dir: Path, resume: bool) -> None:
    check_creatable(output_dir, "--output_dir")  # before anything below touches the path
    if resume:
        return
    in_folder = [p for p in output_dir.iterdir() if p.name != runlock.LOCK_FILE] if output_dir.is_dir() else []
    if in_folder and not TrainingRun.load(output_dir).only_prepared:
        what = "a run" if (output_dir / MANIFEST).exists() else "files"
        raise IclvsftError(
            f"--output_dir {output_dir} already holds {what}; add --resume to continue "
            "an interrupted run, or choose another directory"
        )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("iclvsft", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "lm_eval"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def _write_manifest(output_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(output_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, leave=False)


def prepare(options: TrainOptions) -> dict[str, Any]:
    """Steps 1-3: check, write data and resolved.yaml, and return the manifest (nothing is launched).

    Under the folder's lock: a folder another live run holds is neither checked nor written."""
    with runlock.hold(options.output_dir):
        return _prepare(options)


def _prepare(options: TrainOptions) -> dict[str, Any]:
    data = DataOptions.create(options.task, options.samples, options.data, options.train_shots)
    output_dir = options.output_dir
    check_output_dir(output_dir, options.resume)
    check_launch_engines(normalize_passthrough(options.passthrough))
    previous: dict[str, Any] | None = None
    if options.resume:
        earlier = TrainingRun.load(output_dir)
        if earlier.status is RunStatus.ABSENT:
            raise IclvsftError(f"nothing to resume in {output_dir}: no {MANIFEST} from an earlier iclvsft-train run")
        previous = dict(earlier.manifest)
        if earlier.status is RunStatus.COMPLETE:
            raise IclvsftError(f"nothing to resume in {output_dir}: that run already completed")
    check_model(options.model)

    recipe = load_recipe(options.recipe)
    user = load_yaml_mapping(options.config, "--config") if options.config else {}
    passthrough = normalize_passthrough(options.passthrough)
    for key in DERIVED_KEYS:
        if key in user or flag_value(passthrough, f"--{key}") is not None:
            raise IclvsftError(
                f"{key} is set by iclvsft-train (from --samples, --milestones and --resume); "
                "remove it from your flags and --config"
            )
    for key in ("model_name_or_path", "output_dir"):
        if key in user:
            raise IclvsftError(f"give --{key} on the command line, not in --config")
    trained = merge_configs(recipe, platform_defaults(), user)
    launcher = {}
    if not any(flag_value(passthrough, f) or user.get(f[2:]) for f in ("--config_file", "--accelerate_config")):
        # One process unless told otherwise (CLI flags still win), with accelerate's precision
        # matching the trainer's; this also silences accelerate's "values were not passed" warning.
        precision = "bf16" if trained.get("bf16") else "fp16" if trained.get("fp16") else "no"
        launcher = {"num_processes": 1, "num_machines": 1, "mixed_precision": precision, "dynamo_backend": "no"}
    base = merge_configs(
        recipe,
        platform_defaults(),
        launcher,
        user,
        {
            "model_name_or_path": options.model,
            "output_dir": str(output_dir),
            "dataset_name": str((output_dir / DATA_DIR).resolve()),
        },
    )

    # Parse the way `trl sft` will, to learn the batch and epochs that explicit flags may override.
    # A fresh private file (O_EXCL, mode 0600): never a predictable name that a symlink could redirect.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="iclvsft-train-probe-", encoding="utf-8") as probe:
        probe.write(yaml.safe_dump(base, sort_keys=False))
        probe.flush()
        _, sft_args, model_args, remaining = parse_trl(Path(probe.name), passthrough)
    _warn_if_half_precision_is_slow(sft_args, model_args)
    processes = world_size(passthrough, base)
    schedule = plan_schedule(
        options.samples,
        float(sft_args.num_train_epochs),
        sft_args.per_device_train_batch_size,
        sft_args.gradient_accumulation_steps,
        processes,
        options.milestones,
    )
    resolved = merge_configs(
        base,
        {"max_steps": schedule.max_steps, "save_strategy": "steps", "save_steps": schedule.save_steps},
        TOKEN_COUNTER,
    )

    manifest = {
        "status": RunStatus.PREPARED.value,
        "tasks": list(data.tasks),
        "samples": options.samples,
        "samples_per_task": data.per_task(),
        "data_seed": options.data.seed,
        "train_shots": list(data.train_shots),
        "split_sizes": options.data.sizes,
        "split_fingerprints": split_fingerprints(data),
        "recipe": options.recipe,
        "user_config": str(options.config) if options.config else None,
        "model": options.model,
        "peft": bool(model_args.use_peft),
        "resolved_config": resolved,
        "passthrough_flags": passthrough,
        "accelerate_flags": remaining,
        "processes": processes,
        "effective_batch": schedule.effective_batch,
        "max_steps": schedule.max_steps,
        "samples_seen_at_end": schedule.samples_seen,
        "milestones": {str(m): {"step": s, "path": None} for m, s in schedule.milestone_steps.items()},
        "versions": _versions(),
    }
    if previous is not None:
        earlier_flags = previous.get("passthrough_flags") or []
        if earlier_flags != passthrough:  # first: other flags (e.g. no --num_processes) change the schedule too
            what = f"pass exactly `{shlex.join(earlier_flags)}`" if earlier_flags else "it passed none"
            raise IclvsftError(
                f"--resume needs the trl sft and accelerate flags of the interrupted run: {what} "
                "besides the iclvsft-train options"
            )
        for key in (
            "tasks",
            "samples",
            "data_seed",
            "train_shots",
            "split_sizes",
            "split_fingerprints",
            "resolved_config",
            "milestones",
        ):
            if _resume_view(key, previous.get(key)) != _resume_view(key, manifest[key]):
                raise IclvsftError(
                    f"--resume needs the same options as the interrupted run, but {key} differs "
                    f"(see {output_dir / MANIFEST})"
                )

    with _progress(options.samples, "training data") as bar:
        records = build_records(data, progress=bar.update)
    output_dir.mkdir(parents=True, exist_ok=True)
    data_path = write_records(records, output_dir / DATA_DIR)
    manifest["data_sha256"] = hashlib.sha256(data_path.read_bytes()).hexdigest()
    if previous is not None and previous.get("data_sha256") != manifest["data_sha256"]:
        raise IclvsftError("--resume: the regenerated training data differs from the interrupted run's")
    with atomic_open(output_dir / ITEMS_FILE) as handle:
        for record in records:
            handle.write(json.dumps({k: record[k] for k in ("id", "task", "shots", "demo_ids")}) + "\n")
    atomic_write_text(output_dir / RESOLVED, yaml.safe_dump(resolved, sort_keys=False))
    _write_manifest(output_dir, manifest)
    return manifest


#: Resolved-config keys that say where the run folder is, not how it trains: a folder copied or moved
#: elsewhere resumes there (prepare rewrites them for the new place).
_LOCATION_KEYS = ("output_dir", "dataset_name")


def _resume_view(key: str, value: Any) -> Any:
    """A manifest field as --resume compares it: the thread count in the resolved config's ``env`` may
    differ (it follows this process's OMP_NUM_THREADS, e.g. in an ``iclvsft compare --jobs`` worker),
    and so may the folder's location."""
    if key != "resolved_config" or not isinstance(value, dict):
        return value
    env = {k: v for k, v in (value.get("env") or {}).items() if k != "OMP_NUM_THREADS"}
    kept = {k: v for k, v in value.items() if k != "env" and k not in _LOCATION_KEYS}
    return {**kept, **({"env": env} if env else {})}


def trl_command(output_dir: Path, passthrough: Sequence[str], resume_from: Path | None = None) -> list[str]:
    """What iclvsft-train runs (``TRL_COMMAND``): ``trl sft`` with the compact CPU loss."""
    cmd = [*TRL_COMMAND, "--config", str(output_dir / RESOLVED), *normalize_passthrough(passthrough)]
    if resume_from is not None:
        cmd += ["--resume_from_checkpoint", str(resume_from)]
    return cmd


def plain_trl_command(cmd: Sequence[str]) -> str:
    """``cmd`` (from trl_command) as the equivalent ``trl sft`` line, quoted so that it runs when pasted."""
    return shlex.join([*PLAIN_TRL_COMMAND, *cmd[len(TRL_COMMAND) :]])


def finalize_milestones(folder: TrainingRun, manifest: dict[str, Any]) -> None:
    """Keep the checkpoints at milestone steps as ``milestones/samples-<n>``; drop the other ones."""
    output_dir = folder.directory
    by_step = {int(p.name.split("-")[1]): p for p in folder.complete_checkpoints()}
    for samples, entry in manifest["milestones"].items():
        target = output_dir / MILESTONES_DIR / f"samples-{samples}"
        if not target.is_dir():
            source = by_step.get(entry["step"])
            if source is None:
                raise IclvsftError(f"the checkpoint for milestone {samples} (step {entry['step']}) is missing")
            target.parent.mkdir(exist_ok=True)
            os.replace(source, target)
        for name in _RESUME_ONLY_FILES:
            (target / name).unlink(missing_ok=True)
        entry["path"] = target.relative_to(output_dir).as_posix()  # relative: a copied folder loads its own
    for leftover in folder.checkpoint_folders():
        shutil.rmtree(leftover, ignore_errors=True)


def run(options: TrainOptions) -> int:
    """The whole run, holding the folder's lock; returns trl's exit code (0 on success)."""
    with runlock.hold(options.output_dir) as lock:
        return _run(options, lock)


def _run(options: TrainOptions, lock: runlock.RunLock) -> int:
    manifest = prepare(options)
    output_dir = options.output_dir
    folder = TrainingRun.load(output_dir)  # for its checkpoints: this function writes the manifest itself
    resume_from = None
    if options.resume:
        checkpoints = folder.complete_checkpoints()
        for partial in folder.checkpoint_folders():
            if partial not in checkpoints:
                shutil.rmtree(partial, ignore_errors=True)  # killed while saving: useless
        if not checkpoints:
            raise IclvsftError(f"nothing to resume in {output_dir}: the interrupted run saved no complete checkpoint")
        resume_from = checkpoints[-1]
    cmd = trl_command(output_dir, options.passthrough, resume_from)
    manifest["command"] = cmd
    if options.dry_run:
        print(plain_trl_command(cmd))
        print(
            "iclvsft-train: the same run as this plain trl sft command; iclvsft-train itself runs it as "
            f"`python -m {fast_sft.MODULE} sft ...` (a one-process run: its worker under a thin launcher), "
            "which scores the loss on the completion tokens only on CPU "
            "too (equal losses, less time), in a one-process run spaces the resume points between milestones "
            "by what a save costs, and ends the trainer with its parent",
            file=sys.stderr,
        )
        return 0
    manifest["status"] = RunStatus.RUNNING.value
    _write_manifest(output_dir, manifest)
    print(
        f"iclvsft-train: {manifest['samples']} samples of {', '.join(manifest['tasks'])}, "
        f"{manifest['max_steps']} steps of {manifest['effective_batch']} samples, recipe {options.recipe}"
        + (f", resuming from {resume_from.name}" if resume_from else ""),
        file=sys.stderr,
    )
    lock.share()  # the training workers take shared locks of their own
    trained = output_dir / TRAINED_FILE
    if options.resume and trained.is_file():
        print(
            "iclvsft-train: the interrupted trainer had finished training and saving; finishing the folder",
            file=sys.stderr,
        )
    else:
        trained.unlink(missing_ok=True)
        milestone_steps = [entry["step"] for entry in manifest["milestones"].values()]
        simple = fast_sft.simple_launch(cmd[len(TRL_COMMAND) :])
        if simple is not None:  # one plain process: the thin launcher, with accelerate's command and env
            worker_cmd, worker_env = simple
            code = supervise([*EXEC_COMMAND, *worker_cmd], trained, milestone_steps, worker_env)
        else:
            code = supervise(cmd, trained, milestone_steps)
        if code != 0:
            manifest["status"] = RunStatus.FAILED.value
            manifest["exit_code"] = code
            _write_manifest(output_dir, manifest)
            print(
                f"iclvsft-train: trl sft exited with status {code}; `--resume` continues from the last checkpoint",
                file=sys.stderr,
            )
            if code == 128 + signal.SIGINT:
                raise KeyboardInterrupt  # Ctrl-C: the caller (the CLI, iclvsft compare) stops as it does for one
            return code
    checkpoints = folder.complete_checkpoints()
    last_state = read_trainer_state(checkpoints[-1]) if checkpoints else {}
    finalize_milestones(folder, manifest)
    manifest["status"] = RunStatus.COMPLETE.value
    manifest["final_model"] = "."  # the run folder itself, wherever it is copied
    manifest["global_step"] = last_state.get("global_step")
    manifest["samples_seen"] = (last_state.get("global_step") or 0) * manifest["effective_batch"]
    _write_manifest(output_dir, manifest)
    trained.unlink(missing_ok=True)
    print(f"iclvsft-train: done: {output_dir} ({len(manifest['milestones'])} milestones)", file=sys.stderr)
    return 0


#: Signals that stop a run: each ends the trainer's whole process group.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


#: Seconds a trainer may take to exit after it wrote its done file (training ended, final model saved);
#: then its process group is killed and the run counts as complete. A healthy exit takes a few seconds.
SHUTDOWN_GRACE_S = 15.0


def supervise(
    cmd: Sequence[str],
    done: Path | None = None,
    milestone_steps: Sequence[int] | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``cmd`` (the fast_sft launcher) in a process group of its own and wait for it.

    The launcher dies with this process (parent-death signal) and takes its group with it; a stop
    signal sent here ends that group; and whatever of the group is left when the launcher exits
    is killed, so no trainer outlives the run. Once the trainer has written ``done`` (fast_sft's
    ``ICLVSFT_TRAIN_DONE``), a hang or an error in its shutdown loses nothing: after
    ``SHUTDOWN_GRACE_S`` the group is killed, and either way the result is 0. Given ``milestone_steps``,
    the trainer spaces the resume points between them by what a save costs (``save_spacing``). ``env``
    replaces this process's environment for ``cmd`` (the worker's, from ``fast_sft.simple_launch``).
    """
    env = {**(os.environ if env is None else env), fast_sft.PARENT_ENV: str(os.getpid())}
    if done is not None:
        env[fast_sft.DONE_ENV] = str(done.resolve())
    if milestone_steps is not None:
        env.update(fast_sft.milestone_steps_env(milestone_steps))
    process = subprocess.Popen(list(cmd), process_group=0, env=env)
    stopped: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        stopped.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # the launcher kills its whole group

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS} if main_thread else {}
    hung = False
    try:
        deadline = None
        while True:
            try:
                code = process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if deadline is None and done is not None and done.is_file():
                deadline = time.monotonic() + SHUTDOWN_GRACE_S
            if deadline is not None and time.monotonic() > deadline and not stopped:
                hung = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                code = process.wait()
                break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # stragglers (a worker hung after the launcher ended)
        if process.poll() is None:
            process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        print(f"iclvsft-train: stopped by {signal.Signals(stopped[0]).name}", file=sys.stderr)
        return 128 + stopped[0]
    if hung:
        print(
            f"iclvsft-train: trl sft finished training and saving but hung at shutdown; "
            f"stopped it after {SHUTDOWN_GRACE_S:g} s",
            file=sys.stderr,
        )
        return 0
    if code != 0 and done is not None and done.is_file():
        print(
            f"iclvsft-train: trl sft exited with status {code} at shutdown, after training and saving ended; "
            "the run is kept",
            file=sys.stderr,
        )
        return 0
    return code
