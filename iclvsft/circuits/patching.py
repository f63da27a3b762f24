"""Component scores by attribution patching and by activation patching, on plain PyTorch hooks.

Components of a decoder (Llama, Qwen2, Gemma 3 and any model laid out as
``model.model.layers[i].self_attn.o_proj`` / ``.mlp``):

* **head (l, h)**: head h's slice of the input of layer l's ``self_attn.o_proj``, i.e. the head's
  output before the output projection mixes the heads (``[..., h*d:(h+1)*d]``);
* **MLP l**: the output of layer l's ``mlp`` module.

A component's score on a pair is the change of the metric ``M = logit[target] - logit[foil]`` (at
the last position) when the corrupt run gets the component's clean activation at every position
(denoising):

* activation patching computes it exactly, one forward pass per component (batched);
* attribution patching approximates it to first order, ``sum((a_clean - a_corrupt) * dM/da)``
  with the gradient taken on the corrupt run: one forward on clean, one forward + backward on
  corrupt for all components at once.

**Shared prefix.** A clean and a corrupt prompt share their first tokens (the description, the
demonstrations, often the start of the question), and a causal model computes identical
activations there, so nothing can be patched and nothing contributes at those positions. The
prefix's KV cache is therefore computed once (``prefix_cache``; in ``score_condition`` once for the
part shared by all pairs, then extended per pair) and every run processes only the tokens after it.
Both scores are unchanged by this (checked in the tests against full runs, ``use_prefix=False``);
models whose cache is not transformers' concatenating ``DynamicCache`` run in full.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from iclvsft.circuits.pairs import Pair
from iclvsft_tasks.backend.kvcache import cache_keyword, output_cache, resumable
from iclvsft_tasks.errors import IclvsftError


@dataclasses.dataclass(frozen=True)
class Components:
    """Where a model's heads and MLPs are: per layer, the ``o_proj`` and the ``mlp`` modules."""

    o_proj: tuple[Any, ...]
    mlp: tuple[Any, ...]
    n_heads: int
    head_dim: int

    @property
    def n_layers(self) -> int:
        return len(self.o_proj)

    def names(self) -> list[str]:
        """Component names in score order: ``L0H0 .. L{n}H{m}`` then ``MLP0 .. MLP{n}``."""
        return [f"L{layer}H{head}" for layer in range(self.n_layers) for head in range(self.n_heads)] + [
            f"MLP{layer}" for layer in range(self.n_layers)
        ]


def _config(model: Any) -> Any:
    config = model.config
    return getattr(config, "text_config", None) or config


def decoder_layers(model: Any) -> Sequence[Any]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None and hasattr(model, "get_decoder"):
        layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise IclvsftError(
            f"{type(model).__name__} is not supported: circuits need decoder layers at "
            f"model.model.layers (Llama, Qwen2, Gemma 3 and similar)"
        )
    return layers


def components(model: Any) -> Components:
    """The heads and MLPs of ``model`` (IclvsftError for an architecture without them)."""
    layers = decoder_layers(model)
    try:
        o_proj = tuple(layer.self_attn.o_proj for layer in layers)
        mlp = tuple(layer.mlp for layer in layers)
    except AttributeError:
        raise IclvsftError(
            f"{type(model).__name__} is not supported: its layers need self_attn.o_proj and mlp modules"
        ) from None
    config = _config(model)
    heads = int(config.num_attention_heads)
    width = int(o_proj[0].in_features)
    if width % heads:
        raise IclvsftError(f"o_proj takes {width} features, not a multiple of {heads} heads")
    head_dim = width // heads
    declared = getattr(config, "head_dim", None)
    if declared and int(declared) != head_dim:
        raise IclvsftError(f"config.head_dim is {declared} but o_proj's input implies {head_dim}")
    return Components(o_proj, mlp, heads, head_dim)


@dataclasses.dataclass(frozen=True)
class Scores:
    """One method's scores on one pair: ``heads`` [layers, heads], ``mlps`` [layers]."""

    heads: np.ndarray
    mlps: np.ndarray
    clean_metric: float
    corrupt_metric: float

    @property
    def effect(self) -> float:
        """``M(clean) - M(corrupt)``: what patching every component would restore."""
        return self.clean_metric - self.corrupt_metric


