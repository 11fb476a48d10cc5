"""Intervals and verdicts pooled over training seeds: seeds and items both count, with few seeds the interval is as
wide as Student's t says, a NaN never turns into a verdict, Holm's correction is named where it decides, and "in
domain no worse" must be shown (a review found each of these wrong: 3 seeds at +1, +2, +3 read as significant,
a NaN KL read as claim (b) supported, an in-domain loss of up to 12 points read as "no worse")."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages import metrics as M
from stages.config import load_config
from stages.report_stats import _comparison, _holm_verdicts, claims, reward_trend
from tests.conftest import CONFIGS


def test_three_seeds_without_item_noise_get_students_t_with_two_degrees_of_freedom():
    data = [[np.full(50, d)] for d in (0.01, 0.02, 0.03)]  # each seed's items agree: only the seeds vary
    est = M.seed_item_estimate(data)
    half = 4.302653 * 0.01 / np.sqrt(3)  # t(0.975, 2) * s / sqrt(S)
    assert est.value == pytest.approx(0.02)
    assert (est.low, est.high) == pytest.approx((0.02 - half, 0.02 + half), rel=1e-5)
    assert est.low < 0 < est.high and est.p_value > 0.05  # the percentile bootstrap said [+1, +3] points, p = 0.001
    assert "(2 df)" in est.method


def test_on_a_zero_difference_the_intervals_miss_zero_about_as_often_as_they_say():
    """Seed-to-seed noise larger than item noise, true difference 0: the share of 95% intervals that exclude 0 stays
    near 5% at 2, 3 and 5 seeds (the percentile bootstrap over seeds: 40%, 22%, 16%)."""
    rng = np.random.default_rng(0)
    for n_seeds in (2, 3, 5):
        misses = 0
        for _ in range(400):
            items = rng.normal(0, 0.3, size=100)  # the same items in every seed (crossed), each with its difficulty
            data = [[items + rng.normal(0, 0.05) + rng.normal(0, 0.1, size=100)] for _ in range(n_seeds)]
            est = M.seed_item_estimate(data)
            misses += est.low > 0 or est.high < 0
        assert misses / 400 < 0.075, (n_seeds, misses)


def test_the_same_items_in_every_seed_are_not_counted_as_new_items():
    """Three identical copies of one evaluation (the base model, copied into every seed): the interval is the one
    evaluation's, not sqrt(3) narrower."""
    rng = np.random.default_rng(1)
    x = (rng.random(200) < 0.265).astype(float)
    one = M.bootstrap_ci(x, n_boot=4000, seed=0)
    three = M.seed_item_estimate([[x], [x], [x]])
    assert three.value == pytest.approx(one[0])
    assert three.high - three.low == pytest.approx(one[2] - one[1], rel=0.1)


def test_seeds_that_disagree_in_sign_give_an_interval_across_zero():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.30, 0.05, size=200), rng.normal(-0.10, 0.05, size=200)
    est = M.seed_item_estimate([[a], [b]])
    assert est.low < 0 < est.high and est.p_value > 0.05
    one = M.seed_item_estimate([[a]])  # one seed: the item bootstrap
    assert one.method.startswith("item bootstrap") and one.low > 0


def test_bounds_clip_a_proportion_interval():
    data = [[np.array([0.0] * 95 + [1.0] * 5)], [np.array([0.0] * 99 + [1.0])]]
    assert M.seed_item_estimate(data, bounds=(0.0, 1.0)).low == 0.0


def test_nan_scores_raise_and_the_comparison_is_not_evaluated():
    a = [[np.array([0.1, float("nan"), 0.2])]]
    b = [[np.array([0.1, 0.1, 0.1])]]
    with pytest.raises(M.NonFiniteScores, match="1 item score"):
        M.paired_diff(a, b)
    c = _comparison("rpsft", "sft", "forgetting/kl_to_base", (a, b), 3, 1, {"n_boot": 200})
    assert "not_evaluated" in c
    cfg = load_config(CONFIGS / "tiny.yaml", [])
    _holm_verdicts([c], cfg, 0.05)
    assert c["significant"] is False and c["verdict"].startswith("not evaluated: 1 item score(s) are NaN")
    data = {"n_seeds": 3, "comparisons": [c | {"seeds": 3}]}
    rep = {x["claim"]: x for x in claims(data)}["representation"]
    assert rep["verdict"] == "inconclusive"  # a NaN KL once read as "supported"


