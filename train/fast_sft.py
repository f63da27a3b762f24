"""``trl sft`` with the completion-only loss on CPU: TRL's launcher and script, one patch, and a tied lifetime.

    python -m iclvsft_train.fast_sft sft --config resolved.yaml [any trl sft / accelerate flag]

is ``trl sft`` (same parser, same ``accelerate launch``, same ``trl.scripts.sft.main``) except for these:

* The LM head scores only the completion positions on CPU too. TRL 1.16's fused LM head
  (``trl.trainer.utils.add_fused_lm_head``) gathers the positions with a label before its chunked
  log-softmax only where ``_use_triton(device)`` is true (CUDA, XPU); elsewhere it scores every position
  (the whole few-shot prompt x the vocabulary) and masks afterwards, because on Neuron a varying number
  of positions recompiles the graph. CPU has no such cost, so the worker rebinds that one name in
  ``trl.trainer.utils`` to also answer True on CPU; ``trl.kernels.chunked_logprob._use_triton``, which
  picks the Triton kernels, is untouched. The loss is the same sum over the same positions.
  If TRL's code is not the shape this patch expects, the worker warns and trains exactly as ``trl sft``.
* When those positions' logits are small (a few completion tokens x the vocabulary: 1 MB per position
  for Gemma 3's 262k vocabulary), the CPU computes them whole instead of through TRL's chunked kernel
  (``dense_logprobs``). The kernel exists to avoid holding ``[N, vocab]`` logits, and pays for it by
  computing the LM head product again in the backward pass: three passes over the 670 MB head per
  micro-batch instead of two, which was 47% of a LoRA step on Gemma 3 270M (py-spy, BENCHMARKS.md).
  Same outputs (log-probabilities, entropy, top-1) up to float rounding; larger N, other devices,
  sharded heads and bfloat16 (whose whole-logits product ran 4x slower than the kernel on this CPU)
  keep the kernel.
* Every process of the run dies with its parent: the launcher and each training worker ask Linux for
  a signal when their parent dies (``PR_SET_PDEATHSIG``; it is cleared across fork, so each sets its
  own), and the launcher, on SIGTERM/SIGINT/SIGHUP, kills its whole process group (while accelerate
  waits for a one-process worker, its own SIGTERM handler ends the worker's process tree instead;
  ``launch.supervise`` signals the whole group either way). The worker also holds a shared lock on
  the run folder (``runlock``) while it lives, so no other run deletes it.
* In a one-process run that iclvsft-train started, resume-point checkpoints are spaced by what a save
  costs (``save_spacing``): milestones and the last step are always saved, so the run's results are
  the same; a full fine-tune's 3.2 GB checkpoints stop dominating short CPU runs.
* A finished trainer cannot hang the run. Once ``trl.scripts.sft.main`` returns (training ended, the final
  model saved, the process group destroyed) the main process writes the file iclvsft-train names in
  ``ICLVSFT_TRAIN_DONE``, and the launcher stops a run that then fails to exit (``launch.supervise``).
  Under a process group every worker then ends with ``os._exit``: letting Python free the trainer runs
  torch's ``~ProcessGroupGloo``, which joins gloo's worker threads while holding the GIL, and one of
  them may need the GIL to free a tensor: a deadlock that hung 1 of 5 CPU DDP runs on a tiny model
  (issue 12 saw ``trl sft`` do the same). The worker keeps the trainer referenced so that no destructor
  runs before that.

The launcher mirrors ``trl/cli/commands/training.py`` (TRL's parser, ``resolve_accelerate_config_argument``,
accelerate's ``launch_command``) with ``--module iclvsft_train.fast_sft`` in place of TRL's script path,
so DeepSpeed, FSDP and multi-process flags pass through unchanged. Where accelerate would start one plain
process (its simple launcher: one CPU or GPU, no DeepSpeed, FSDP, TPU or mpirun), iclvsft-train computes
the worker's command and environment with accelerate's own functions (``simple_launch``) and starts

    python -m iclvsft_train.fast_sft exec <worker command>

instead: a thin launcher with the same lifetime duties and exit codes and none of the imports, which
saves ~3 s of start-up on a 2-core CPU. An accelerate whose launch code is not the one this mirrors gets
the full launcher.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import io
import json
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence

MODULE = "iclvsft_train.fast_sft"
#: The first argument that makes ``python -m iclvsft_train.fast_sft`` the launcher (as in ``trl sft``).
LAUNCH = "sft"
#: Set by whoever starts the launcher: its pid, so a launcher whose parent died before it could ask
#: for the parent-death signal notices and ends.
PARENT_ENV = "ICLVSFT_TRAIN_PARENT"
#: Set by iclvsft-train: the file the main training process writes once training ended and the final
#: model is saved (see finish).
DONE_ENV = "ICLVSFT_TRAIN_DONE"
#: Set by iclvsft-train: the milestone steps, comma-separated. Its presence spaces the resume-point
#: checkpoints by what a save costs (``save_spacing``); without it the run saves as ``trl sft`` does.
MILESTONE_STEPS_ENV = "ICLVSFT_TRAIN_MILESTONE_STEPS"
#: Test-only (tests/test_fast_sft.py): the main worker sleeps forever after writing the done file, as a
#: trainer hung in its teardown does. Nothing else reads it.
HANG_ENV = "ICLVSFT_TEST_HANG_AFTER_TRAINING"
_PR_SET_PDEATHSIG = 1
#: The trainers this process ran, kept referenced until it exits (see finish).
_trainers: list[object] = []


# --- the compact loss ----------------------------------------------------------------------------------


def install_compact_loss() -> bool:
    """Make TRL's fused LM head score only the labelled positions on CPU; False (and a warning) when
    TRL's internals are not the ones this was written against, in which case nothing is changed."""
    try:
        from trl.trainer import utils as trl_utils

        original = trl_utils._use_triton
        source = inspect.getsource(trl_utils.add_fused_lm_head)
    except (ImportError, AttributeError, OSError, TypeError):
        source, original = "", None
    if original is None or "compact = _use_triton(" not in source:
        warnings.warn(
            "iclvsft-train: this TRL's fused LM head is not the one the compact CPU loss patches; "
            "training as plain trl sft does (every position scored)",
            stacklevel=2,
        )
        return False
    if getattr(original, "_iclvsft_compact", False):
        return True

    def use_compact(device):  # the name TRL's fused forward looks up for its `compact` switch
        return device.type == "cpu" or original(device)

    use_compact._iclvsft_compact = True
    trl_utils._use_triton = use_compact
    return True


