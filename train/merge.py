"""Merge a LoRA adapter (a milestone or a finished run) into its base model: a plain HF model dir."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from iclvsft_tasks.atomic import atomic_write_dir
from iclvsft_tasks.errors import IclvsftError
from iclvsft_train.checkpoints import checkpoint_kind, load_causal_lm


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str = "float32") -> Path:
    """Load ``base`` (default: the adapter's recorded base), apply the adapter, save the merged model."""
    adapter, out = Path(adapter), Path(out)
    if checkpoint_kind(adapter) != "adapter":
        raise IclvsftError(f"{adapter} holds no LoRA adapter (no adapter_config.json); a full fine-tune needs no merge")
    config_path = adapter / "adapter_config.json"
    base = base or json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise IclvsftError(f"{config_path} names no base model; pass --base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged, tokenizer = load_causal_lm(base, adapter=adapter, dtype=dtype)

    def fill(directory: Path) -> None:
        merged.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    atomic_write_dir(out, fill)
    print(f"iclvsft-train merge: wrote {out} (base {base} + adapter {adapter})", file=sys.stderr)
    return out