def test_a_holm_decided_verdict_names_the_correction_beside_an_interval_that_excludes_zero():
    cfg = load_config(CONFIGS / "tiny.yaml", [])
    base = {"a": "rpsft", "b": "sft", "n": 100, "seeds": 3, "level": "method"}
    comps = [
        base | {"metric": "ood/mean_accuracy", "diff": 0.02, "ci_low": 0.001, "ci_high": 0.04, "p_value": 0.031},
        base | {"metric": "id/mean_accuracy", "diff": 0.0, "ci_low": -0.02, "ci_high": 0.02, "p_value": 0.9},
        base | {"metric": "forgetting/kl_to_base", "diff": 0.0, "ci_low": -0.1, "ci_high": 0.1, "p_value": 0.8},
    ]
    _holm_verdicts(comps, cfg, 0.05)
    # the family is the claims' own tests (here out-of-domain and KL), not every headline metric
    assert comps[0]["p_holm"] == pytest.approx(0.062) and comps[0]["family"] == "claims"
    assert "p_holm" not in comps[1] and comps[1]["verdict"].endswith("(descriptive, unadjusted)")
    assert not comps[0]["significant"] and "not significant after Holm's correction" in comps[0]["verdict"]
    assert "excludes 0" in comps[0]["verdict"]
    assert comps[1]["verdict"].startswith("not distinguishable at this size")


def test_the_trade_off_claim_needs_in_domain_no_worse_shown_not_merely_not_refuted():
    comp = {"a": "rpsft", "b": "sft", "seeds": 3}
    ood = comp | {"metric": "ood/mean_accuracy", "diff": 0.05, "ci_low": 0.02, "ci_high": 0.08, "significant": True}
    idm = comp | {"metric": "id/mean_accuracy", "diff": -0.05, "ci_low": -0.12, "ci_high": 0.003}
    idm["significant"] = False
    out = {c["claim"]: c for c in claims({"n_seeds": 3, "comparisons": [ood, idm]}, margin=0.02)}
    # the in-domain interval is 12.3 points wide, the margin 2: no run this size could show "no worse"
    assert out["tradeoff"]["verdict"] == "too imprecise" and "wider than the margin" in out["tradeoff"]["why"]
    near = idm | {"ci_low": -0.03, "ci_high": 0.003, "n": 200}  # half-width 1.65 < 2, but it reaches -3 points
    out = {c["claim"]: c for c in claims({"n_seeds": 3, "comparisons": [ood, near]}, margin=0.02)}
    assert out["tradeoff"]["verdict"] == "inconclusive" and "-3.00 points" in out["tradeoff"]["why"]
    wide = idm | {"n": 200}
    out = {c["claim"]: c for c in claims({"n_seeds": 3, "comparisons": [ood, wide]}, margin=0.02)}
    assert "about 1892 in-domain items" in out["tradeoff"]["why"]  # 200 x (6.15 / 2)^2, rounded up
    close = idm | {"diff": 0.0, "ci_low": -0.015, "ci_high": 0.015}
    out = {c["claim"]: c for c in claims({"n_seeds": 3, "comparisons": [ood, close]}, margin=0.02)}
    assert out["tradeoff"]["verdict"] == "supported"


def test_a_flat_autocorrelated_reward_curve_is_rarely_read_as_a_trend():
    """Lag-1 correlation 0.8, no trend: "rose or fell" in 56% of 30-step curves when steps were resampled as
    independent; at the shortest length the report reads a trend on, the false-positive rate is at most 5%."""
    from stages.report_stats import MIN_TREND_STEPS

    rng = np.random.default_rng(0)
    false, reps, n = 0, 2000, MIN_TREND_STEPS
    for _ in range(reps):
        x = np.zeros(n + 50)
        for i in range(1, n + 50):
            x[i] = 0.8 * x[i - 1] + rng.normal()
        t = reward_trend([{"reward": float(v)} for v in x[50:]])
        false += t["ci_low"] > 0 or t["ci_high"] < 0
    assert false / reps <= 0.05
    assert reward_trend([{"reward": float(v)} for v in x[51:]]) is None  # one step shorter: no verdict
    rising = [{"reward": 0.05 * i + 0.01 * (i % 2)} for i in range(n)]
    assert reward_trend(rising)["ci_low"] > 0


