"""The ``iclvsft-hf`` backend gives ``hf``'s outputs while computing shared prompt prefixes once."""

from __future__ import annotations

import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from iclvsft_tasks.backend.hflm import IclvsftHFLM, plan_prefix_groups
from iclvsft_tasks.backend.options import PrefixOptions
from iclvsft_tasks.data.splits import SplitSpec, build_split
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.lm_eval_glue import BACKEND_NAME
from iclvsft_tasks.prompts import render_prompt

GREEDY = {"until": ["\n\n"], "do_sample": False, "max_gen_toks": 12}
LL_TOL = 1e-4


def _model_args(path, **extra):
    return {"pretrained": str(path), "device": "cpu", "batch_size": 1, "dtype": "float32", **extra}


@pytest.fixture(scope="module")
def hf(tiny_llama):
    return HFLM(**_model_args(tiny_llama))


@pytest.fixture(scope="module")
def ours(tiny_llama):
    return IclvsftHFLM(**_model_args(tiny_llama))


def _items(task, split="train", n=8):
    spec = SplitSpec(task, train_size=16, test_size=8, test_broken_size=4, validation_size=4)
    return build_split(spec, split)[:n]


def _fewshot_prompts(task, shots=4, queries=4):
    demos = _items(task, "train", shots)
    return [render_prompt(q, demos) for q in _items(task, "test", queries)]


def _gen(contexts, gen_kwargs=GREEDY):
    return [Instance("generate_until", {}, (c, dict(gen_kwargs)), i) for i, c in enumerate(contexts)]


def _ll(pairs):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def _prompt_tokens(lm, contexts):
    return sum(len(lm.tok_batch_encode([c])[0][0]) for c in contexts)


def _assert_ll_close(got, want):
    assert len(got) == len(want)
    for (lp, greedy), (lp_ref, greedy_ref) in zip(got, want, strict=True):
        assert abs(lp - lp_ref) < LL_TOL, (lp, lp_ref)
        assert greedy == greedy_ref


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    assert BACKEND_NAME == "iclvsft-hf"  # the name users type in --model
    assert get_model(BACKEND_NAME) is IclvsftHFLM


@pytest.mark.parametrize(
    "arg, value",
    [
        ("prefix_cache_mb", "lots"),
        ("prefix_cache_mb", "-1"),
        ("prefix_cache_mb", True),
        ("min_prefix_tokens", "2.5"),
        ("min_prefix_tokens", "0"),
        ("prefix_batch_size", "0"),
    ],
)
def test_bad_settings_name_the_argument(tiny_llama, arg, value):
    with pytest.raises(IclvsftError, match=arg) as info:
        IclvsftHFLM(**_model_args(tiny_llama, **{arg: value}))
    assert "\n" not in str(info.value)


def test_options_parse_model_args_strings_and_numbers():
    assert PrefixOptions() == PrefixOptions(512, 16, 8)
    opts = PrefixOptions("0.5", " 8 ", 4.0)
    assert opts == PrefixOptions(0.5, 8, 4) and opts.cache_bytes == 2**19
    assert type(opts.min_prefix_tokens) is int and type(opts.prefix_batch_size) is int
    assert PrefixOptions(prefix_cache_mb=0).cache_bytes == 0
    with pytest.raises(IclvsftError, match=r"^prefix_batch_size must be an integer >= 1, got 2\.5$"):
        PrefixOptions(prefix_batch_size=2.5)
    with pytest.raises(IclvsftError, match="prefix_cache_mb must be a number >= 0, got 'nan'"):
        PrefixOptions(prefix_cache_mb="nan")


def test_settings_arrive_as_strings_and_unknown_arguments_fail_as_in_hf(tiny_llama):
    lm = IclvsftHFLM.create_from_arg_string(
        f"pretrained={tiny_llama},device=cpu,dtype=float32,prefix_cache_mb=0.5,min_prefix_tokens=8"
    )
    assert lm.options.cache_bytes == 2**19 and lm.options.min_prefix_tokens == 8
    errors = []
    for cls in (HFLM, IclvsftHFLM):
        with pytest.raises(Exception) as info:
            cls(**_model_args(tiny_llama, no_such_option=1))
        errors.append(type(info.value))
    assert errors[0] is errors[1]


