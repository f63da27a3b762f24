"""Merge a LoRA adapter (a milestone or a finished run) into its base model: a plain HF model dir."""

from __future__ import annotations

import sys
from pathlib import Path

from iclvsft_tasks.atomic import atomic_write_dir, check_creatable
from iclvsft_tasks.cliutil import quiet_warnings
from iclvsft_tasks.errors import IclvsftError
from iclvsft_train.checkpoints import (
    DTYPES_OR_AUTO,
    check_adapter,
    check_dtype,
    checkpoint_kind,
    load_causal_lm,
    read_adapter_config,
)


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str = "float32") -> Path:
    """Load ``base`` (default: the adapter's recorded base), apply the adapter, save the merged model."""
    check_dtype(dtype, DTYPES_OR_AUTO)
    adapter, out = Path(adapter), check_creatable(out, "--out")
    if checkpoint_kind(adapter) != "adapter":
        raise IclvsftError(f"{adapter} holds no LoRA adapter (no adapter_config.json); a full fine-tune needs no merge")
    base = base or read_adapter_config(adapter).get("base_model_name_or_path")
    if not base:
        raise IclvsftError(f"{adapter / 'adapter_config.json'} names no base model; pass --base")
    check_adapter(adapter, base)  # before any weights are loaded
    with quiet_warnings():
        merged, tokenizer = load_causal_lm(base, adapter=adapter, dtype=dtype)

    def fill(directory: Path) -> None:
        merged.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    atomic_write_dir(out, fill)
    print(f"iclvsft-train merge: wrote {out} (base {base} + adapter {adapter})", file=sys.stderr)
    return out