@contextlib.contextmanager
def _hooked(
    comps: Components,
    head_input: Callable[[int, Any], Any] | None = None,
    mlp_output: Callable[[int, Any], Any] | None = None,
) -> Iterator[None]:
    """Call ``head_input(layer, x)`` on every o_proj input and ``mlp_output(layer, y)`` on every MLP
    output; a non-None return value replaces the tensor."""
    handles = []
    try:
        for layer, (o_proj, mlp) in enumerate(zip(comps.o_proj, comps.mlp)):
            if head_input is not None:

                def pre(module: Any, args: tuple, layer: int = layer) -> Any:
                    new = head_input(layer, args[0])
                    return None if new is None else (new, *args[1:])

                handles.append(o_proj.register_forward_pre_hook(pre))
            if mlp_output is not None:

                def post(module: Any, args: tuple, output: Any, layer: int = layer) -> Any:
                    return mlp_output(layer, output)

                handles.append(mlp.register_forward_hook(post))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _ids(model: Any, ids: Sequence[int], rows: int = 1) -> Any:
    import torch

    return torch.tensor([list(ids)] * rows, dtype=torch.long, device=model.device)


def _metric_of(logits: Any, target: int, foil: int) -> Any:
    last = logits[:, -1].float()
    return last[:, target] - last[:, foil]


@dataclasses.dataclass(frozen=True)
class Prefix:
    """The KV cache of ``ids`` (keep it pristine: every run works on a copy)."""

    ids: tuple[int, ...]
    cache: Any


def _forward(model: Any, ids: Sequence[int], prefix: Prefix | None, rows: int = 1, embeds: Any = None) -> Any:
    """The model's output on ``ids`` (``rows`` copies; or on ``embeds``) after ``prefix``'s cache."""
    kwargs: dict[str, Any] = {"use_cache": prefix is not None, "logits_to_keep": 1}
    if embeds is not None:
        kwargs["inputs_embeds"] = embeds
    else:
        kwargs["input_ids"] = _ids(model, ids, rows)
    if prefix is not None:
        cache = copy.deepcopy(prefix.cache)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        kwargs[cache_keyword(model)] = cache
    return model(**kwargs)


def prefix_cache(model: Any, ids: Sequence[int], base: Prefix | None = None) -> Prefix | None:
    """The KV cache of ``ids``, extending ``base`` when its ids begin ``ids``; None if unusable."""
    import torch

    ids = tuple(int(t) for t in ids)
    if not ids or cache_keyword(model) is None:
        return None
    if base is not None and ids[: len(base.ids)] == base.ids:
        if len(ids) == len(base.ids):
            return base
        start = base
    else:
        start = None
    rest = ids[len(start.ids) :] if start else ids
    with torch.no_grad():
        out = (
            _forward(model, rest, start)
            if start
            else model(input_ids=_ids(model, rest), use_cache=True, logits_to_keep=1)
        )
    cache = output_cache(out)
    return Prefix(ids, cache) if resumable(cache) else None


