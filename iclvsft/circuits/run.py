"""``iclvsft circuits``: score every head and MLP under three conditions and measure the shift.

Conditions, all on the same clean/corrupt pairs (``pairs.make_pairs``):

* ``base``: the base model at 0 shots;
* ``icl``: the base model at k shots (the fixed demonstrations of draw 1 prepended);
* ``ft``: the fine-tuned checkpoint at 0 shots (a full model directory, or a LoRA adapter
  directory that is merged into the base model).

Attribution scores are computed for every pair (cheap); activation scores for every pair with
``method="activation"``, else for the first ``check_items`` pairs, to report how well the two agree.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from iclvsft.circuits.pairs import Pair, make_pairs
from iclvsft.circuits.patching import (
    activation_scores,
    attribution_scores,
    components,
    prefix_cache,
    shared_length,
)
from iclvsft.circuits.plots import plot_map
from iclvsft.circuits.report import write_report
from iclvsft.circuits.shift import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_LEVEL,
    DEFAULT_TOP_FRACTION,
    bootstrap_shift,
    importance_map,
    spearman,
)
from iclvsft_tasks.atomic import atomic_write_text, check_creatable, ensure_output_dir
from iclvsft_tasks.cliutil import check_device, machine_line, pin_cpu_threads, resolve_device
from iclvsft_tasks.data.spec import DataSpec
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.tasks.registry import get_task
from iclvsft_train.checkpoints import (
    DTYPES,
    check_adapter,
    checkpoint_kind,
    load_causal_lm,
    load_config,
    load_tokenizer,
)

METHODS = ("attribution", "activation")
#: Config fields an FT checkpoint must share with the base model.
ARCH_FIELDS = ("model_type", "num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size")
RESULT_FILE = "circuits.json"
FORMAT = 1
CONDITION_LABELS = {
    "base": "base model, 0 shots",
    "icl": "base model, {k} shots (ICL)",
    "ft": "fine-tuned model, 0 shots (FT)",
}


@dataclasses.dataclass
class CircuitsConfig:
    """Everything that determines one analysis (the flags of ``iclvsft circuits``)."""

    model: str = "default"
    task: str = "expression_pattern"
    shots: int = 8
    ft_checkpoint: str | None = None
    items: int = 50
    method: str = "attribution"
    out: str = "runs/circuits"
    check_items: int = 3
    dtype: str = "float32"
    device: str | None = None  # None: cuda when available, else cpu
    data: DataSpec = dataclasses.field(default_factory=DataSpec)  # the evaluation's, to match its demos
    draw: int = 1
    bootstrap: int = DEFAULT_BOOTSTRAP
    top_fraction: float = DEFAULT_TOP_FRACTION
    level: float = DEFAULT_LEVEL
    patch_batch: int = 8  # activation patching: components per forward pass
    show_progress: bool = True

    def __post_init__(self) -> None:
        get_task(self.task)
        if not isinstance(self.data, DataSpec):
            raise IclvsftError(f"data must be a DataSpec, got {self.data!r}")
        for name in ("shots", "items", "check_items", "draw", "bootstrap", "patch_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise IclvsftError(f"{name} must be an integer, got {value!r}")
        for name, low in (
            ("shots", 0),
            ("items", 1),
            ("check_items", 0),
            ("draw", 1),
            ("bootstrap", 1),
            ("patch_batch", 1),
        ):
            if getattr(self, name) < low:
                raise IclvsftError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.method not in METHODS:
            raise IclvsftError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.dtype not in DTYPES:
            raise IclvsftError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not 0 < self.top_fraction <= 1:
            raise IclvsftError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if not 0 < self.level < 1:
            raise IclvsftError(f"level must be in (0, 1), got {self.level}")
        check_creatable(self.out, "--out")
        check_device(self.device)


# --------------------------------------------------------------------------- models


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def check_architecture(base: Any, other: Any, where: str) -> None:
    """IclvsftError unless two configs agree on model type, layers, heads, width and vocabulary."""
    base, other = _text_config(base), _text_config(other)
    diffs = [
        f"{f} {getattr(other, f, None)} vs {getattr(base, f, None)}"
        for f in ARCH_FIELDS
        if getattr(other, f, None) != getattr(base, f, None)
    ]
    if diffs:
        raise IclvsftError(
            f"checkpoint {where} has another architecture than the base model "
            f"({'; '.join(diffs)} in the base); give a fine-tune of the base model"
        )


# --------------------------------------------------------------------------- scoring


def _as_lists(scores: list[Any], field: str) -> list:
    return [getattr(s, field).tolist() for s in scores]


def score_condition(
    model: Any,
    pairs: list[Pair],
    method: str,
    check_items: int,
    patch_batch: int = 8,
    desc: str = "pairs",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Attribution scores on every pair, activation scores on the first ``check_items`` (or all)."""
    from tqdm.auto import tqdm

    comps = components(model)
    n_activation = len(pairs) if method == "activation" else min(check_items, len(pairs))
    attribution, activation = [], []
    start = time.perf_counter()
    # The tokens every input begins with (description, demonstrations): their cache is computed once.
    n_shared = shared_length([ids for pair in pairs for ids in (pair.clean_ids, pair.corrupt_ids)])
    shared = prefix_cache(model, pairs[0].clean_ids[:n_shared]) if n_shared else None
    t_prefix = time.perf_counter() - start
    t_attr = t_act = 0.0
    for i, pair in enumerate(tqdm(pairs, desc=desc, unit="pair", file=sys.stderr, disable=not show_progress)):
        start = time.perf_counter()
        attribution.append(attribution_scores(model, pair, comps, prefix=shared))
        t_attr += time.perf_counter() - start
        if i < n_activation:
            start = time.perf_counter()
            activation.append(activation_scores(model, pair, comps, patch_batch, prefix=shared))
            t_act += time.perf_counter() - start
    entry: dict[str, Any] = {
        "metric_clean": [s.clean_metric for s in attribution],
        "metric_corrupt": [s.corrupt_metric for s in attribution],
        "attribution": {"heads": _as_lists(attribution, "heads"), "mlps": _as_lists(attribution, "mlps")},
        "activation": None,
        "check": {"pairs": len(activation), "spearman": None},
        "shared_prefix_tokens": len(shared.ids) if shared else 0,
        "timing": {
            "shared_prefix_s": t_prefix,
            "attribution_s_per_pair": t_attr / len(pairs),
            "activation_s_per_pair": t_act / len(activation) if activation else None,
        },
    }
    if activation:
        effects = [s.effect for s in activation]
        entry["activation"] = {
            "heads": _as_lists(activation, "heads"),
            "mlps": _as_lists(activation, "mlps"),
            "restoration": [
                [(float(x) / e if e else None) for x in np.concatenate([s.heads.ravel(), s.mlps])]
                for s, e in zip(activation, effects)
            ],
        }
        rho = {}
        for kind in ("heads", "mlps"):
            a = np.concatenate([getattr(s, kind).ravel() for s in attribution[: len(activation)]])
            b = np.concatenate([getattr(s, kind).ravel() for s in activation])
            rho[kind] = spearman(a, b)
        both_a = np.concatenate([np.concatenate([s.heads.ravel(), s.mlps]) for s in attribution[: len(activation)]])
        both_b = np.concatenate([np.concatenate([s.heads.ravel(), s.mlps]) for s in activation])
        rho["all"] = spearman(both_a, both_b)
        entry["check"]["spearman"] = rho
    return entry


