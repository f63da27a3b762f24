"""Loading a causal LM checkpoint: a model directory (or hub id), optionally with a LoRA adapter on top.

The one loader for every part of iclvsft: ``iclvsft compare`` (fine-tuned cells), ``iclvsft circuits``,
``iclvsft-train merge`` and ``iclvsft.models.load_model``::

    model, tokenizer = load_causal_lm("runs/base", adapter="runs/ft/milestones/samples-96", dtype="bfloat16")

It lives in the training add-on because that is the one package all its users may import; peft (the
``train`` extra) is imported only when an adapter is given. Every failure is one IclvsftError line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from iclvsft_tasks.cliutil import quiet_warnings
from iclvsft_tasks.errors import IclvsftError, model_load_message, one_line

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
        raise IclvsftError(
            f"fine-tuned checkpoint {path} does not exist; give a model or LoRA adapter directory "
            "(e.g. a milestone of an iclvsft-train run: OUTPUT_DIR/milestones/samples-N)"
        )
    if not p.is_dir():
        raise IclvsftError(f"fine-tuned checkpoint {path} is not a directory")
    if (p / "adapter_config.json").is_file():
        return "adapter"
    if (p / "config.json").is_file():
        return "full"
    raise IclvsftError(
        f"fine-tuned checkpoint {path} holds neither config.json (a model) nor adapter_config.json (a LoRA adapter)"
    )


#: The weight files PEFT saves an adapter in (it reads the first that exists).
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def read_adapter_config(adapter: PathLike) -> dict[str, Any]:
    """The adapter's ``adapter_config.json`` with its key fields type-checked, or one IclvsftError."""
    path = Path(adapter) / "adapter_config.json"
    damaged = "the adapter is damaged: save it again, or use another checkpoint"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise IclvsftError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # JSON and UTF-8 errors
        raise IclvsftError(f"{path} is not valid JSON ({one_line(exc)}); {damaged}") from None
    if not isinstance(data, dict):
        raise IclvsftError(f"{path} holds no JSON object; {damaged}")
    expected = {
        "peft_type": (str,),
        "r": (int,),
        "lora_alpha": (int, float),
        "target_modules": (str, list, type(None)),
        "base_model_name_or_path": (str, type(None)),
    }
    for key, types in expected.items():
        value = data.get(key)
        if key in data and (isinstance(value, bool) or not isinstance(value, types)):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise IclvsftError(f"{path}: {key} must be {wanted}, got {value!r}; {damaged}")
    if isinstance(data.get("r"), int) and data["r"] < 1:
        raise IclvsftError(f"{path}: r must be at least 1, got {data['r']}; {damaged}")
    return data


def check_adapter(adapter: PathLike, base: PathLike) -> None:
    """One IclvsftError, before any weights are loaded, unless the LoRA ``adapter`` can be applied to ``base``:
    a readable config, a weights file, and (for safetensors) LoRA matrices whose shapes fit ``base``'s layers,
    read from the file header and a weightless (meta-device) copy of the base model."""
    read_adapter_config(adapter)
    weights = next((Path(adapter) / f for f in ADAPTER_WEIGHTS if (Path(adapter) / f).is_file()), None)
    if weights is None:
        raise IclvsftError(
            f"{adapter} holds no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}): the checkpoint is incomplete; "
            "use another checkpoint, or save the adapter again"
        )
    if weights.suffix != ".safetensors":
        return  # a pickle cannot be read without loading it; PEFT's own check applies
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    config = load_config(base)
    try:
        with torch.device("meta"), quiet_warnings():
            modules = dict(AutoModelForCausalLM.from_config(config).named_modules())
        with safe_open(str(weights), "pt") as handle:
            shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}  # noqa: SIM118 (not iterable)
    except Exception as exc:
        raise IclvsftError(f"cannot read the adapter weights {weights}: {one_line(exc, with_type=True)}") from None
    for key, shape in shapes.items():
        for side, size in ((".lora_A.weight", "in_features"), (".lora_B.weight", "out_features")):
            if not key.endswith(side):
                continue
            name = key[: -len(side)].removeprefix("base_model.model.")
            module = modules.get(name)
            if module is None or not hasattr(module, size):
                problem = f"it changes {name}, which {base} does not have"
            else:
                have, want = getattr(module, size), shape[1] if side == ".lora_A.weight" else shape[0]
                if have == want:
                    continue
                problem = f"its {name} has {want} {size.replace('_', ' ')}, {base}'s has {have}"
            raise IclvsftError(
                f"adapter {adapter} does not fit model {base} ({problem}); give the base model it was trained on"
            )


def load_config(path: PathLike) -> Any:
    """The transformers config of the model in ``path``, without loading its weights."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path))
    except Exception as exc:
        raise IclvsftError(model_load_message(path, exc)) from None


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
        check_adapter(adapter, path)
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype if dtype == "auto" else getattr(torch, dtype)
        )
    except Exception as exc:
        raise IclvsftError(model_load_message(path, exc)) from None
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
