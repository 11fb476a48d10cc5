"""Hand-computed checks of the evaluation statistics (stages.metrics) and the built-in probes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages import metrics as M
from stages.probes import agreement_items, facts_items


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 0, 1, 0.0),
        (4, 4, 4, 1.0),
        (4, 1, 1, 0.25),  # one right out of four, one draw
        (4, 1, 4, 1.0),  # all four drawn: the right one is among them
        (4, 2, 2, 1 - 1 / 6),  # P(both draws wrong) = C(2,2)/C(4,2) = 1/6
        (5, 2, 3, 1 - 1 / 10),  # C(3,3)/C(5,3) = 1/10
        (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)),
    ],
)
def test_pass_at_k(n, c, k, expected):
    assert M.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="pass@k"):
        M.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="pass@k"):
        M.pass_at_k(4, 1, 5)


def test_avg_at_k():
    assert M.avg_at_k([True, False, False, True]) == 0.5
    assert M.avg_at_k([False] * 3) == 0.0
    with pytest.raises(ValueError):
        M.avg_at_k([])


def test_bootstrap_on_a_known_sample():
    # 30 ones in 100: mean 0.3; the bootstrap distribution of the mean is ~Binomial(100, 0.3)/100 with sd 0.0458,
    # so the 95% percentile interval is about 0.3 +- 1.96 * 0.0458 = [0.21, 0.39].
    x = np.array([1.0] * 30 + [0.0] * 70)
    mean, lo, hi = M.bootstrap_ci(x, n_boot=4000, seed=1)
    assert mean == pytest.approx(0.3)
    assert lo == pytest.approx(0.21, abs=0.02)
    assert hi == pytest.approx(0.39, abs=0.02)
    # A constant sample has a zero-width interval; a deterministic seed gives the same interval twice.
    assert M.bootstrap_ci([0.5] * 10) == (0.5, 0.5, 0.5)
    assert M.bootstrap_ci(x, seed=3) == M.bootstrap_ci(x, seed=3)


def test_stratified_bootstrap_matches_single_stratum_and_averages_strata():
    x = np.array([1.0] * 30 + [0.0] * 70)
    v, lo, hi = M.stratified_bootstrap_ci([x], seed=2)
    assert v == pytest.approx(0.3) and 0.2 < lo < 0.3 < hi < 0.4
    mean, lo, hi = M.stratified_bootstrap_ci([np.ones(50), np.zeros(50)])
    assert (mean, lo, hi) == (0.5, 0.5, 0.5)  # no within-stratum variance: the mean of the strata is exact


def test_hierarchical_bootstrap_includes_seeds_that_disagree_in_sign():
    """Two training seeds whose paired differences disagree in sign: resampling seeds gives an interval that includes
    0, while resampling items only (seeds as fixed strata) excludes it."""
    rng = np.random.default_rng(0)
    seed_a = rng.normal(0.30, 0.05, size=200)  # seed 0: method a clearly better
    seed_b = rng.normal(-0.10, 0.05, size=200)  # seed 1: method a worse
    d, lo, hi, _ = M.hierarchical_bootstrap([[seed_a], [seed_b]], n_boot=4000, seed=1)
    assert d == pytest.approx((seed_a.mean() + seed_b.mean()) / 2)
    assert lo < 0 < hi
    item_only = M.stratified_bootstrap_ci([np.concatenate([seed_a, seed_b])], n_boot=4000, seed=1)
    assert item_only[1] > 0  # the naive interval would call it significant
    # One seed: the hierarchical bootstrap is the item bootstrap.
    assert M.hierarchical_bootstrap([[seed_a]], seed=3)[:3] == pytest.approx(M.bootstrap_ci(seed_a, seed=3), abs=0.01)


def test_holm_on_a_known_case():
    # p = (0.01, 0.04, 0.03, 0.005): sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert M.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert M.holm([0.5]) == [0.5]
    assert M.holm([0.4, 0.6]) == [0.8, 0.8]


def test_wilson_interval_is_not_zero_width_at_the_edges():
    lo, hi = M.wilson_ci(0, 200)
    assert lo == 0.0 and hi == pytest.approx(0.01884, abs=1e-4)  # 1.96^2 / (200 + 1.96^2)
    lo, hi = M.wilson_ci(200, 200)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.01884, abs=1e-4)
    lo, hi = M.wilson_ci(30, 100)
    assert lo == pytest.approx(0.2189, abs=1e-3) and hi == pytest.approx(0.3958, abs=1e-3)
    assert M.proportion_ci([0.0] * 200)[2] > 0  # the percentile bootstrap would say [0, 0]


def test_bootstrap_p_value():
    assert M.bootstrap_p_value(np.zeros(100)) == 1.0
    assert M.bootstrap_p_value(np.ones(999)) == pytest.approx(2 / 1000)
    assert M.bootstrap_p_value(np.array([-1.0] * 500 + [1.0] * 500)) == 1.0


def test_paired_difference():
    a = [np.array([1.0, 1.0, 0.0, 1.0])]
    b = [np.array([0.0, 1.0, 0.0, 0.0])]
    d, lo, hi = M.paired_diff_ci(a, b, n_boot=2000)
    assert d == pytest.approx(0.5)
    assert 0.0 <= lo <= d <= hi <= 1.0
    # Identical sides: exactly zero with a zero-width interval (pairing removes item variance).
    same = [np.array([1.0, 0.0, 1.0])]
    assert M.paired_diff_ci(same, same) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same seeds and items"):
        M.paired_diff_ci([np.ones(3)], [np.ones(4)])


def test_cka_identity_rotation_scale_and_independence():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert M.linear_cka(x, x) == pytest.approx(1.0)
    assert M.linear_cka(x, x @ q) == pytest.approx(1.0)  # orthogonal rotation
    assert M.linear_cka(x, 3.0 * x) == pytest.approx(1.0)  # isotropic scaling
    assert M.linear_cka(x, rng.normal(size=(200, 16))) < 0.2  # unrelated representations
    # The Gram form equals the feature form.
    y = x @ rng.normal(size=(16, 8))
    assert M.cka_from_grams(x @ x.T, y @ y.T) == pytest.approx(M.linear_cka(x, y))


def test_cka_bootstrap_interval_contains_value():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 8))
    y = x + 0.5 * rng.normal(size=(120, 8))
    groups = np.repeat(np.arange(12), 10)
    v, lo, hi, _ = M.cka_bootstrap(x @ x.T, y @ y.T, groups, n_boot=50)
    assert lo <= v <= hi and 0 < v < 1
    v, lo, hi, _ = M.cka_bootstrap(x @ x.T, x @ x.T, groups, n_boot=20)
    assert v == pytest.approx(1.0) and lo == pytest.approx(1.0)


def _cka_bootstrap_by_copies(kx, ky, groups, n_boot, seed):
    """The bootstrap written out: each resample's Grams copied from the full ones, then plain CKA."""
    ids = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in ids]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        idx = np.concatenate([members[j] for j in rng.integers(0, len(ids), size=len(ids))])
        out.append(M.cka_from_grams(kx[np.ix_(idx, idx)], ky[np.ix_(idx, idx)]))
    return np.asarray(out)