def test_seeds_with_different_item_counts_keep_the_items_variance():
    rng = np.random.default_rng(2)
    a = (rng.random(100) < 0.5).astype(float)
    est = M.seed_item_estimate([[a], [np.tile(a, 2)]])  # the same mean, different counts: not "exact"
    assert est.low < est.value < est.high and est.p_value < 1e-3  # the mean is ~0.5, far from 0
    one_item = M.paired_diff([[[1.0]], [[1.0]]], [[[0.0]], [[0.0]]])  # one-item benchmark: no variance estimate
    assert one_item.p_value == 1.0 and "no variance estimate" in one_item.method


def test_wilson_is_used_for_one_benchmark_only_and_never_excludes_the_value():
    from stages.report_stats import _metric_interval

    def run(a, b):
        metrics = {k: {"domain": "out"} for k in ("a/accuracy", "b/accuracy")}
        scores = {
            "a/accuracy": {"ids": list(range(len(a))), "scores": a},
            "b/accuracy": {"ids": list(range(len(b))), "scores": b},
        }
        return {"m": {"metrics": metrics, "scores": scores}}

    per_seed = [run([1.0] * 10, [0.0] * 30), run([1.0] * 10, [0.0] * 30)]
    row = _metric_interval(per_seed, "m", "ood/mean_accuracy", {"n_boot": 200, "confidence": 0.95, "seed": 0})
    assert row["value"] == 0.5 and row["ci_low"] <= 0.5 <= row["ci_high"]  # Wilson of the pool read [0.17, 0.35]
    row = _metric_interval(per_seed, "m", "b/accuracy", {"n_boot": 200, "confidence": 0.95, "seed": 0})
    assert row["value"] == 0.0 and row["ci_low"] == 0.0 and row["ci_high"] == pytest.approx(M.wilson_ci(0, 30)[1])


def test_items_are_aligned_by_id_across_seeds():
    from stages.report_stats import _aligned

    def run(ids, scores):
        return {"m": {"metrics": {}, "scores": {"x/accuracy": {"ids": ids, "scores": scores}}}}

    # seed 1 lacks item 2 and lists the others in another order: every seed keeps items 0, 1, 3 in one order
    out = _aligned([run([0, 1, 2, 3], [1, 0, 1, 1]), run([3, 1, 0], [0, 1, 1])], "x/accuracy", ("m",))
    assert out == [[[1, 0, 1], [1, 1, 0]]]


def test_a_nan_reward_or_comparison_is_said_to_be_not_evaluated():
    rows = [{"reward": 0.1 * i} for i in range(36)] + [{"reward": float("nan")}]
    assert reward_trend(rows)["steps"] == 12
    c = {"a": "rpsft", "b": "sft", "metric": "forgetting/kl_to_base", "seeds": 3, "not_evaluated": "1 item score(s)"}
    rep = {x["claim"]: x for x in claims({"n_seeds": 3, "comparisons": [c]})}["representation"]
    assert rep["verdict"] == "inconclusive" and "was not evaluated: 1 item score(s)" in rep["why"]