#: Logits the dense head may hold at once (float32 bytes of ``[N, vocab]``); beyond it, TRL's chunked kernel.
DENSE_HEAD_BYTES = 256 * 2**20


def dense_logprobs(
    hidden,
    weight,
    bias,
    targets,
    temperature: float,
    chunk_size: int,
    final_logit_softcapping: float | None,
    logit_scale: float,
    outputs: tuple[str, ...],
):
    """``trl.kernels.ChunkedLogProbFunction.apply``'s outputs from whole logits, differentiated by autograd
    (one product with the head forward, one backward, none recomputed). Same arguments as the kernel's,
    as TRL's fused head passes them; ``chunk_size`` goes unused."""
    import torch

    z = torch.nn.functional.linear(hidden, weight, bias).float() * logit_scale
    if final_logit_softcapping is not None:
        z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
    z = z / temperature
    log_z = torch.logsumexp(z, dim=-1)
    logprobs = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
    entropy = log_z - (torch.softmax(z, dim=-1) * z).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():  # the kernel marks these three non-differentiable
        log_p = z - log_z.unsqueeze(-1)
        log_sum_sq_probs = torch.logsumexp(2 * log_p, dim=-1) if "log_sum_sq_probs" in outputs else None
        mean_logits = z.mean(-1) if "mean_logits" in outputs else None
        is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None  # the first maximum, as the kernel
    return logprobs, entropy, log_sum_sq_probs, mean_logits, is_top1


