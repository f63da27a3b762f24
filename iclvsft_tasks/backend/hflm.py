"""``iclvsft-hf``: lm-eval's ``hf`` backend, computing a shared prompt prefix once.

Few-shot prompts with *fixed* demonstrations (``iclvsft_demos=fixed``) are a few hundred tokens
of which all but the query are the same for every item of a split. lm-eval's ``hf`` backend
(``HFLM``) runs every prompt through the model from its first token. ``IclvsftHFLM`` plans, per
call, which requests share a long token prefix, runs each shared prefix through the model once
(``use_cache=True``) and then, for every request of the group, runs only the rest of the prompt
on a copy of that prefix's KV cache. Everything else (tokenization, truncation, stop sequences,
post-processing, cache hooks, ``loglikelihood_rolling``) is ``HFLM``'s own code, so outputs are
the ``hf`` outputs up to float rounding: loglikelihoods agree to ~1e-5 in fp32, and greedy strings
are identical unless two logits tie to within that rounding.

The class is registered with lm-eval's model registry as ``iclvsft-hf`` when this module is
imported (``lm_eval.api.registry.get_model("iclvsft-hf")``, ``simple_evaluate(model="iclvsft-hf",
model_args="pretrained=...,prefix_cache_mb=256")``). It takes every ``hf`` argument plus:

``prefix_cache_mb`` (default 512)
    Bound on the memory of the *stored* prefix KV caches (sum of their key/value tensors), kept
    in an LRU keyed by the prefix's token ids; the least recently used prefix is evicted first.
    A prefix whose cache alone exceeds the bound is used once and not stored. On top of the bound,
    one working copy of one prefix cache (plus its growth during generation) exists at a time.
    ``0`` turns prefix caching off: the backend is then exactly ``hf``.
``min_prefix_tokens`` (default 16)
    Requests that share fewer tokens than this with their neighbours go through ``HFLM``.
``prefix_batch_size`` (default 8)
    Requests of one prefix group run together, up to this many at a time, on copies of the one
    prefix cache, whatever their lengths. On a CPU a decode step is bound by reading the weights
    (Gemma 3's 262k x 640 LM head is 670 MB in fp32), so 8 rows cost about twice one row (measured:
    235 vs 108 ms per step); decoding is most of what is left once the demonstrations are computed
    once. ``1`` runs every request alone, exactly as ``hf`` with ``batch_size=1`` does.

Batches of prompts with different lengths (see ``_model_generate`` and ``_loglikelihood_tokens``).
In ``generate_until`` HFLM's own batching left-pads the prompts; the rows' prompts after the prefix
(less their last tokens) run together, right-padded, on the repeated prefix cache, and each row's
states are then moved behind masked zero states (``_batch_cache``), so every row's real tokens keep
their positions (the attention mask gives the last prompt token and the new tokens theirs) and a
sliding-window layer's last ``window - 1`` slots hold exactly the states that row may see
(sliding layers record their past during that forward pass). ``generate`` then decodes all
rows together; a row that has stopped keeps decoding tokens that HFLM cuts away, and no
row sees another's. Prompts of equal length skip the stacking: ``generate`` prefills them together
on a batch-repeated prefix cache. In ``loglikelihood`` the inputs after the prefix are right-padded
and run in one forward pass: causal attention keeps the pads out of every real position's logits.
``pad_batches = False`` (an attribute, for benchmarks) restores the earlier scheme: only prompts of
equal length batched, log-likelihood requests one at a time.

The prefix path is used only where it is known to be exact: a decoder-only model whose
``forward`` returns a ``DynamicCache`` made of full-attention (``DynamicLayer``) and
sliding-window (``DynamicSlidingWindowLayer``) layers (Llama, SmolLM2, Gemma 3, ...),
``batch_size=1`` and greedy decoding. A sliding-window layer keeps the last ``window - 1``
states, exactly what the next positions can see, so a prefix longer than the window also resumes
exactly (checked on Gemma 3 270M, window 512, with a 1010-token prefix). Batched or "auto" batch
sizes, sampling, beam search, static / quantized / linear-attention caches, prompt-learning PEFT
adapters and seq2seq models all take ``HFLM``'s path unchanged.

Grouping rule (``plan_prefix_groups``): the token sequences are sorted, so sequences with a long
common prefix are neighbours; walking them in order, a sequence joins the current group when its
longest common prefix ``l'`` with the group prefix (capped so that the positions whose logits are
needed lie after the prefix) is at least ``min_prefix_tokens`` and shrinking the group prefix from
``l`` to ``l'`` recomputes fewer tokens than the newcomer saves: ``(n - 1) * (l - l') < l'`` for a
group of ``n``. (Merging gives a total of ``sum(len) - n*l'`` computed tokens against
``sum(len) - (n-1)*l`` for a fresh group; a lone sequence has no prefix to lose, so it always joins a
neighbour that shares ``min_prefix_tokens``.) Groups of one go through ``HFLM``.

Counters (``stats``, a dict snapshot, reset with ``reset_stats()``) for benchmarks; the token
counters are a ``TokenStats``, the cache's are the ``PrefixCache``'s own. ``prompt_tokens`` is what ``hf``
would run through the model for the same prompts; ``prefix_tokens`` the prefix tokens actually
computed (once per LRU miss); ``suffix_tokens`` the tokens run after a cached prefix (not
counting the pads of a padded batch); ``plain_tokens`` the prompt tokens computed by ``HFLM``'s own
path (fallbacks);
``generated_tokens`` the new tokens of ``generate_until`` (in a batch, rows that have stopped
still count until the batch stops: the model computes them); ``prefix_batches`` the ``generate``
calls that started from a cached prefix. ``tokens_computed`` is
``prefix + suffix + plain + generated``. Also
``prefix_hits`` / ``prefix_misses`` (prefix look-ups served from / missing in the LRU; a
loglikelihood group looks its prefix up once, a generation batch once), ``evictions``,
``uncached`` (prefixes over the bound), ``cache_bytes`` and ``cache_bytes_peak`` (stored bytes).

Cache API relied on (transformers 5.x): a causal LM's ``forward(input_ids, cache=..., use_cache=True,
logits_to_keep=k)`` returns ``.cache``, a ``DynamicCache`` whose ``layers`` grow by concatenation, and
takes positions from ``cache.get_seq_length()``; ``generate(input_ids=<full row>, cache=<filled
cache>, attention_mask=<full mask>)`` prefills only ``input_ids[:, cache_len:]``. The older name
``past_key_values`` is used where ``forward`` has no ``cache`` argument; any other cache class turns
the prefix path off with one warning.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import normalize_gen_kwargs
from tqdm import tqdm

from iclvsft_tasks.backend.kvcache import cache_keyword, output_cache, resumable
from iclvsft_tasks.backend.options import (
    DEFAULT_MIN_PREFIX_TOKENS,
    DEFAULT_PREFIX_BATCH_SIZE,
    DEFAULT_PREFIX_CACHE_MB,
    PrefixOptions,
)
from iclvsft_tasks.backend.prefix_cache import PrefixCache
from iclvsft_tasks.cliutil import slow_half_precision_once
from iclvsft_tasks.lm_eval_glue import BACKEND_NAME

if TYPE_CHECKING:
    from collections.abc import Iterator

    from lm_eval.api.instance import Instance

log = logging.getLogger(__name__)

#: Generation kwargs under which a pre-filled cache is not known to be exact (or generate refuses one).
_UNSAFE_GEN_KWARGS = (
    "cache_implementation",
    "past_key_values",
    "cache",
    "prompt_lookup_num_tokens",
    "assistant_model",
    "assistant_early_exit",
    "prefill_chunk_size",
)


@dataclass
class TokenStats:
    """Token positions by where they were computed (the module docstring defines each)."""

    prompt_tokens: int = 0
    prefix_tokens: int = 0
    suffix_tokens: int = 0
    plain_tokens: int = 0
    generated_tokens: int = 0
    prefix_batches: int = 0

    @property
    def computed(self) -> int:
        """Token positions run through the model: prefixes + suffixes + plain prompts + generated."""
        return self.prefix_tokens + self.suffix_tokens + self.plain_tokens + self.generated_tokens


def _common_prefix_len(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_prefix_groups(
    seqs: Sequence[Sequence[int]], caps: Sequence[int], min_prefix_tokens: int
) -> list[tuple[int, list[int]]]:
    """Group sequences (by index) that share a prefix worth computing once.

    ``caps[i]`` is the longest prefix sequence ``i`` may take from a cache (the positions after it
    must be computed). Returns ``(prefix_len, members)`` for every group of two or more sequences;
    sequences in no group are left out. The rule is in the module docstring.
    """
    order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))
    groups: list[tuple[int, list[int]]] = []
    members: list[int] = []
    plen = 0
    for i in order:
        cap = max(0, min(caps[i], len(seqs[i])))
        if members:
            shared = _common_prefix_len(seqs[members[0]], seqs[i], min(plen, cap))
            n = len(members)
            if shared >= min_prefix_tokens and (n - 1) * (plen - shared) < shared:
                members.append(i)
                plen = shared
                continue
            groups.append((plen, members))
        members, plen = [i], cap
    if members:
        groups.append((plen, members))
    return [(p, m) for p, m in groups if len(m) > 1 and p >= min_prefix_tokens]


@register_model(BACKEND_NAME)
class IclvsftHFLM(HFLM):
    """``HFLM`` that computes a prompt prefix shared by several requests once (see the module docstring).

    ``options`` holds its own arguments (``PrefixOptions``), ``prefixes`` the stored prefix caches
    (a ``PrefixCache`` keyed by token ids), ``token_stats`` the token counters.
    """

    #: False restores the earlier batching (equal-length prompts only; log-likelihoods one at a time), for benchmarks.
    pad_batches: bool = True

    def __init__(
        self,
        *args: Any,
        prefix_cache_mb: float | str = DEFAULT_PREFIX_CACHE_MB,
        min_prefix_tokens: int | str = DEFAULT_MIN_PREFIX_TOKENS,
        prefix_batch_size: int | str = DEFAULT_PREFIX_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        # Validate before loading the model, so a typo costs no load time.
        self.options = PrefixOptions(prefix_cache_mb, min_prefix_tokens, prefix_batch_size)
        super().__init__(*args, **kwargs)
        self.prefixes: PrefixCache[tuple[int, ...], Any] = PrefixCache(self.options.cache_bytes)
        self._gen_plan: dict[tuple[int, ...], int] = {}
        self._bypass = 0
        self._disabled_reason: str | None = None if self.options.cache_bytes > 0 else "prefix_cache_mb=0"
        self._cache_kw: str | None = None
        self._keep_kw: str | None = None
        self.token_stats = TokenStats()
        slow = slow_half_precision_once(str(self.model.dtype).removeprefix("torch."), str(self.device))
        if slow:
            log.warning("%s: %s", BACKEND_NAME, slow)
        if self.backend == "causal" and self.batch_size != 1 and self.options.cache_bytes > 0:
            # Said once, here: _usable() then quietly takes hf's path for every request.
            log.warning(
                "%s: batch_size=%s turns the shared-prefix path off, so this run is plain hf and as slow; "
                "use --batch_size 1 for the fast path (it batches the prompts of one prefix by itself, "
                "up to prefix_batch_size)",
                BACKEND_NAME,
                self.batch_size,
            )

    # ----- bookkeeping -----

    @property
    def stats(self) -> dict[str, int]:
        """Every counter by its documented name (a snapshot; benchmarks keep and print it)."""
        cache = self.prefixes
        return {
            **asdict(self.token_stats),
            "prefix_hits": cache.hits,
            "prefix_misses": cache.misses,
            "evictions": cache.evictions,
            "uncached": cache.uncached,
            "cache_bytes": cache.nbytes,
            "cache_bytes_peak": cache.peak_nbytes,
        }

    def reset_stats(self) -> None:
        """Zero the counters (the stored prefixes stay; ``cache_bytes`` keeps their size)."""
        self.token_stats = TokenStats()
        self.prefixes.reset_counters()

    @property
    def tokens_computed(self) -> int:
        """Token positions run through the model so far: prefixes + suffixes + plain prompts + generated."""
        return self.token_stats.computed

    def clear_prefix_cache(self) -> None:
        """Drop every stored prefix cache."""
        self.prefixes.clear()

    @contextmanager
    def _hflm_only(self) -> Iterator[None]:
        self._bypass += 1
        try:
            yield
        finally:
            self._bypass -= 1

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )

    def _usable(self) -> bool:
        """Whether the prefix path may run at all for this model and configuration."""
        if self._bypass or self._disabled_reason is not None:
            return False
        if self.backend != "causal" or self.batch_size != 1:
            return False
        if self._cache_kw is None:
            self._inspect_model()
        return self._disabled_reason is None

    def _disable(self, reason: str) -> None:
        log.warning("%s: prefix caching off (%s); using the hf path", BACKEND_NAME, reason)
        self._disabled_reason = reason
        self.clear_prefix_cache()

    def _inspect_model(self) -> None:
        import inspect

        model = self.model
        peft_config = getattr(model, "active_peft_config", None)
        if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
            # Prompt/prefix tuning injects virtual tokens or its own past key values.
            return self._disable("prompt-learning PEFT adapter")
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self._cache_kw = cache_keyword(base)
        if self._cache_kw is None:
            return self._disable(f"{type(base).__name__}.forward takes no cache")
        self._keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        gen_config = getattr(model, "generation_config", None)
        if getattr(gen_config, "cache_implementation", None) is not None:
            # generate() refuses a user cache together with cache_implementation.
            return self._disable(f"generation_config.cache_implementation={gen_config.cache_implementation!r}")
        return None

    # ----- model calls -----

    def _forward(self, ids: Sequence[Sequence[int]], cache: Any, keep: int) -> tuple[torch.Tensor, Any]:
        """Logits ``[rows, keep, vocab]`` of the last ``keep`` positions of the equal-length rows ``ids``
        (run after ``cache`` if given) and the cache."""
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([list(row) for row in ids], dtype=torch.long, device=self.device),
            "use_cache": True,
        }
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if self._keep_kw is not None:
            kwargs[self._keep_kw] = keep  # skip the LM head (and its memory) at positions we never read
        with torch.no_grad(), self._autocast():
            out = self.model(**kwargs)
        return out.logits[:, -keep:], output_cache(out)

    def _prefix_cache(self, prefix: tuple[int, ...]) -> Any | None:
        """The KV cache of ``prefix`` (from the LRU or computed now); None if this model's cache is unsupported."""
        cache = self.prefixes.get(prefix)
        if cache is not None:
            return cache
        self.token_stats.prefix_tokens += len(prefix)
        _, cache = self._forward([prefix], None, keep=1)
        if not resumable(cache):
            self._disable(f"unsupported cache type {type(cache).__name__}")
            return None
        self.prefixes.put(prefix, cache)  # one over the bound is not stored: used for this request group only
        return cache

    # ----- generate_until -----

    def _greedy_and_safe(self, kwargs: dict[str, Any]) -> bool:
        if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
            return False
        if int(kwargs.get("num_beams") or 1) != 1 or int(kwargs.get("num_return_sequences") or 1) != 1:
            return False
        if kwargs.get("use_cache") is False:
            return False
        return not any(key in kwargs for key in _UNSAFE_GEN_KWARGS)

    def _generation_row(self, context: str, gen_kwargs: dict) -> tuple[int, ...] | None:
        """The token ids HFLM.generate_until feeds the model for this request at batch size 1, or None."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        if not self._greedy_and_safe(kwargs):
            return None
        max_ctx_len = self.max_length - kwargs["max_gen_toks"]
        if max_ctx_len <= 0:
            return None  # HFLM raises its own error for this one
        ids, _ = self.tok_batch_encode([context], truncation=self.truncation)
        # Same left truncation as HFLM's tok_batch_encode(left_truncate_len=...), without its warning twice.
        return tuple(ids[0, -max_ctx_len:].tolist())

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        if not self._usable() or not requests:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        rows: list[tuple[int, ...]] = []
        eligible: list[int] = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            row = self._generation_row(context, gen_kwargs)
            if row is not None:
                rows.append(row)
                eligible.append(i)
        groups = plan_prefix_groups(rows, [len(r) - 1 for r in rows], self.options.min_prefix_tokens)

        results: list[str | None] = [None] * len(requests)
        pbar = tqdm(
            total=len(requests), disable=(disable_tqdm or (self.rank != 0)), desc="Running generate_until requests"
        )
        grouped: set[int] = set()
        try:
            # One HFLM call per group keeps each prefix hot in the LRU while its group runs.
            for plen, members in groups:
                self._gen_plan = {rows[m]: plen for m in members}
                # HFLM sorts a group's prompts by length and runs them in (left-padded) batches.
                buckets: dict[int, list[int]] = {}
                for m in members:
                    buckets.setdefault(len(rows[m]) if not self.pad_batches else 0, []).append(eligible[m])
                try:
                    for idx in buckets.values():
                        grouped.update(idx)
                        self.batch_size_per_gpu = min(self.options.prefix_batch_size, len(idx))
                        try:
                            outs = super().generate_until([requests[i] for i in idx], disable_tqdm=True)
                        finally:
                            self.batch_size_per_gpu = 1
                        for i, out in zip(idx, outs, strict=True):
                            results[i] = out
                        pbar.update(len(idx))
                finally:
                    self._gen_plan = {}
            rest = [i for i in range(len(requests)) if i not in grouped]
            if rest:
                outs = super().generate_until([requests[i] for i in rest], disable_tqdm=True)
                for i, out in zip(rest, outs, strict=True):
                    results[i] = out
                pbar.update(len(rest))
        finally:
            pbar.close()
        return results  # type: ignore[return-value]

    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any
    ) -> torch.Tensor:
        cache = None
        rows, width = context.shape
        mask = generation_kwargs.get("attention_mask")
        prompts = _unpadded_rows(context, mask)
        if self._gen_plan and prompts is not None:
            plens = {self._gen_plan.get(prompt, 0) for prompt in prompts}
            plen = plens.pop() if len(plens) == 1 else 0
            # One prefix for every row (a batch holds prompts of one group only).
            if plen and all(prompt[:plen] == prompts[0][:plen] for prompt in prompts):
                prefix = self._prefix_cache(prompts[0][:plen])
                if prefix is not None:
                    cache = self._batch_cache(prefix, [prompt[plen:] for prompt in prompts])
        prompt_tokens = sum(len(p) for p in prompts) if prompts is not None else rows * width
        self.token_stats.prompt_tokens += prompt_tokens
        if cache is None:
            self.token_stats.plain_tokens += prompt_tokens
            out = super()._model_generate(context, max_length, stop, **generation_kwargs)
        else:
            self.token_stats.suffix_tokens += prompt_tokens - rows * plen
            self.token_stats.prefix_batches += 1
            # HFLM's own call, plus the cache: generate() then prefills only input_ids[:, cache_len:]
            # (positions come from the attention mask).
            generation_kwargs[self._cache_kw] = cache
            out = super()._model_generate(context, max_length, stop, **generation_kwargs)
        self.token_stats.generated_tokens += rows * (out.shape[1] - width)
        return out

    def _batch_cache(self, prefix: Any, suffixes: list[tuple[int, ...]]) -> Any | None:
        """A cache for the rows ``prefix + suffixes[r]`` left-padded to the longest, that ``generate`` resumes.

        Equal lengths: the prefix cache repeated per row (``generate`` prefills the suffixes together).
        Otherwise the suffixes but their last tokens run together, right-padded, on the repeated prefix
        cache (causal attention keeps the pads out of the real states), with the sliding-window layers
        keeping every state; then each row's real states are moved to the right end behind zero states
        (masked by ``generate``'s attention mask) and a sliding layer keeps each row's last ``window - 1``.
        ``generate`` then runs every row's last prompt token together. None if a layer cannot do this.
        """
        rows = len(suffixes)
        cache = copy.deepcopy(prefix)  # generate() appends to the cache: keep the stored one pristine
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        if len({len(s) for s in suffixes}) == 1:
            return cache
        sliding = [layer for layer in cache.layers if getattr(layer, "is_sliding", False)]
        if not all(hasattr(layer, "activate_past_recording") for layer in sliding):
            return None
        for layer in sliding:
            layer.activate_past_recording()  # keep the states a shorter row still sees after the pads
        width = max(len(s) for s in suffixes) - 1
        pad = self.tokenizer.pad_token_id or 0
        _, cache = self._forward([s[:-1] + (pad,) * (width + 1 - len(s)) for s in suffixes], cache, keep=1)
        total = prefix.get_seq_length() + width
        for layer in cache.layers:
            if not (layer.is_initialized and layer.keys is not None and layer.keys.numel()):
                return None
            window = layer.sliding_window - 1 if getattr(layer, "is_sliding", False) else layer.keys.shape[-2]
            slots = layer.keys.shape[-2]
            reals = [slots - (width + 1 - len(s)) for s in suffixes]  # each row's states before its pads
            keep = min(max(reals), window)
            for name in ("keys", "values"):
                states = getattr(layer, name)
                parts = [states[r : r + 1, :, max(0, n - keep) : n] for r, n in enumerate(reals)]
                setattr(layer, name, torch.cat([F.pad(p, (0, 0, keep - p.shape[-2], 0)) for p in parts]))
            if hasattr(layer, "cumulative_length"):
                layer.record_past = False
                layer.cumulative_length = total
        return cache

    # ----- loglikelihood -----

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        with self._hflm_only():  # rolling windows rarely share prefixes; keep HFLM's code path
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        if not self._usable() or not requests:
            self._count_plain_loglikelihood(requests)
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        # The model input exactly as HFLM builds it; logits are needed at its last len(cont) positions.
        needed: dict[tuple[int, ...], int] = {}  # distinct input -> longest continuation scored on it
        inps: list[tuple[int, ...]] = []
        truncated = 0
        for _, context_enc, continuation_enc in requests:
            assert len(context_enc) > 0 and len(continuation_enc) > 0
            assert len(continuation_enc) <= self.max_length
            truncated += len(context_enc) + len(continuation_enc) > self.max_length + 1
            inp = tuple((context_enc + continuation_enc)[-(self.max_length + 1) :][:-1])
            inps.append(inp)
            needed[inp] = max(needed.get(inp, 0), len(continuation_enc))
        if truncated:
            log.warning(
                "%d loglikelihood requests exceed max_length=%d and were truncated from the left",
                truncated,
                self.max_length,
            )
        distinct = list(needed)
        # A prefix may cover at most the positions before the first scored logit.
        groups = plan_prefix_groups(distinct, [len(s) - needed[s] for s in distinct], self.options.min_prefix_tokens)
        by_inp: dict[tuple[int, ...], list[int]] = {}
        for i, inp in enumerate(inps):
            by_inp.setdefault(inp, []).append(i)

        results: list[tuple[float, bool] | None] = [None] * len(requests)
        pbar = tqdm(
            total=len(requests), disable=(disable_tqdm or (self.rank != 0)), desc="Running loglikelihood requests"
        )
        try:
            for plen, members in groups:
                prefix = self._prefix_cache(distinct[members[0]][:plen])
                if prefix is None:
                    break  # unsupported cache: everything left goes through HFLM below
                # Longest first, so a batch holds similar lengths (little padding).
                ordered = sorted((distinct[m] for m in members), key=len, reverse=True)
                size = self.options.prefix_batch_size if self.pad_batches else 1
                for start in range(0, len(ordered), size):
                    batch = ordered[start : start + size]
                    for inp, logprobs in zip(batch, self._batch_logprobs(prefix, plen, batch, needed), strict=True):
                        for i in by_inp[inp]:
                            results[i] = self._score(requests[i], logprobs)
                            pbar.update(1)
            rest = [i for i in range(len(requests)) if results[i] is None]
            if rest:
                self._count_plain_loglikelihood([requests[i] for i in rest])
                outs = super()._loglikelihood_tokens(
                    [requests[i] for i in rest], disable_tqdm=True, override_bs=override_bs
                )
                for i, out in zip(rest, outs, strict=True):
                    results[i] = out
                pbar.update(len(rest))
        finally:
            pbar.close()
        return results  # type: ignore[return-value]

    def _batch_logprobs(
        self, prefix: Any, plen: int, inps: list[tuple[int, ...]], needed: dict[tuple[int, ...], int]
    ) -> list[torch.Tensor]:
        """Log-probs ``[needed[inp], vocab]`` at the last ``needed[inp]`` positions of each input, in one forward.

        The inputs after the prefix are right-padded to the longest: a real position attends only to
        earlier ones, so the pads change no logit that is read.
        """
        width = max(len(inp) for inp in inps) - plen
        pad = self.tokenizer.pad_token_id or 0
        rows = [list(inp[plen:]) + [pad] * (width - len(inp) + plen) for inp in inps]
        # Logits from the earliest position any row needs to the end.
        keep = max(width - (len(inp) - plen) + needed[inp] for inp in inps)
        cache = copy.deepcopy(prefix)
        if len(inps) > 1:
            cache.batch_repeat_interleave(len(inps))
        self.token_stats.prompt_tokens += sum(len(inp) for inp in inps)
        self.token_stats.suffix_tokens += sum(len(inp) - plen for inp in inps)
        logits, _ = self._forward(rows, cache, keep=keep)
        out = []
        for r, inp in enumerate(inps):
            end = keep - (width - (len(inp) - plen))
            out.append(F.log_softmax(logits[r, end - needed[inp] : end], dim=-1, dtype=self.softmax_dtype))
        return out

    def _count_plain_loglikelihood(self, requests: Sequence[tuple[Any, list[int], list[int]]]) -> None:
        # HFLM runs one forward per distinct input when logits_cache is on (its one-token-continuation reuse).
        inps = [tuple((ctx + cont)[-(self.max_length + 1) :][:-1]) for _, ctx, cont in requests]
        computed = sum(len(s) for s in (set(inps) if self.logits_cache else inps))
        self.token_stats.prompt_tokens += computed
        self.token_stats.plain_tokens += computed

    def _score(
        self, request: tuple[tuple[str, str], list[int], list[int]], logprobs: torch.Tensor
    ) -> tuple[float, bool]:
        """(sum of the continuation's log-probs, whether greedy decoding gives it), as HFLM computes them."""
        request_str, _, continuation_enc = request
        cont = torch.tensor(continuation_enc, dtype=torch.long, device=logprobs.device)
        rows = logprobs[-len(continuation_enc) :]
        is_greedy = bool((rows.argmax(dim=-1) == cont).all())
        answer = (float(rows.gather(1, cont.unsqueeze(-1)).sum()), is_greedy)
        if request_str is not None:
            self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return answer


def _unpadded_rows(context: torch.Tensor, mask: torch.Tensor | None) -> list[tuple[int, ...]] | None:
    """Each row's tokens without its left padding; None if ``mask`` is not a left-padding mask."""
    if mask is None:
        return [tuple(row) for row in context.tolist()]
    if mask.shape != context.shape or bool((mask[:, 1:] < mask[:, :-1]).any()) or not bool(mask[:, -1].all()):
        return None
    return [tuple(row[len(row) - n :]) for row, n in zip(context.tolist(), mask.sum(dim=1).tolist(), strict=True)]