def test_plan_groups_neighbours_by_common_prefix():
    a = [1] * 30
    seqs = [a + [2, 3], [9] * 40, a + [4, 5, 6], [7, 7, 7], a + [2, 8]]
    groups = plan_prefix_groups(seqs, [len(s) - 1 for s in seqs], min_prefix_tokens=16)
    assert groups == [(30, [0, 4, 2])]  # sorted order; the third member shrinks the prefix from 31 to 30
    # Shrinking a big group's prefix to admit a newcomer that shares little is refused.
    b = [1] * 20
    seqs = [a + [2], a + [3], a + [4], b + [5] * 30]
    assert plan_prefix_groups(seqs, [len(s) - 1 for s in seqs], 16) == [(30, [0, 1, 2])]
    # The cap keeps every needed position out of the prefix.
    assert plan_prefix_groups([a, a], [25, 25], 16) == [(25, [0, 1])]


def test_generate_until_matches_hf_and_computes_less(hf, ours):
    contexts = (
        _fewshot_prompts("expression_pattern", shots=4, queries=4)
        + _fewshot_prompts("parity_pattern", shots=4, queries=3)
        + ["Hello"]
    )
    want = hf.generate_until(_gen(contexts))
    ours.reset_stats()
    got = ours.generate_until(_gen(contexts))
    assert got == want
    assert len(set(got)) > 1  # the tiny model says different things to different prompts
    stats = ours.stats
    assert stats["prompt_tokens"] == _prompt_tokens(ours, contexts)
    assert stats["prefix_misses"] == 2  # one prefix per task
    assert stats["plain_tokens"] > 0  # "Hello" shares nothing
    prompt_side = stats["prefix_tokens"] + stats["suffix_tokens"] + stats["plain_tokens"]
    assert prompt_side < stats["prompt_tokens"] * 0.5
    assert ours.tokens_computed == prompt_side + stats["generated_tokens"]


def test_equal_length_prompts_of_a_group_run_together_with_hf_outputs(tiny_llama, hf):
    demos = _items("expression_pattern", "train", 4)
    spec = SplitSpec("expression_pattern", train_size=16, test_size=40, test_broken_size=4, validation_size=4)
    contexts = [render_prompt(q, demos) for q in build_split(spec, "test")]
    lengths = [len(hf.tok_encode(c)) for c in contexts]
    assert max(lengths.count(n) for n in lengths) >= 3  # some buckets hold several prompts
    want = hf.generate_until(_gen(contexts))
    for batch, expected_calls in ((4, None), (1, len(contexts))):
        lm = IclvsftHFLM(**_model_args(tiny_llama, prefix_batch_size=batch))
        assert lm.generate_until(_gen(contexts)) == want
        assert lm.stats["plain_tokens"] == 0 and lm.batch_size == 1
        calls = lm.stats["prefix_batches"]
        assert calls == expected_calls if expected_calls else calls < len(contexts)


def test_generate_until_sampling_takes_hf_path(ours):
    assert ours._generation_row("x" * 50, {"do_sample": True, "temperature": 0.7}) is None
    assert ours._generation_row("x" * 50, {"temperature": 0.5}) is None
    assert ours._generation_row("x" * 50, {"until": ["\n"], "num_beams": 2}) is None
    assert ours._generation_row("x" * 50, dict(GREEDY)) is not None


def test_loglikelihood_matches_hf(hf, ours):
    contexts = _fewshot_prompts("parity_pattern", shots=4, queries=4)
    greedy = hf.generate_until(_gen(contexts[:1], {"until": ["\n\n"], "do_sample": False, "max_gen_toks": 3}))[0]
    pairs = [(c, cont) for c in contexts for cont in (" even", " odd", " 12 + 34 = 46")]
    pairs.append((contexts[0], greedy))  # scored greedily by construction (when it round-trips)
    pairs.append(("Hi", " there"))  # shares nothing: HFLM's path
    want = hf.loglikelihood(_ll(pairs))
    ours.reset_stats()
    got = ours.loglikelihood(_ll(pairs))
    _assert_ll_close(got, want)
    assert want[-2][1] or not greedy  # at least one is_greedy=True compared
    assert ours.stats["suffix_tokens"] > 0 and ours.stats["plain_tokens"] > 0
    prompt_side = ours.stats["prefix_tokens"] + ours.stats["suffix_tokens"] + ours.stats["plain_tokens"]
    assert prompt_side < ours.stats["prompt_tokens"] * 0.5