@pytest.mark.parametrize("offset", [0.0, 300.0])  # 300: hidden states with a few huge constant channels
def test_cka_bootstrap_statistics_equal_the_resampled_copies(offset):
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(15), rng.integers(1, 12, size=15))  # sequences of unequal lengths
    x = rng.normal(size=(len(groups), 24))
    y = x @ rng.normal(size=(24, 24)) * 0.3 + rng.normal(size=(len(groups), 24))
    x[:, :2] += offset
    y[:, 0] -= offset
    kx, ky = x @ x.T, y @ y.T
    _, _, _, stats = M.cka_bootstrap(kx, ky, groups, n_boot=40, seed=7)
    want = _cka_bootstrap_by_copies(kx, ky, groups, 40, 7)
    np.testing.assert_allclose(stats, want, rtol=1e-9, atol=1e-12)
    assert len(set(np.round(stats, 6))) > 10  # the resamples differ: the comparison is not of constants


def test_token_kl():
    logits = torch.randn(5, 7, 11)
    assert torch.allclose(M.token_kl(logits, logits), torch.zeros(5, 7), atol=1e-6)
    # Two-outcome case by hand: p = (0.5, 0.5), q = (0.9, 0.1): KL = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1).
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.9, 0.1]]))
    assert M.token_kl(p, q).item() == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5.0), rel=1e-5)


def test_probes_are_deterministic_valid_and_balanced():
    a1, a2 = agreement_items(200, 5), agreement_items(200, 5)
    assert a1 == a2 and len(a1) == 200 and len({x["id"] for x in a1}) == 200
    for x in a1:
        assert len(x["choices"]) == 2 and x["choices"][0] != x["choices"][1] and x["question"] == ""
    share_first = sum(x["answer"] == 0 for x in a1) / len(a1)
    assert 0.35 < share_first < 0.65  # the right option is not always in one position
    f = facts_items(100, 5)
    assert len(f) == 100
    for x in f:
        assert len(x["choices"]) == 4 and len(set(x["choices"])) == 4
        assert x["choices"][x["answer"]] == x["answer_text"] and x["question"].startswith("Question: ")


def test_an_rl_run_moved_only_beyond_its_interval():
    from stages.report_stats import moved

    def c(lo, hi, **extra):
        return {"a": "rl-sft", "b": "sft", "metric": "id/mean_avg@4", "diff": (lo + hi) / 2, "ci_low": lo} | {
            "ci_high": hi,
            **extra,
        }

    assert moved(c(0.01, 0.05)) and moved(c(-0.05, -0.01))
    assert not moved(c(-0.02, 0.04)) and not moved(c(0.0, 0.04)) and not moved(None)
    assert not moved(c(0.01, 0.05, not_evaluated="NaN scores"))


def test_the_report_reads_whether_each_reward_curve_rose():
    from stages.report_stats import reward_lines, reward_trend

    flat = [{"reward": 0.5 + 0.01 * (i % 2)} for i in range(36)]
    rising = [{"reward": 0.1 * i} for i in range(36)]
    assert reward_trend(flat[:35]) is None  # too short for a trend verdict at the autocorrelation RL curves have
    t = reward_trend(rising)
    assert t["steps"] == 12 and t["first"] == pytest.approx(0.55) and t["last"] == pytest.approx(2.95)
    assert t["ci_low"] > 0
    lines = reward_lines({"rl-sft": flat, "rl-rpsft": rising, "rl-l2": flat[:9]})
    assert "did not rise beyond its interval" in lines[0]
    assert "rose beyond its interval" in lines[1] and "+2.400" in lines[1]
    assert "too few to read a trend" in lines[2]


def test_error_bars_are_never_negative():
    from stages.report_plots import _err

    points = [{"value": 0.0, "ci_low": 1e-18, "ci_high": 0.0}, {"value": 0.3, "ci_low": 0.2, "ci_high": 0.5}]
    low, high = _err(points)
    assert low == [0.0, pytest.approx(0.1)] and high == [0.0, pytest.approx(0.2)]
