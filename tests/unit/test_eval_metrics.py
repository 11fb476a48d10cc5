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


def test_seeds_bootstrap_matches_single_seed_and_averages_seeds():
    x = np.array([1.0] * 30 + [0.0] * 70)
    assert M.seeds_bootstrap_ci([x], seed=2) == M.bootstrap_ci(x, seed=2)
    mean, lo, hi = M.seeds_bootstrap_ci([np.ones(50), np.zeros(50)])
    assert (mean, lo, hi) == (0.5, 0.5, 0.5)  # no within-seed variance: the mean across seeds is exact


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
    v, lo, hi = M.cka_bootstrap(x @ x.T, y @ y.T, groups, n_boot=50)
    assert lo <= v <= hi and 0 < v < 1
    v, lo, hi = M.cka_bootstrap(x @ x.T, x @ x.T, groups, n_boot=20)
    assert v == pytest.approx(1.0) and lo == pytest.approx(1.0)


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