def test_nothing_shared_falls_back_to_hf(hf, ours):
    contexts = ["2+2=", "True or False:", "abc", "(1+3)*5="]
    ours.reset_stats()
    assert ours.generate_until(_gen(contexts)) == hf.generate_until(_gen(contexts))
    pairs = [(c, " 4") for c in contexts]
    _assert_ll_close(ours.loglikelihood(_ll(pairs)), hf.loglikelihood(_ll(pairs)))
    assert ours.stats["prefix_misses"] == ours.stats["prefix_hits"] == ours.stats["suffix_tokens"] == 0
    assert ours.stats["plain_tokens"] == ours.stats["prompt_tokens"] > 0


def test_loglikelihood_rolling_is_hf(hf, ours):
    texts = [_fewshot_prompts("expression_pattern", shots=2, queries=1)[0]] * 2
    reqs = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    ours.reset_stats()
    got, want = ours.loglikelihood_rolling(reqs), hf.loglikelihood_rolling(reqs)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < LL_TOL
    assert ours.stats["suffix_tokens"] == 0


@pytest.mark.parametrize("room", ["one prefix", "none"])
def test_lru_stays_within_its_bound(tiny_llama, hf, ours, room):
    contexts = (
        _fewshot_prompts("expression_pattern", shots=4, queries=3)
        + _fewshot_prompts("boolean_pattern", shots=4, queries=3)
        + _fewshot_prompts("relation_pattern", shots=4, queries=3)
    )
    ours.clear_prefix_cache()
    ours.generate_until(_gen(contexts))
    sizes = ours.prefixes.sizes()
    assert len(sizes) == 3
    bound = max(sizes) + 1 if room == "one prefix" else min(sizes) - 1
    small = IclvsftHFLM(**_model_args(tiny_llama, prefix_cache_mb=str(bound / 2**20)))
    bytes_bound = small.options.cache_bytes
    assert bytes_bound <= bound
    pairs = [(c, cont) for c in contexts for cont in (" 1", " True")]
    assert small.generate_until(_gen(contexts)) == hf.generate_until(_gen(contexts))
    _assert_ll_close(small.loglikelihood(_ll(pairs)), hf.loglikelihood(_ll(pairs)))
    assert small.stats["cache_bytes_peak"] <= bytes_bound
    assert sum(small.prefixes.sizes()) == small.stats["cache_bytes"] <= bytes_bound
    if room == "one prefix":
        assert small.stats["evictions"] > 0 and len(small.prefixes) == 1
    else:
        assert small.stats["uncached"] > 0 and len(small.prefixes) == 0
    assert small.stats["suffix_tokens"] > 0


def test_zero_budget_is_plain_hf(tiny_llama, hf):
    off = IclvsftHFLM(**_model_args(tiny_llama, prefix_cache_mb=0))
    contexts = _fewshot_prompts("code_pattern", shots=2, queries=2)
    assert off.generate_until(_gen(contexts)) == hf.generate_until(_gen(contexts))
    assert off.stats["prefix_misses"] == off.stats["suffix_tokens"] == 0
    assert off.stats["plain_tokens"] == off.stats["prompt_tokens"] == _prompt_tokens(off, contexts)


def test_simple_evaluate_gives_hf_responses(hf, ours):
    from lm_eval import simple_evaluate

    import iclvsft_tasks

    tasks = ["expression_pattern_2shot", "parity_pattern_mc_2shot"]
    responses = []
    for lm in (hf, ours):
        tm = iclvsft_tasks.task_manager(
            test_size=8, validation_size=4, train_size=64, test_broken_size=8, demos="fixed", draw=1
        )
        result = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, bootstrap_iters=0, log_samples=True)
        responses.append({t: [s["resps"] for s in result["samples"][t]] for t in tasks})
    want, got = responses
    assert got["expression_pattern_2shot"] == want["expression_pattern_2shot"]
    mc_got = [float(r[0][0]) for s in got["parity_pattern_mc_2shot"] for r in s]
    mc_want = [float(r[0][0]) for s in want["parity_pattern_mc_2shot"] for r in s]
    assert len(mc_got) == len(mc_want) > 0
    assert max(abs(a - b) for a, b in zip(mc_got, mc_want, strict=True)) < LL_TOL
    assert ours.stats["prefix_hits"] + ours.stats["prefix_misses"] > 0


# ----- batches of prompts with different lengths