class _DenseWhenSmall:
    """Stands in for TRL's ``_ChunkedLogProbFunction``: ``apply`` computes small CPU heads whole."""

    def __init__(self, chunked) -> None:
        self.chunked = chunked

    def apply(self, hidden, weight, *rest):
        import torch

        small = hidden.shape[0] * weight.shape[0] * 4 <= DENSE_HEAD_BYTES
        local = type(weight) in (torch.Tensor, torch.nn.Parameter) and not hasattr(weight, "ds_id")  # not sharded
        # float32 only: this CPU's bfloat16 product and its backward ran 4x slower than the kernel's tiles
        fp32 = hidden.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
        if hidden.device.type == "cpu" and small and local and fp32:
            return dense_logprobs(hidden, weight, *rest)
        return self.chunked.apply(hidden, weight, *rest)


def install_dense_small_head() -> bool:
    """Route TRL's fused LM head through ``_DenseWhenSmall``; False (and a warning) when TRL has no such
    function to route, in which case nothing is changed."""
    try:
        from trl.trainer import utils as trl_utils

        chunked = trl_utils._ChunkedLogProbFunction
        source = inspect.getsource(trl_utils.add_fused_lm_head)
    except (ImportError, AttributeError, OSError, TypeError):
        chunked, source = None, ""
    if isinstance(chunked, _DenseWhenSmall):
        return True
    if chunked is None or "_ChunkedLogProbFunction.apply(" not in source:
        warnings.warn(
            "iclvsft-train: this TRL's fused LM head is not the one the dense CPU head replaces; "
            "the LM head runs through TRL's chunked kernel",
            stacklevel=2,
        )
        return False
    trl_utils._ChunkedLogProbFunction = _DenseWhenSmall(chunked)
    return True


# --- lifetime ------------------------------------------------------------------------------------------


def die_with_parent(sig: int) -> None:
    """Ask Linux to send ``sig`` when the parent dies, and end now if it already has."""
    expected = os.environ.get(PARENT_ENV)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if expected is not None and os.getppid() != int(expected):  # died before prctl took effect
        os.kill(os.getpid(), sig)


def lead_the_run() -> None:
    """A launcher's lifetime duties: die with iclvsft-train, end the whole process group on a stop signal
    when it leads one (iclvsft-train starts it so), and let its workers check that it is their parent."""
    die_with_parent(signal.SIGTERM)
    if os.getpgrp() == os.getpid():
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _kill_group)
    os.environ[PARENT_ENV] = str(os.getpid())  # for the workers' die_with_parent


@contextlib.contextmanager
def restored_environ() -> Iterator[None]:
    """Run a block (TRL's parser, which applies a YAML ``env`` block to ``os.environ``) and put this
    process's environment back as it was afterwards."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _kill_group(signum: int, frame: object) -> None:
    """The launcher leads the run's process group: end all of it (accelerate, workers, their helpers)."""
    for each in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(each, signal.SIG_IGN)
    os.killpg(os.getpgrp(), signal.SIGKILL)


# --- the end of training -------------------------------------------------------------------------------


def milestone_steps_env(steps: Iterable[int]) -> dict[str, str]:
    """The environment entry that asks the worker to space resume points around these milestone steps."""
    return {MILESTONE_STEPS_ENV: ",".join(str(step) for step in sorted(steps))}


def _milestone_steps_from_env() -> list[int] | None:
    value = os.environ.get(MILESTONE_STEPS_ENV)
    return None if value is None else [int(step) for step in value.split(",") if step]


