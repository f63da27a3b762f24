"""The one checkpoint loader (iclvsft_train.checkpoints) on the tiny Llama, and the one-line error helper."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from iclvsft_tasks.errors import IclvsftError, one_line
from iclvsft_train.checkpoints import checkpoint_kind, load_causal_lm
from iclvsft_train.merge import merge_adapter

PROMPT = "apple -> APPLE\ndog ->"


@pytest.fixture(scope="module")
def lora_adapter(tiny_llama, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    directory = tmp_path_factory.mktemp("lora") / "adapter"
    get_peft_model(model, config).save_pretrained(directory)
    return directory


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits.float()


def test_a_full_model_directory_loads_with_its_tokenizer_in_eval_mode(tiny_llama):
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_causal_lm(tiny_llama)
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer.name_or_path == str(tiny_llama)
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    assert torch.equal(_logits(model, tokenizer), _logits(reference, tokenizer))


def test_a_merged_adapter_gives_the_logits_of_the_unmerged_one(tiny_llama, lora_adapter):
    from peft import PeftModel

    merged, tokenizer = load_causal_lm(tiny_llama, adapter=lora_adapter)
    unmerged, _ = load_causal_lm(tiny_llama, adapter=lora_adapter, merge=False)
    base, _ = load_causal_lm(tiny_llama)
    assert isinstance(unmerged, PeftModel) and not isinstance(merged, PeftModel)
    assert not merged.training and not unmerged.training
    # PEFT freezes the base weights; the merged model gets requires_grad back (a frozen LM head is slow).
    assert all(p.requires_grad for p in merged.parameters())
    logits = _logits(merged, tokenizer)
    torch.testing.assert_close(logits, _logits(unmerged, tokenizer), atol=1e-5, rtol=1e-5)
    assert (logits - _logits(base, tokenizer)).abs().max() > 1e-3  # the adapter does change the model


def test_dtype_is_applied_and_auto_keeps_the_saved_one(tiny_llama, lora_adapter):
    model, _ = load_causal_lm(tiny_llama, adapter=lora_adapter, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _ = load_causal_lm(tiny_llama, dtype="auto")
    assert model.dtype == torch.float32  # the tiny model is saved in float32
    with pytest.raises(IclvsftError, match=r"^unknown dtype 'fp8'; choose from float32, bfloat16, float16, auto$"):
        load_causal_lm(tiny_llama, dtype="fp8")


def test_the_tokenizer_comes_from_the_adapter_when_it_has_one_unless_named(tiny_llama, lora_adapter, tmp_path):
    adapter = tmp_path / "with-tokenizer"
    shutil.copytree(lora_adapter, adapter)
    _, tokenizer = load_causal_lm(tiny_llama, adapter=lora_adapter)
    assert tokenizer.name_or_path == str(tiny_llama)  # the adapter has none: the base's
    load_causal_lm(tiny_llama)[1].save_pretrained(adapter)
    assert load_causal_lm(tiny_llama, adapter=adapter)[1].name_or_path == str(adapter)
    assert load_causal_lm(tiny_llama, adapter=adapter, tokenizer=tiny_llama)[1].name_or_path == str(tiny_llama)


def test_merge_writes_the_model_the_loader_merges(tiny_llama, lora_adapter, tmp_path):
    merged, tokenizer = load_causal_lm(tiny_llama, adapter=lora_adapter)
    out = merge_adapter(lora_adapter, tmp_path / "merged")  # the base recorded in the adapter
    saved, saved_tokenizer = load_causal_lm(out)
    assert checkpoint_kind(out) == "full"
    torch.testing.assert_close(_logits(saved, saved_tokenizer), _logits(merged, tokenizer))
    with pytest.raises(IclvsftError, match="holds no LoRA adapter"):
        merge_adapter(tiny_llama, tmp_path / "again")


def _one_line_error(call) -> str:
    with pytest.raises(IclvsftError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_load_failures_are_one_line(tiny_llama, lora_adapter, tmp_path, monkeypatch):
    missing = tmp_path / "missing"
    assert _one_line_error(lambda: load_causal_lm(missing)).startswith(f"model directory {missing} does not exist; ")

    corrupt = tmp_path / "corrupt"
    shutil.copytree(lora_adapter, corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    message = _one_line_error(lambda: load_causal_lm(tiny_llama, adapter=corrupt))
    assert message.startswith(f"cannot read the adapter weights {corrupt / 'adapter_model.safetensors'}: ")

    (corrupt / "adapter_config.json").write_text("{not json")
    message = _one_line_error(lambda: load_causal_lm(tiny_llama, adapter=corrupt))
    assert message.startswith(f"{corrupt / 'adapter_config.json'} is not valid JSON (")

    monkeypatch.setitem(sys.modules, "peft", None)  # as if the train extra were not installed
    message = _one_line_error(lambda: load_causal_lm(tiny_llama, adapter=lora_adapter))
    assert message == "a LoRA checkpoint needs peft: pip install 'iclvsft[train]'"


def test_checkpoint_kind(tiny_llama, lora_adapter, tmp_path):
    assert checkpoint_kind(tiny_llama) == "full" and checkpoint_kind(lora_adapter) == "adapter"
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for name, message in [("nope", "does not exist"), ("file", "is not a directory"), ("empty", "holds neither")]:
        with pytest.raises(IclvsftError, match=message):
            checkpoint_kind(tmp_path / name)


def test_one_line_takes_the_first_line_and_names_the_type_when_asked():
    assert one_line(ValueError("\n  first\nsecond")) == "first"
    assert one_line(OSError("first\nsecond"), with_type=True) == "OSError: first"
    assert one_line(KeyError()) == "KeyError" and one_line(RuntimeError(""), with_type=True) == "RuntimeError"
    # A heading that only announces what follows keeps the line that says it.
    heading = RuntimeError("Error(s) in loading state_dict for PeftModel:\n\tsize mismatch for x: 2 vs 3\n\tmore")
    assert one_line(heading) == "Error(s) in loading state_dict for PeftModel: size mismatch for x: 2 vs 3"