def test_two_seeds_are_read_as_these_checkpoints_with_the_items_drawn():
    """Fewer than 3 seeds: verdicts are about these checkpoints, so their intervals draw the items (the seed-averaged
    item scores), and the seed control shows the run-to-run spread; t with 1 df would make nothing readable."""
    rng = np.random.default_rng(3)
    a, b = (rng.random(200) < 0.3).astype(float), (rng.random(200) < 0.4).astype(float)
    est = M.seed_item_estimate([[a], [b]], seeds_fixed=True, n_boot=4000)
    ref = M.bootstrap_ci((a + b) / 2, n_boot=4000, seed=0)
    assert est.method.startswith("item bootstrap, 2 checkpoints held fixed")
    assert (est.value, est.low, est.high) == pytest.approx(ref, abs=1e-9)
    c = _comparison("sft", "base", "x/accuracy", ([a, b], [np.zeros(200), np.zeros(200)]), 200, 2, {"n_boot": 2000})
    assert c["interval"].startswith("item bootstrap, 2 checkpoints held fixed") and c["level"] == "checkpoint"
    c3 = _comparison("sft", "base", "x/accuracy", ([a, b, a], [np.zeros(200)] * 3), 200, 3, {"n_boot": 2000})
    assert c3["interval"].startswith("t over 3 seeds") and c3["level"] == "method"


def test_one_seed_paired_binary_p_value_holds_its_level_where_the_bootstrap_did_not():
    # paired 0/1 items, 5% discordant, no true difference: exact McNemar rejects at most 5% of the time
    rng = np.random.default_rng(0)
    n, reps, rejected, boot_rejected = 200, 1000, 0, 0
    for r in range(reps):
        a = (rng.random(n) < 0.4).astype(float)
        b = a.copy()
        flip = rng.random(n) < 0.05
        b[flip] = 1 - b[flip]
        est = M.paired_diff([a], [b], n_boot=500, seed=r)
        rejected += est.p_value < 0.05
        boot_rejected += M.bootstrap_p_value(M.hierarchical_bootstrap([[a - b]], n_boot=500, seed=r)[3]) < 0.05
        assert "McNemar" in est.method
    assert rejected / reps <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps)  # the exact test's level, up to simulation
    assert boot_rejected > rejected  # the bootstrap p-value it replaces ran above nominal here


def test_sign_flip_p_value_holds_its_level_on_several_benchmarks_and_finds_a_real_shift():
    rng = np.random.default_rng(1)
    reps, rejected = 300, 0
    for r in range(reps):
        groups = [(rng.normal(0, 1, 60), 0.5), (rng.integers(-1, 2, 40).astype(float), 0.5)]
        p, test = M.paired_p_value(groups, n_perm=500, seed=r)
        rejected += p < 0.05
    assert test == "sign-flip permutation" and rejected / reps <= 0.07
    shifted = rng.normal(0.3, 1, 200)
    p, _ = M.paired_p_value([(shifted, 1.0)], n_perm=4000)
    assert p == pytest.approx(M._st.ttest_1samp(shifted, 0).pvalue, abs=0.01) and p < 0.05


@pytest.mark.parametrize("df", [math.inf, 4])
def test_minimum_detectable_effect_has_the_power_it_claims(df):
    # an effect equal to the MDE is detected about 80% of the time by the test it is computed for
    rng = np.random.default_rng(2)
    alpha, reps = 0.05, 20000
    if math.isinf(df):
        se = 0.03
        mde = M.minimum_detectable_effect(se, df, alpha)
        z = rng.normal(mde, se, reps) / se
        power = float((np.abs(z) > M._st.norm.ppf(1 - alpha / 2)).mean())
    else:  # a t-test over S = df + 1 seeds with per-seed spread sigma
        s, sigma = df + 1, 0.05
        mde = M.minimum_detectable_effect(sigma / math.sqrt(s), df, alpha)
        x = rng.normal(mde, sigma, (reps, s))
        t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(s))
        power = float((np.abs(t) > M._st.t.ppf(1 - alpha / 2, df)).mean())
    assert 0.75 <= power <= 0.85, power


def test_seeds_needed_from_the_observed_seed_spread():
    # per-seed differences with sd 0.02; an effect of 0.03 at alpha 0.05: the t-test over S seeds reaches 80% power
    need = M.seeds_needed([0.01, 0.0382843], 0.03)  # two values with sd 0.02
    assert need is not None and M.minimum_detectable_effect(0.02 / math.sqrt(need), need - 1) <= 0.03
    assert M.minimum_detectable_effect(0.02 / math.sqrt(need - 1), need - 2) > 0.03
    assert M.seeds_needed([0.01], 0.03) is None  # one seed: no spread to size from
    assert M.seeds_needed([0.0, 0.5], 0.001, max_seeds=50) is None
