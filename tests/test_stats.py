"""Wilson intervals and the exact McNemar test against published values and scipy."""

from __future__ import annotations

import random

import pytest

from iclvsft.compare.stats import (
    McNemarResult,
    mcnemar_exact,
    mcnemar_exact_p,
    paired_sign_flip,
    wilson_interval,
)

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize(
    "correct, n, low, high",
    [
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_matches_published_values_and_scipy(correct, n, low, high):
    lo, hi = wilson_interval(correct, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)
    ref = scipy_stats.binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


def test_wilson_edges_and_other_levels():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0
    ref = scipy_stats.binomtest(3, 40).proportion_ci(confidence_level=0.99, method="wilson")
    lo, hi = wilson_interval(3, 40, z=2.5758293035489004)
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-12)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


@pytest.mark.parametrize(
    "b01, b10, p",
    [
        (0, 0, 1.0),
        (5, 0, 0.0625),
        (0, 5, 0.0625),
        (1, 5, 0.21875),
        (3, 3, 1.0),
        (10, 0, 2 / 1024),
    ],
)
def test_mcnemar_exact_p_known_values(b01, b10, p):
    assert mcnemar_exact_p(b01, b10) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_p_matches_scipy_binomtest_on_random_tables():
    rng = random.Random(7)
    tables = [(rng.randrange(0, 60), rng.randrange(0, 60)) for _ in range(40)] + [(1200, 1350), (2000, 1900)]
    for b01, b10 in tables:
        if b01 + b10 == 0:
            continue
        ref = scipy_stats.binomtest(b01, b01 + b10, 0.5).pvalue
        assert mcnemar_exact_p(b01, b10) == pytest.approx(ref, rel=1e-9, abs=1e-300), (b01, b10)


def test_mcnemar_exact_counts_the_discordant_pairs():
    a = [True, True, False, False, True, True, True, 1, 0]
    b = [True, False, True, False, False, False, False, 0, 0]
    res = mcnemar_exact(a, b)
    assert res == McNemarResult(b01=5, b10=1, p_value=mcnemar_exact_p(5, 1), n=9)
    assert res.discordant == 6
    flipped = mcnemar_exact(b, a)
    assert (flipped.b01, flipped.b10, flipped.p_value) == (1, 5, res.p_value)
    assert mcnemar_exact([], []) == McNemarResult(0, 0, 1.0, 0)


def test_mcnemar_exact_refuses_unpaired_inputs():
    with pytest.raises(ValueError, match="same items"):
        mcnemar_exact([True, False], [True])


def test_sign_flip_with_one_repeat_is_exact_mcnemar():
    import random

    rng = random.Random(3)
    for _ in range(40):
        n = rng.randint(0, 60)
        a = [rng.random() < 0.6 for _ in range(n)]
        b = [rng.random() < 0.4 for _ in range(n)]
        flip = paired_sign_flip([float(x) for x in a], [float(x) for x in b])
        mc = mcnemar_exact(a, b)
        assert (flip.b01, flip.b10, flip.n) == (mc.b01, mc.b10, mc.n)
        assert flip.p_value == pytest.approx(mc.p_value, rel=1e-12)


def test_sign_flip_on_mean_scores_matches_brute_force_enumeration():
    import itertools

    a = [1.0, 2 / 3, 1 / 3, 1.0, 0.0, 2 / 3, 1.0]
    b = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    res = paired_sign_flip(a, b, resolution=3)
    d = [round(3 * (x - y)) for x, y in zip(a, b)]
    nonzero = [abs(v) for v in d if v]
    observed = abs(sum(d))
    sums = [sum(s * v for s, v in zip(signs, nonzero)) for signs in itertools.product((1, -1), repeat=len(nonzero))]
    assert res.p_value == pytest.approx(sum(abs(s) >= observed for s in sums) / len(sums), rel=1e-12)
    assert (res.b01, res.b10, res.n) == (4, 2, 7)
    assert "sign-flip" in res.method


def test_sign_flip_refuses_scores_off_the_grid():
    with pytest.raises(ValueError, match="multiples of 1/3"):
        paired_sign_flip([0.5], [0.0], resolution=3)
    with pytest.raises(ValueError, match="same items"):
        paired_sign_flip([1.0], [])