def shared_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of ``sequences``, leaving each at least one token."""
    if not sequences:
        return 0
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in sequences):
        n += 1
    return max(n, 0)


def _pair_prefix(model: Any, pair: Pair, prefix: Prefix | None, use_prefix: bool) -> Prefix | None:
    if not use_prefix:
        return None
    n = shared_length([pair.clean_ids, pair.corrupt_ids])
    return prefix_cache(model, pair.clean_ids[:n], prefix) if n else None


def metric(model: Any, ids: Sequence[int], target: int, foil: int) -> float:
    """``logit[target] - logit[foil]`` at the last position of ``ids``."""
    import torch

    with torch.no_grad():
        out = model(input_ids=_ids(model, ids), use_cache=False, logits_to_keep=1)
    return float(_metric_of(out.logits, target, foil)[0])


def _record(
    model: Any, comps: Components, ids: Sequence[int], pair: Pair, prefix: Prefix | None
) -> tuple[float, list, list]:
    """A no-grad run after ``prefix`` that keeps every component's activation on the tokens after it:
    (metric, head inputs, MLP outputs)."""
    import torch

    heads: list[Any] = [None] * comps.n_layers
    mlps: list[Any] = [None] * comps.n_layers

    def keep_head(layer: int, x: Any) -> None:
        heads[layer] = x.detach()

    def keep_mlp(layer: int, y: Any) -> None:
        mlps[layer] = y.detach()

    start = len(prefix.ids) if prefix else 0
    with torch.no_grad(), _hooked(comps, keep_head, keep_mlp):
        out = _forward(model, ids[start:], prefix)
    return float(_metric_of(out.logits, pair.target, pair.foil)[0]), heads, mlps


@contextlib.contextmanager
def _frozen(model: Any) -> Iterator[None]:
    """No parameter gradients (nothing is trained, and autograd then keeps fewer tensors)."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def attribution_scores(
    model: Any, pair: Pair, comps: Components | None = None, prefix: Prefix | None = None, use_prefix: bool = True
) -> Scores:
    """Attribution patching: ``(a_clean - a_corrupt) . dM/da`` at the corrupt run, per component.

    ``prefix``: a cache of tokens that begin both inputs (e.g. the demonstrations), extended to the
    pair's whole shared prefix; ``use_prefix=False`` runs both inputs in full.
    """
    import torch

    comps = comps or components(model)
    prefix = _pair_prefix(model, pair, prefix, use_prefix)
    start = len(prefix.ids) if prefix else 0
    clean_metric, clean_heads, clean_mlps = _record(model, comps, pair.clean_ids, pair, prefix)
    heads: list[Any] = [None] * comps.n_layers
    mlps: list[Any] = [None] * comps.n_layers

    def keep_head(layer: int, x: Any) -> None:
        heads[layer] = x

    def keep_mlp(layer: int, y: Any) -> None:
        mlps[layer] = y

    with _frozen(model), torch.enable_grad(), _hooked(comps, keep_head, keep_mlp):
        embeds = model.get_input_embeddings()(_ids(model, pair.corrupt_ids[start:])).detach().requires_grad_(True)
        out = _forward(model, (), prefix, embeds=embeds)
        value = _metric_of(out.logits, pair.target, pair.foil)[0]
        grads = torch.autograd.grad(value, heads + mlps, allow_unused=True)
    L, H, D = comps.n_layers, comps.n_heads, comps.head_dim
    head_scores = np.zeros((L, H))
    mlp_scores = np.zeros(L)
    for layer in range(L):
        g = grads[layer]
        if g is not None:
            delta = (clean_heads[layer] - heads[layer].detach()).float() * g.float()
            head_scores[layer] = delta.reshape(*delta.shape[:-1], H, D).sum(dim=(0, 1, 3)).double().cpu().numpy()
        g = grads[L + layer]
        if g is not None:
            mlp_scores[layer] = float(((clean_mlps[layer] - mlps[layer].detach()).float() * g.float()).sum())
    return Scores(head_scores, mlp_scores, clean_metric, float(value.detach()))


def activation_scores(
    model: Any,
    pair: Pair,
    comps: Components | None = None,
    batch_size: int = 8,
    prefix: Prefix | None = None,
    use_prefix: bool = True,
) -> Scores:
    """Activation patching: the exact metric change when one component gets its clean activation.

    One forward pass per component, ``batch_size`` of them at a time (row r patches component r);
    ``prefix`` / ``use_prefix`` as in ``attribution_scores``.
    """
    import torch

    comps = comps or components(model)
    prefix = _pair_prefix(model, pair, prefix, use_prefix)
    start = len(prefix.ids) if prefix else 0
    clean_metric, clean_heads, clean_mlps = _record(model, comps, pair.clean_ids, pair, prefix)
    corrupt_metric, _, _ = _record(model, comps, pair.corrupt_ids, pair, prefix)
    L, H, D = comps.n_layers, comps.n_heads, comps.head_dim
    todo = [("head", layer, head) for layer in range(L) for head in range(H)] + [
        ("mlp", layer, 0) for layer in range(L)
    ]
    results: list[float] = []
    step = max(1, batch_size)
    for first in range(0, len(todo), step):
        chunk = todo[first : first + step]

        def patch_head(layer: int, x: Any, chunk: list = chunk) -> Any:
            rows = [(r, h) for r, (kind, lay, h) in enumerate(chunk) if kind == "head" and lay == layer]
            if not rows:
                return None
            x = x.clone()
            for r, h in rows:
                x[r, :, h * D : (h + 1) * D] = clean_heads[layer][0, :, h * D : (h + 1) * D]
            return x

        def patch_mlp(layer: int, y: Any, chunk: list = chunk) -> Any:
            rows = [r for r, (kind, lay, _) in enumerate(chunk) if kind == "mlp" and lay == layer]
            if not rows:
                return None
            y = y.clone()
            for r in rows:
                y[r] = clean_mlps[layer][0]
            return y

        with torch.no_grad(), _hooked(comps, patch_head, patch_mlp):
            out = _forward(model, pair.corrupt_ids[start:], prefix, rows=len(chunk))
        results += _metric_of(out.logits, pair.target, pair.foil).double().cpu().tolist()
    patched = np.asarray(results) - corrupt_metric
    return Scores(patched[: L * H].reshape(L, H), patched[L * H :], clean_metric, corrupt_metric)