def hook_train() -> None:
    """Before any trainer trains: keep it referenced, so that ``trl.scripts.sft.main`` returning frees no
    DDP reducer or process group (their destructors can deadlock; see the module docstring), and, in a
    one-process run that iclvsft-train started, space its resume points (``save_spacing``; not where the
    best checkpoint is to be kept, which a skipped save could drop)."""
    from transformers import Trainer

    train = Trainer.train
    if getattr(train, "_iclvsft_hooked", False):
        return
    milestone_steps = _milestone_steps_from_env()

    @functools.wraps(train)
    def hooked_train(self, *args, **kwargs):
        _trainers.append(self)
        one_process = self.args.world_size == 1
        if milestone_steps is not None and one_process and not getattr(self.args, "load_best_model_at_end", False):
            from iclvsft_train.save_spacing import SpacedResumePoints

            self.add_callback(SpacedResumePoints(milestone_steps))
        return train(self, *args, **kwargs)

    hooked_train._iclvsft_hooked = True
    Trainer.train = hooked_train


def finish() -> None:
    """After ``main`` returned: the main process records that training is done, and a worker of a
    process group ends now, without the teardown that can deadlock."""
    main_process = os.environ.get("RANK", "0") == "0"
    done = os.environ.get(DONE_ENV)
    if done and main_process:
        from iclvsft_tasks.atomic import atomic_write_text

        steps = [getattr(getattr(t, "state", None), "global_step", None) for t in _trainers]
        atomic_write_text(done, json.dumps({"global_step": steps[-1] if steps else None}) + "\n")
        if os.environ.get(HANG_ENV):  # test-only: a trainer that hangs after its last save
            while True:
                time.sleep(3600)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(0)


# --- the two roles -------------------------------------------------------------------------------------


def _accelerate_launch_args(argv: Sequence[str]):
    """``trl sft argv``'s ``accelerate launch`` arguments, with this module as the script: TRL's parse
    (which applies a YAML ``env`` block to ``os.environ``), as ``trl/cli/commands/training.py`` does."""
    from accelerate.commands.launch import launch_command_parser
    from trl.cli.accelerate_config import resolve_accelerate_config_argument
    from trl.cli.commands.training import _subtract_subsequence
    from trl.scripts.sft import make_parser

    all_args = list(argv)
    *_, config_remaining, cli_remaining = make_parser(prog="trl sft").parse_args_and_config(
        all_args, return_remaining_strings=True, separate_remaining_strings=True
    )
    launch_args = resolve_accelerate_config_argument(config_remaining + cli_remaining)
    script_args = _subtract_subsequence(all_args, cli_remaining)
    return launch_command_parser().parse_args([*launch_args, "--module", MODULE, *script_args])


def launch(argv: Sequence[str]) -> int:
    """The launcher: ``trl sft``'s parsing and ``accelerate launch``, with this module as the script."""
    from accelerate.commands.launch import launch_command

    lead_the_run()
    launch_command(_accelerate_launch_args(argv))
    return 0


# --- the one-process shortcut --------------------------------------------------------------------------

#: The first argument that makes ``python -m iclvsft_train.fast_sft`` the thin launcher of a one-process
#: run; the rest of the command line is the worker's command.
EXEC = "exec"
#: sha256 of the accelerate code that ``simple_launch`` and ``run_worker`` stand in for (``launch_command``'s
#: choice of launcher, ``simple_launcher`` and ``_run_subprocess``) and of the private validator it calls:
#: accelerate 1.16.0. Any other source takes the full launcher (the same run, ~3 s more start-up).
KNOWN_ACCELERATE_SOURCES = frozenset({"deb48f7521c31c016308bbf798631e501fff50d86d52e0e9ef535eeffac1b274"})