# --------------------------------------------------------------------------- the run


def settings_of(config: CircuitsConfig, model_path: str, ft: dict[str, str] | None) -> dict[str, Any]:
    """What determines the result (compared by ``reuse``)."""
    keep = (
        "model",
        "task",
        "shots",
        "items",
        "method",
        "check_items",
        "dtype",
        "seed",
        "sizes",
        "draw",
        "bootstrap",
        "top_fraction",
        "level",
    )
    # The data spec is written flat, as earlier results wrote it, so that those stay reusable.
    data = {"seed": config.data.seed, "sizes": config.data.sizes}
    return {
        **{k: data[k] if k in data else getattr(config, k) for k in keep},
        "model_path": model_path,
        "ft_checkpoint": ft["path"] if ft else None,
        "device": resolve_device(config.device),
    }


def _previous(out: Path, settings: dict[str, Any], ft_suffix: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The result stored in ``out`` if it was computed with ``settings`` and its files are there.

    ``ft_suffix``: the trailing parts that identify the fine-tuned checkpoint (e.g. its path inside a
    run folder), so that a result computed in a run folder since moved or copied still counts.
    """
    try:
        old = json.loads((out / RESULT_FILE).read_text(encoding="utf-8"))
        stored = dict(old.get("settings") or {})
        files = [out / name for name in old.get("files", {}).get("heatmaps", {})] + [out / "report.md"]
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if ft_suffix and Path(str(stored.get("ft_checkpoint") or "")).parts[-len(ft_suffix) :] == ft_suffix:
        stored["ft_checkpoint"] = settings.get("ft_checkpoint")
    if old.get("format") == FORMAT and stored == settings and all(f.is_file() for f in files):
        return old
    return None


def stored_result(config: CircuitsConfig, ft_suffix: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The result in ``config.out`` computed from the same inputs as ``config`` (its settings; the
    fine-tuned checkpoint by its path, or by the trailing parts ``ft_suffix`` of it), or None.

    Reads neither model: the checkpoint need not be on disk (``iclvsft compare`` reuses the analysis
    of a published run folder that holds no ``ft/``).
    """
    from iclvsft.models import resolve_model

    ft = {"path": str(Path(config.ft_checkpoint).resolve())} if config.ft_checkpoint is not None else None
    return _previous(Path(config.out), settings_of(config, resolve_model(config.model), ft), ft_suffix)


def find_pairs(config: CircuitsConfig, model_path: str | None = None) -> dict[int, list[Pair]]:
    """The analysis's clean/corrupt pairs at 0 and k shots, from the base model's tokenizer alone (no
    weights): IclvsftError, saying how many matched, when fewer than ``config.items`` do."""
    from iclvsft.models import resolve_model

    tokenizer = load_tokenizer(model_path or resolve_model(config.model))
    shot_counts = [0, config.shots] if config.shots else [0]
    return make_pairs(config.task, tokenizer, shot_counts, config.items, config.data, config.draw)


def run_circuits(config: CircuitsConfig, reuse: bool = False) -> dict[str, Any]:
    """Run the analysis, write ``circuits.json``, the heatmaps and ``report.md`` into ``config.out``.

    With ``reuse``, an existing ``circuits.json`` of the same settings is returned as it is.
    Every mistake a user can make is an IclvsftError, raised before any model is loaded where it can be.
    """
    from iclvsft.models import model_label, resolve_model

    started = time.perf_counter()
    ft = None
    if config.ft_checkpoint is not None:
        ft = {"path": str(Path(config.ft_checkpoint).resolve()), "kind": checkpoint_kind(config.ft_checkpoint)}
    model_path = resolve_model(config.model)
    base_config = load_config(model_path)
    if ft is not None and ft["kind"] == "full":
        check_architecture(base_config, load_config(ft["path"]), config.ft_checkpoint)
    elif ft is not None:
        check_adapter(ft["path"], model_path)
    out = Path(config.out)
    settings = settings_of(config, model_path, ft)
    if reuse:
        old = _previous(out, settings)
        if old is not None:
            return old
    pairs = find_pairs(config, model_path)
    ensure_output_dir(out)  # once the inputs are known to be good: no empty folder after a mistake
    device = resolve_device(config.device)
    threads = pin_cpu_threads(device)
    notes = []
    if not config.shots:
        notes.append("k = 0: the ICL condition would be the base condition itself, so ICL is not analysed")
    if ft is None:
        notes.append("no fine-tuned checkpoint, so FT is not analysed")

    conditions: dict[str, dict[str, Any]] = {}
    timing: dict[str, float] = {}

    def run(name: str, model: Any, shots: int) -> None:
        start = time.perf_counter()
        label = CONDITION_LABELS[name].format(k=shots)
        entry = score_condition(
            model,
            pairs[shots],
            config.method,
            config.check_items,
            config.patch_batch,
            desc=f"{name} ({label})",
            show_progress=config.show_progress,
        )
        entry["timing"]["wall_s"] = time.perf_counter() - start
        conditions[name] = {"label": label, "model": "fine-tuned" if name == "ft" else "base", "shots": shots, **entry}

    start = time.perf_counter()
    model, _ = load_causal_lm(model_path, dtype=config.dtype, device=device)
    timing["load_base_s"] = time.perf_counter() - start
    comps = components(model)
    architecture = {
        "model_type": getattr(_text_config(model.config), "model_type", None),
        "layers": comps.n_layers,
        "heads": comps.n_heads,
        "head_dim": comps.head_dim,
    }
    run("base", model, 0)
    if config.shots:
        run("icl", model, config.shots)
    del model
    gc.collect()
    if ft is not None:
        start = time.perf_counter()
        if ft["kind"] == "adapter":
            model, _ = load_causal_lm(model_path, adapter=ft["path"], dtype=config.dtype, device=device)
        else:
            model, _ = load_causal_lm(ft["path"], dtype=config.dtype, device=device)
        check_architecture(base_config, model.config, config.ft_checkpoint)
        timing["load_ft_s"] = time.perf_counter() - start
        run("ft", model, 0)
        del model
        gc.collect()

    method = config.method
    scores = {kind: {name: np.asarray(c[method][kind]) for name, c in conditions.items()} for kind in ("heads", "mlps")}
    shift = {
        kind: bootstrap_shift(
            scores[kind], "base", ("icl", "ft"), config.top_fraction, config.bootstrap, config.data.seed, config.level
        )
        for kind in ("heads", "mlps")
    }
    for name, c in conditions.items():
        c["importance"] = {kind: importance_map(scores[kind][name]).tolist() for kind in ("heads", "mlps")}

    heatmaps = _plot(conditions, out, config)
    timing["wall_s"] = time.perf_counter() - started
    result = {
        "format": FORMAT,
        "settings": settings,
        "model": model_label(config.model),
        "method": method,
        "ft_checkpoint": ft,
        "architecture": architecture,
        "pairs": [
            {**pairs[0][i].to_dict(), "tokens": {str(k): len(pairs[k][i].clean_ids) for k in pairs}}
            for i in range(len(pairs[0]))
        ],
        "conditions": conditions,
        "shift": shift,
        "verdict": {kind: (shift[kind]["difference"] or {}).get("l1", {}).get("verdict") for kind in ("heads", "mlps")},
        "notes": notes,
        "files": {"heatmaps": heatmaps, "report": "report.md"},
        "timing": timing,
        "environment": {
            "torch_threads": threads,
            "machine": machine_line(),
            "python": platform.python_version(),
            "date": datetime.date.today().isoformat(),
        },
    }
    atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=1) + "\n")
    write_report(result, out)
    return result


