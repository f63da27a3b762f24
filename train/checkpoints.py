"""Loading a causal LM checkpoint: a model directory (or hub id), optionally with a LoRA adapter on top.

The one loader for every part of iclvsft: ``iclvsft compare`` (fine-tuned cells), ``iclvsft circuits``,
``iclvsft-train merge`` and ``iclvsft.models.load_model``::

    model, tokenizer = load_causal_lm("runs/base", adapter="runs/ft/milestones/samples-96", dtype="bfloat16")

It lives in the training add-on because that is the one package all its users may import; peft (the
``train`` extra) is imported only when an adapter is given. Every failure is one IclvsftError line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from iclvsft_tasks.errors import IclvsftError, one_line

#: The dtypes a model is loaded, converted or analysed in.
DTYPES = ("float32", "bfloat16", "float16")
#: ``DTYPES`` plus "auto" (the dtype the checkpoint was saved in), an option of lm-eval and ``from_pretrained``.
DTYPES_OR_AUTO = (*DTYPES, "auto")

PathLike = str | os.PathLike[str]


def check_dtype(dtype: str, allowed: tuple[str, ...] = DTYPES) -> str:
    """``dtype`` if it is one of ``allowed``, else an IclvsftError."""
    if dtype not in allowed:
        raise IclvsftError(f"unknown dtype {dtype!r}; choose from {', '.join(allowed)}")
    return dtype


def checkpoint_kind(path: PathLike) -> str:
    """``"adapter"`` (holds adapter_config.json) or ``"full"`` (config.json); else an IclvsftError."""
    p = Path(path)
    if not p.exists():
        raise IclvsftError(f"fine-tuned checkpoint {path} does not exist")
    if not p.is_dir():
        raise IclvsftError(f"fine-tuned checkpoint {path} is not a directory")
    if (p / "adapter_config.json").is_file():
        return "adapter"
    if (p / "config.json").is_file():
        return "full"
    raise IclvsftError(
        f"fine-tuned checkpoint {path} holds neither config.json (a model) nor adapter_config.json (a LoRA adapter)"
    )


def load_config(path: PathLike) -> Any:
    """The transformers config of the model in ``path``, without loading its weights."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path))
    except Exception as exc:
        raise IclvsftError(f"cannot read the model config in {path}: {one_line(exc, with_type=True)}") from None


def load_tokenizer(path: PathLike) -> Any:
    """The tokenizer saved in ``path`` (a model or adapter directory, or a hub id)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise IclvsftError(f"cannot load the tokenizer of {path}: {one_line(exc, with_type=True)}") from None


def load_causal_lm(
    path: PathLike,
    *,
    adapter: PathLike | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    merge: bool = True,
    tokenizer: PathLike | None = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the model in ``path`` with the LoRA ``adapter`` on top, in eval mode on ``device``.

    ``merge`` folds the adapter into the weights (a plain transformers model, no PEFT detour at every
    layer); otherwise the PeftModel is returned. The tokenizer comes from ``tokenizer`` when given,
    else from the adapter directory when it holds one (what the fine-tune saved), else from ``path``.

    PEFT freezes the base weights; a merged model gets ``requires_grad`` back, like any loaded model.
    With a frozen LM head torch computes a ``[1, 1, h] @ W.T`` decode step as a batched matmul that
    first copies the whole transposed weight: 2.2 s instead of 0.3 s per 3-token answer on Gemma 3
    270M's 262k x 640 head (measured). Under ``no_grad`` the flag costs nothing.
    """
    check_dtype(dtype, DTYPES_OR_AUTO)
    if adapter is not None:
        try:
            from peft import PeftModel
        except ImportError:
            raise IclvsftError("a LoRA checkpoint needs peft: pip install 'iclvsft[train]'") from None
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype if dtype == "auto" else getattr(torch, dtype)
        )
    except Exception as exc:
        raise IclvsftError(f"cannot load model {path}: {one_line(exc, with_type=True)}") from None
    if adapter is not None:
        try:
            model = PeftModel.from_pretrained(model, str(adapter))
            if merge:
                model = model.merge_and_unload()
                model.requires_grad_(True)
        except Exception as exc:
            raise IclvsftError(f"cannot apply adapter {adapter} to {path}: {one_line(exc, with_type=True)}") from None
    if tokenizer is None:
        has_own = adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file()
        tokenizer = adapter if has_own else path
    return model.to(device).eval(), load_tokenizer(tokenizer)