@pytest.fixture(scope="module")
def tiny_gemma3(tiny_llama, tmp_path_factory):
    """Gemma 3's layout (sliding-window and full layers, head_dim != hidden / heads) with a window of 16:
    every few-shot prompt is longer than the window, so the sliding layers' caches are cut."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(2)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1,
    )
    directory = tmp_path_factory.mktemp("tiny-gemma3")
    Gemma3ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _mixed_length_prompts(task, n=12, shots=4):
    """Few-shot prompts of one fixed demonstration set, whose queries have different token lengths."""
    demos = _items(task, "train", shots)
    spec = SplitSpec(task, train_size=16, test_size=n, test_broken_size=4, validation_size=4)
    return [render_prompt(q, demos) for q in build_split(spec, "test")]


def _count_forwards(monkeypatch, lm):
    calls = []
    forward = lm._forward
    monkeypatch.setattr(lm, "_forward", lambda ids, cache, keep: calls.append(len(ids)) or forward(ids, cache, keep))
    return calls


@pytest.mark.parametrize("model", ["llama", "gemma3"])
def test_prompts_of_different_lengths_batch_together_with_hf_outputs(request, model):
    path = request.getfixturevalue(f"tiny_{model}")
    hf = HFLM(**_model_args(path))
    contexts = _mixed_length_prompts("relation_pattern") + _mixed_length_prompts("code_pattern", n=6)
    lengths = [len(hf.tok_encode(c)) for c in contexts]
    assert len(set(lengths)) > 3 and min(lengths) > 3 * 16  # longer than the gemma3 window
    # A stop string the tiny models emit at different steps: rows of a batch finish at different times.
    kwargs = {"until": ["\n\n", "e"], "do_sample": False, "max_gen_toks": 10}
    want = hf.generate_until(_gen(contexts, kwargs))
    assert len({len(w) for w in want}) > 2 and len(set(want)) > 2
    for batch in (1, 4, 32):
        lm = IclvsftHFLM(**_model_args(path, prefix_batch_size=batch))
        assert lm.generate_until(_gen(contexts, kwargs)) == want, batch
        stats = lm.stats
        assert stats["plain_tokens"] == 0 and lm.batch_size == 1
        assert stats["prompt_tokens"] == sum(lengths)
        # One prefix per task; every batch but a group's last holds `batch` prompts.
        assert stats["prefix_batches"] == -(-12 // batch) + -(-6 // batch)
        assert stats["prefix_tokens"] + stats["suffix_tokens"] < sum(lengths) * 0.5


def test_equal_length_batching_is_kept_as_a_switch(tiny_llama, hf):
    contexts = _mixed_length_prompts("relation_pattern")
    lengths = [len(hf.tok_encode(c)) for c in contexts]
    want = hf.generate_until(_gen(contexts))
    lm = IclvsftHFLM(**_model_args(tiny_llama, prefix_batch_size=32))
    lm.pad_batches = False
    assert lm.generate_until(_gen(contexts)) == want
    assert lm.stats["prefix_batches"] == len(set(lengths))


@pytest.mark.parametrize("model", ["llama", "gemma3"])
def test_loglikelihood_batches_different_lengths_within_tolerance(request, monkeypatch, model):
    path = request.getfixturevalue(f"tiny_{model}")
    hf = HFLM(**_model_args(path))
    contexts = _mixed_length_prompts("relation_pattern", n=6)
    conts = [" True", " 12 + 34 = 46", " a", " False because the pattern breaks"]
    greedy = hf.generate_until(_gen(contexts[:2], {"until": ["\n\n"], "do_sample": False, "max_gen_toks": 4}))
    pairs = [(c, cont) for c in contexts for cont in conts] + list(zip(contexts[:2], greedy, strict=True))
    want = hf.loglikelihood(_ll(pairs))
    assert any(g for _, g in want)  # an is_greedy=True is compared
    for batch, pad in ((8, True), (1, True), (8, False)):
        lm = IclvsftHFLM(**_model_args(path, prefix_batch_size=batch))
        lm.pad_batches = pad
        calls = _count_forwards(monkeypatch, lm)
        _assert_ll_close(lm.loglikelihood(_ll(pairs)), want)
        assert calls[0] == 1  # the prefix, then every distinct input once (one-token continuations share one)
        distinct = sum(calls[1:])
        assert len(pairs) > distinct > 8
        assert len(calls) - 1 == (-(-distinct // batch) if pad else distinct)
