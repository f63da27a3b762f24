"""``trl sft`` with the completion-only loss on CPU: TRL's launcher and script, one patch, and a tied lifetime.

    python -m iclvsft_train.fast_sft sft --config resolved.yaml [any trl sft / accelerate flag]

is ``trl sft`` (same parser, same ``accelerate launch``, same ``trl.scripts.sft.main``) except for two things:

* The LM head scores only the completion positions on CPU too. TRL 1.16's fused LM head
  (``trl.trainer.utils.add_fused_lm_head``) gathers the positions with a label before its chunked
  log-softmax only where ``_use_triton(device)`` is true (CUDA, XPU); elsewhere it scores every position
  (the whole few-shot prompt x the vocabulary) and masks afterwards, because on Neuron a varying number
  of positions recompiles the graph. CPU has no such cost, so the worker rebinds that one name in
  ``trl.trainer.utils`` to also answer True on CPU; ``trl.kernels.chunked_logprob._use_triton``, which
  picks the Triton kernels, is untouched. The loss is the same sum over the same positions.
  If TRL's code is not the shape this patch expects, the worker warns and trains exactly as ``trl sft``.
* Every process of the run dies with its parent: the launcher and each training worker ask Linux for
  a signal when their parent dies (``PR_SET_PDEATHSIG``; it is cleared across fork, so each sets its
  own), and the launcher, on SIGTERM/SIGINT/SIGHUP, kills its whole process group. The worker also
  holds a shared lock on the run folder (``runlock``) while it lives, so no other run deletes it.

The launcher mirrors ``trl/cli/commands/training.py`` (TRL's parser, ``resolve_accelerate_config_argument``,
accelerate's ``launch_command``) with ``--module iclvsft_train.fast_sft`` in place of TRL's script path,
so DeepSpeed, FSDP and multi-process flags pass through unchanged.
"""

from __future__ import annotations

import ctypes
import inspect
import os
import signal
import sys
import warnings
from collections.abc import Sequence

MODULE = "iclvsft_train.fast_sft"
#: The first argument that makes ``python -m iclvsft_train.fast_sft`` the launcher (as in ``trl sft``).
LAUNCH = "sft"
#: Set by whoever starts the launcher: its pid, so a launcher whose parent died before it could ask
#: for the parent-death signal notices and ends.
PARENT_ENV = "ICLVSFT_TRAIN_PARENT"
_PR_SET_PDEATHSIG = 1


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


def _kill_group(signum: int, frame: object) -> None:
    """The launcher leads the run's process group: end all of it (accelerate, workers, their helpers)."""
    for each in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(each, signal.SIG_IGN)
    os.killpg(os.getpgrp(), signal.SIGKILL)


# --- the two roles -------------------------------------------------------------------------------------


def launch(argv: Sequence[str]) -> int:
    """The launcher: ``trl sft``'s parsing and ``accelerate launch``, with this module as the script."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from trl.cli.accelerate_config import resolve_accelerate_config_argument
    from trl.cli.commands.training import _subtract_subsequence
    from trl.scripts.sft import make_parser

    die_with_parent(signal.SIGTERM)
    if os.getpgrp() == os.getpid():  # our own group (iclvsft-train starts us so): end it whole on a signal
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _kill_group)
    all_args = list(argv)
    parser = make_parser(prog="trl sft")
    *_, config_remaining, cli_remaining = parser.parse_args_and_config(
        all_args, return_remaining_strings=True, separate_remaining_strings=True
    )
    launch_args = resolve_accelerate_config_argument(config_remaining + cli_remaining)
    script_args = _subtract_subsequence(all_args, cli_remaining)
    os.environ[PARENT_ENV] = str(os.getpid())  # for the workers' die_with_parent
    launch_command(launch_command_parser().parse_args([*launch_args, "--module", MODULE, *script_args]))
    return 0


def worker() -> None:
    """One training process: ``trl/scripts/sft.py``'s ``__main__``, after the patch."""
    die_with_parent(signal.SIGKILL)
    install_compact_loss()
    from trl.scripts.sft import main, make_parser

    script_args, training_args, model_args, dataset_args = make_parser().parse_args_and_config(
        fail_with_unknown_args=False
    )
    from iclvsft_train.runlock import share

    with share(training_args.output_dir):
        main(script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    if sys.argv[1:2] == [LAUNCH]:
        sys.exit(launch(sys.argv[2:]))
    worker()