def _plot(conditions: dict[str, dict[str, Any]], out: Path, config: CircuitsConfig) -> dict[str, str]:
    """Heatmaps of each condition (one shared colour scale) and of ICL − base, FT − base."""
    maps = {
        name: (np.asarray(c["importance"]["heads"]), np.asarray(c["importance"]["mlps"]))
        for name, c in conditions.items()
    }
    head_max = max(float(h.max()) for h, _ in maps.values()) or 1.0
    mlp_max = max(float(m.max()) for _, m in maps.values()) or 1.0
    files: dict[str, str] = {}
    for name, (heads, mlps) in maps.items():
        file = f"heatmap_{name}.png"
        title = f"{config.task}: importance, {conditions[name]['label']}"
        plot_map(heads, mlps, out / file, title, head_max=head_max, mlp_max=mlp_max)
        files[file] = title
    diffs = {
        name: (maps[name][0] - maps["base"][0], maps[name][1] - maps["base"][1])
        for name in ("icl", "ft")
        if name in maps
    }
    if diffs:
        head_span = max(float(np.abs(h).max()) for h, _ in diffs.values()) or 1.0
        mlp_span = max(float(np.abs(m).max()) for _, m in diffs.values()) or 1.0
        for name, (heads, mlps) in diffs.items():
            file = f"diff_{name}_minus_base.png"
            title = f"{config.task}: {name.upper()} − base importance"
            plot_map(heads, mlps, out / file, title, diverging=True, head_max=head_span, mlp_max=mlp_span)
            files[file] = title
    return files
