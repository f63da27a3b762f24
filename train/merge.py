"""Merge a LoRA adapter (a milestone or a finished run) into its base model: a plain HF model dir."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from iclvsft_tasks.atomic import atomic_write_dir
from iclvsft_tasks.errors import IclvsftError


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str = "float32") -> Path:
    """Load ``base`` (default: the adapter's recorded base), apply the adapter, save the merged model."""
    adapter, out = Path(adapter), Path(out)
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise IclvsftError(f"{adapter} holds no LoRA adapter (no adapter_config.json); a full fine-tune needs no merge")
    base = base or json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise IclvsftError(f"{config_path} names no base model; pass --base")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not hasattr(torch, dtype):
        raise IclvsftError(f"unknown dtype {dtype!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
            merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
            tokenizer = AutoTokenizer.from_pretrained(
                str(adapter) if (adapter / "tokenizer_config.json").is_file() else base
            )
    except OSError as exc:
        raise IclvsftError(f"cannot load {base} with adapter {adapter}: {str(exc).splitlines()[0]}") from None

    def fill(directory: Path) -> None:
        merged.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    atomic_write_dir(out, fill)
    print(f"iclvsft-train merge: wrote {out} (base {base} + adapter {adapter})", file=sys.stderr)
    return out