def accelerate_source_hash() -> str | None:
    """The hash ``KNOWN_ACCELERATE_SOURCES`` holds for the installed accelerate; None where it cannot be read."""
    import hashlib

    try:
        from accelerate.commands import launch as accelerate_launch

        parts = [
            inspect.getsource(getattr(accelerate_launch, name))
            for name in ("launch_command", "_validate_launch_command", "simple_launcher", "_run_subprocess")
        ]
    except (ImportError, AttributeError, OSError, TypeError):
        return None
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _is_simple(args, defaults) -> bool:
    """Whether ``accelerate.commands.launch.launch_command`` would start validated ``args`` with its
    ``simple_launcher`` (its order of branches), as one plain process we can start ourselves."""
    from accelerate.utils import ComputeEnvironment

    if getattr(args, "mpirun_hostfile", None):  # the process would be mpirun, not our worker
        return False
    if defaults is not None and defaults.compute_environment == ComputeEnvironment.AMAZON_SAGEMAKER:
        return False
    distributed = (args.use_deepspeed, args.use_fsdp, args.use_megatron_lm, args.multi_gpu, args.tpu)
    return bool(args.cpu) or not any(distributed)


def simple_launch(argv: Sequence[str]) -> tuple[list[str], dict[str, str]] | None:
    """The worker's command and environment for ``python -m iclvsft_train.fast_sft sft argv``, where
    accelerate would start it as one plain process; None for anything else (multi-process, DeepSpeed,
    FSDP, TPU, SageMaker, mpirun, flags accelerate rejects, an accelerate whose code is not the one this
    mirrors), which the full launcher then runs as before.

    Run in iclvsft-train's process, which has TRL and accelerate imported already: the launcher process
    then only waits (``run_worker``) instead of importing them again (~3 s of start-up on a 2-core CPU).
    The command and environment are accelerate's own (``prepare_simple_launcher_cmd_env``, after its
    ``_validate_launch_command``); this process's environment is left as it was.
    """
    if accelerate_source_hash() not in KNOWN_ACCELERATE_SOURCES:
        return None
    said = io.StringIO()  # argparse's usage and accelerate's defaults warning, shown once by whoever launches
    try:
        with restored_environ(), contextlib.redirect_stderr(said):  # the YAML's env is the worker's, not ours
            from accelerate.commands import launch as accelerate_launch

            args, defaults, _ = accelerate_launch._validate_launch_command(_accelerate_launch_args(argv))
            if not _is_simple(args, defaults):
                return None
            cmd, env = accelerate_launch.prepare_simple_launcher_cmd_env(args)  # the name simple_launcher calls
    except (Exception, SystemExit):  # the full launcher runs and says what accelerate or TRL rejects
        return None
    sys.stderr.write(said.getvalue())
    return list(cmd), dict(env)


def run_worker(cmd: Sequence[str]) -> int:
    """The thin launcher of a one-process run: start the worker, wait, exit 0 or 1 as accelerate's simple
    launcher does, with the launcher's lifetime duties and none of its imports. One difference: the worker
    writes to this process's stderr itself (accelerate pipes it through and, on failure, raises again with
    its tail), so a failure's traceback is printed once and a terminal stays a terminal for progress bars."""
    import subprocess

    lead_the_run()
    return 0 if subprocess.call(list(cmd)) == 0 else 1


def worker() -> None:
    """One training process: ``trl/scripts/sft.py``'s ``__main__``, after the patch."""
    die_with_parent(signal.SIGKILL)
    if install_compact_loss():
        install_dense_small_head()
    hook_train()
    from trl.scripts.sft import main, make_parser

    script_args, training_args, model_args, dataset_args = make_parser().parse_args_and_config(
        fail_with_unknown_args=False
    )
    from iclvsft_train.runlock import share

    with share(training_args.output_dir):
        main(script_args, training_args, model_args, dataset_args)
    finish()


if __name__ == "__main__":
    if sys.argv[1:2] == [LAUNCH]:
        sys.exit(launch(sys.argv[2:]))
    if sys.argv[1:2] == [EXEC]:
        sys.exit(run_worker(sys.argv[2:]))
    worker()
