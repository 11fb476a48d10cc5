"""Evaluation statistics: Avg@k and pass@k, bootstrap intervals (plain, stratified), intervals pooled over training
seeds and items (:func:`seed_item_estimate`, paired: :func:`paired_diff`), p-values with Holm's correction, Wilson
intervals, linear CKA, token KL.

Pure numpy / torch, no model code, so every formula here is unit tested on hand-computed cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as _st
from scipy.optimize import brentq as _brentq


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Raises:
        ValueError: k > n or c outside [0, n].
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def avg_at_k(correct: Sequence[bool]) -> float:
    """Avg@k for one item: the share of its k sampled completions that are correct."""
    if not len(correct):
        raise ValueError("avg@k of no samples")
    return float(np.mean(np.asarray(correct, dtype=float)))


def _interval(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    a = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of per-item scores and its percentile bootstrap interval (items resampled with replacement).

    Returns:
        (mean, low, high). A single item gives a zero-width interval.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    lo, hi = _interval(x[idx].mean(axis=1), confidence)
    return float(x.mean()), lo, hi


def proportion_ci(
    values: Sequence[float], *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and interval of per-item scores: Wilson's interval when every score is 0 or 1 (a proportion; right at
    0/n and n/n, where the percentile bootstrap says [0, 0]), else :func:`bootstrap_ci`."""
    x = np.asarray(values, dtype=float)
    if x.size and np.all((x == 0) | (x == 1)):
        lo, hi = wilson_ci(int(x.sum()), int(x.size), confidence)
        return float(x.mean()), lo, hi
    return bootstrap_ci(x, n_boot=n_boot, confidence=confidence, seed=seed)


def stratified_bootstrap_ci(
    strata: Sequence[Sequence[float]], *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Unweighted mean of the strata means (e.g. benchmarks of one model); items are resampled within each stratum.

    With one stratum this equals :func:`bootstrap_ci`.
    """
    v, lo, hi, _ = hierarchical_bootstrap([list(strata)], n_boot=n_boot, confidence=confidence, seed=seed)
    return v, lo, hi


class Estimate(NamedTuple):
    """A pooled value with its interval and the two-sided p-value of "it is 0"; ``method`` says how they were got.
    ``se`` and ``df``: its standard error and degrees of freedom (inf: normal), for minimum detectable effects."""

    value: float
    low: float
    high: float
    p_value: float
    method: str
    se: float = math.nan
    df: float = math.inf


def paired_p_value(
    groups: Sequence[tuple[np.ndarray, float]], *, n_perm: int = 4000, seed: int = 0
) -> tuple[float, str]:
    """Two-sided p-value of "the weighted sum of group means of paired differences is 0", the items held fixed:
    ``groups`` are (per-item differences, weight). One group of differences in {-1, 0, 1} (paired 0/1 items): exact
    McNemar, the binomial test of the discordant pairs (scipy). Otherwise a sign-flip permutation test (each item's
    difference keeps its size and takes either sign, as it would if the two sides were exchangeable), ``n_perm``
    random flips, (count + 1) / (n_perm + 1). The bootstrap p-value of a one-seed difference of paired 0/1 items ran
    about 1.7x nominal at 5% discordant pairs; both tests here hold their level."""
    groups = [(np.asarray(d, dtype=float), float(w)) for d, w in groups]
    if len(groups) == 1 and np.all(np.isin(groups[0][0], (-1.0, 0.0, 1.0))):
        d = groups[0][0]
        up, down = int((d > 0).sum()), int((d < 0).sum())
        if up + down == 0:
            return 1.0, "exact McNemar"
        return float(_st.binomtest(up, up + down, 0.5).pvalue), "exact McNemar"
    observed = abs(sum(w * d.mean() for d, w in groups))
    if observed == 0:
        return 1.0, "sign-flip permutation"
    rng = np.random.default_rng(seed)
    flipped = np.zeros(n_perm)
    chunk = max(1, 2_000_000 // max(1, max(d.size for d, _ in groups)))  # bounded memory on large benchmarks
    for d, w in groups:
        for start in range(0, n_perm, chunk):
            rows = min(chunk, n_perm - start)
            signs = rng.integers(0, 2, size=(rows, d.size), dtype=np.int8) * 2 - 1
            flipped[start : start + rows] += w * (signs @ d) / d.size
    # a tolerance, so that a flip giving the observed value exactly (by symmetry) counts as reaching it
    count = int((np.abs(flipped) >= observed * (1 - 1e-12)).sum())
    return float((count + 1) / (n_perm + 1)), "sign-flip permutation"


def minimum_detectable_effect(se: float, df: float = math.inf, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true effect a two-sided test at level ``alpha`` detects with probability ``power``, for an
    estimate with standard error ``se`` and ``df`` degrees of freedom: (t_{1-alpha/2} + t_{power}) x se."""
    if not math.isfinite(se) or se < 0:
        return math.nan
    dist = _st.norm if not math.isfinite(df) else _st.t(df)
    return float((dist.ppf(1 - alpha / 2) + dist.ppf(power)) * se)


def seeds_needed(
    per_seed: Sequence[float],
    effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    max_seeds: int = 1000,
    min_seeds: int = 3,
) -> int | None:
    """Training seeds a method-level test (t over seeds, S - 1 df) needs to detect ``effect`` with ``power`` at level
    ``alpha``, given the spread of the per-seed values observed (their sample variance, items included). None when
    the spread cannot be estimated (fewer than 2 seeds) or more than ``max_seeds`` would be needed; at least
    ``min_seeds`` (a statement about a method rests on 3 or more)."""
    x = np.asarray(per_seed, dtype=float)
    if x.size < 2 or not math.isfinite(effect) or effect == 0:
        return None
    var = float(x.var(ddof=1))
    if var == 0:
        return min_seeds
    for s in range(min_seeds, max_seeds + 1):
        if minimum_detectable_effect(math.sqrt(var / s), s - 1, alpha, power) <= abs(effect):
            return s
    return None


class NonFiniteScores(ValueError):
    """Item scores that are NaN or infinite (a diverged checkpoint): no interval or verdict can be read from them."""


def _checked(data: Sequence[Sequence[Sequence[float]]]) -> list[list[np.ndarray]]:
    seeds = [[np.asarray(g, dtype=float) for g in s] for s in data]
    if not seeds or any(not s or any(g.size == 0 for g in s) for s in seeds):
        raise ValueError("every seed needs at least one stratum with at least one item")
    if len({len(s) for s in seeds}) != 1:
        raise ValueError("every seed needs the same strata")
    bad = sum(int((~np.isfinite(g)).sum()) for s in seeds for g in s)
    if bad:
        raise NonFiniteScores(f"{bad} item score(s) are NaN or infinite (a diverged checkpoint?)")
    return seeds


def hierarchical_bootstrap(
    data: Sequence[Sequence[Sequence[float]]], *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float, np.ndarray]:
    """Mean over seeds of the unweighted mean over strata of the item means, with a two-level percentile bootstrap:
    seeds resampled with replacement, then items within each stratum of each drawn seed.

    ``data[s][g]`` holds the per-item values of stratum g (a benchmark) in seed s (a training run). One seed is the
    item bootstrap stratified by g, which is what :func:`seed_item_estimate` uses it for. With few seeds the
    percentile interval cannot reach past the extreme seeds and is far too narrow (2 seeds: about 40% of intervals
    miss a zero difference): pooled intervals over seeds come from :func:`seed_item_estimate`.

    Returns:
        (point estimate, low, high, the bootstrap statistics).

    Raises:
        NonFiniteScores: a NaN or infinite item score.
    """
    seeds = _checked(data)
    n_seeds, n_strata = len(seeds), len(seeds[0])
    rng = np.random.default_rng(seed)
    point = float(np.mean([np.mean([g.mean() for g in s]) for s in seeds]))
    chosen = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else np.zeros((n_boot, 1), dtype=int)
    stats = np.zeros(n_boot)
    for j in range(chosen.shape[1]):
        for s in range(n_seeds):
            rows = np.flatnonzero(chosen[:, j] == s)
            if not rows.size:
                continue
            for g in seeds[s]:
                stats[rows] += g[rng.integers(0, g.size, size=(rows.size, g.size))].mean(axis=1) / n_strata
    stats /= chosen.shape[1]
    lo, hi = _interval(stats, confidence)
    return point, lo, hi, stats


def seed_item_estimate(
    data: Sequence[Sequence[Sequence[float]]],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    bounds: tuple[float, float] | None = None,
    seeds_fixed: bool = False,
) -> Estimate:
    """The mean over training seeds of the unweighted mean over strata (benchmarks) of the item means, with an
    interval that counts both sources of chance: which training seeds were drawn, and which items.

    ``seeds_fixed``: the statement is about these checkpoints, not the method that made them (the report's level
    "checkpoint", fewer than 3 seeds), so only the items are drawn: the item bootstrap of the seed-averaged item
    scores (the same items in every seed), or of each seed's items with the seeds held fixed.

    ``data[s][g]`` holds the per-item values of stratum g in seed s. One seed: the item bootstrap stratified by g
    (percentile interval, bootstrap p-value). Several seeds: the per-seed estimates m_s vary by seed (their sample
    variance over S seeds, divided by S), and when every seed scores the same number of items per stratum (the
    same evaluation items: crossed) the items add the variance of the seed-averaged item scores (per stratum,
    divided by its item count; with different item counts, each seed's item variance, which counts them twice and
    errs wide). Each
    source gets its Student's t half-width, added in quadrature: the seeds' with S - 1 degrees of freedom (2 seeds:
    12.7 standard errors for 95%, 3 seeds: 4.3; with so few seeds their variance is itself uncertain, and a claim
    about a method rests on it), the items' with theirs. A percentile bootstrap over so few seeds could not reach
    past the extreme seed and missed a zero difference in about 40% of 2-seed cases; Welch-Satterthwaite's pooled
    df, computed from the estimated variances, still missed 13.5% (a low seed estimate raised the df just when it
    was wrong). The p-value is 1 - the confidence at which the interval reaches 0, so the two always agree.
    ``bounds`` clips the interval to the values the mean can take (proportions: 0, 1).

    Raises:
        NonFiniteScores: a NaN or infinite item score.
    """
    seeds = _checked(data)
    n_seeds, n_strata = len(seeds), len(seeds[0])
    if n_seeds == 1:
        point, lo, hi, stats = hierarchical_bootstrap(seeds, n_boot=n_boot, confidence=confidence, seed=seed)
        p, test = paired_p_value([(g, 1 / n_strata) for g in seeds[0]], seed=seed)
        method = f"item bootstrap (one seed); p: {test}"
        return Estimate(point, *_clip(lo, hi, bounds), p, method, float(stats.std(ddof=1)))
    if seeds_fixed:
        if all(len({s[g].size for s in seeds}) == 1 for g in range(n_strata)):  # crossed: average, then draw items
            averaged = [[np.mean([s[g] for s in seeds], axis=0) for g in range(n_strata)]]
            point, lo, hi, stats = hierarchical_bootstrap(averaged, n_boot=n_boot, confidence=confidence, seed=seed)
            groups = [(g, 1 / n_strata) for g in averaged[0]]
        else:  # each seed's own items drawn, the seeds held fixed
            rng = np.random.default_rng(seed)
            point = float(np.mean([np.mean([g.mean() for g in s]) for s in seeds]))
            stats = np.zeros(n_boot)
            for s in seeds:
                for g in s:
                    stats += g[rng.integers(0, g.size, size=(n_boot, g.size))].mean(axis=1) / n_strata / n_seeds
            lo, hi = _interval(stats, confidence)
            groups = [(g, 1 / n_strata / n_seeds) for s in seeds for g in s]
        p, test = paired_p_value(groups, seed=seed)
        method = f"item bootstrap, {n_seeds} checkpoints held fixed; p: {test}"
        return Estimate(point, *_clip(lo, hi, bounds), p, method, float(stats.std(ddof=1)))
    per_seed = np.array([np.mean([g.mean() for g in s]) for s in seeds])
    point = float(per_seed.mean())
    seed_var = float(per_seed.var(ddof=1)) / n_seeds
    parts = [(seed_var, n_seeds - 1)]
    for g in range(n_strata):
        sizes = {s[g].size for s in seeds}
        if min(sizes) < 2:
            continue
        if len(sizes) == 1:  # crossed: the same items in every seed (the caller aligns them by id)
            z = np.mean([s[g] for s in seeds], axis=0)  # each item's score averaged over the seeds
            parts.append((float(z.var(ddof=1)) / z.size / n_strata**2, z.size - 1))
        else:  # different items per seed: each seed's item variance (counted again beside the seeds': errs wide)
            v = sum(float(s[g].var(ddof=1)) / s[g].size for s in seeds) / n_seeds**2
            parts.append((v / n_strata**2, min(sizes) - 1))
    var = sum(v for v, _ in parts)
    if var <= 0:
        if any(s[g].size < 2 for s in seeds for g in range(n_strata)):  # a one-item benchmark: no item variance
            return Estimate(point, point, point, 1.0, "no variance estimate (a benchmark with one item)")
        return Estimate(point, point, point, 1.0 if point == 0 else 0.0, "exact (no spread over seeds or items)")
    seed_part, item_parts = parts[0], parts[1:]
    item_var = sum(v for v, _ in item_parts)
    item_df = item_var**2 / sum(v**2 / d for v, d in item_parts if v > 0) if item_var > 0 else math.inf

    def half_width(conf: float) -> float:
        """Each source's t half-width (the seeds' with S - 1 degrees of freedom, the items' with theirs), added in
        quadrature: the seeds' variance, estimated from 2 or 3 values, is itself uncertain and gets its wide t,
        without stretching the well-estimated item part by the same factor."""
        q = 0.5 + conf / 2
        seeds_hw = float(_st.t.ppf(q, seed_part[1])) * math.sqrt(seed_part[0]) if seed_part[0] > 0 else 0.0
        items_hw = float(_st.t.ppf(q, item_df)) * math.sqrt(item_var) if item_var > 0 else 0.0
        return math.hypot(seeds_hw, items_hw)

    lo, hi = _clip(point - half_width(confidence), point + half_width(confidence), bounds)
    if point == 0:
        p = 1.0
    elif half_width(1e-9) >= abs(point):
        p = 1.0
    elif half_width(1 - 1e-12) <= abs(point):
        p = 1e-12
    else:  # the p-value is 1 - the confidence at which the interval's end reaches 0: consistent with the interval
        p = 1.0 - float(_brentq(lambda c: half_width(c) - abs(point), 1e-9, 1 - 1e-12, xtol=1e-12))
    # For the minimum detectable effect: the df of one Student's t whose 95% quantile gives this interval's own
    # half-width (the seeds' and items' t half-widths added in quadrature are wider than Welch-Satterthwaite's t)
    crit = half_width(0.95) / math.sqrt(var)
    if crit <= float(_st.norm.ppf(0.975)):
        df = math.inf
    elif crit >= float(_st.t.ppf(0.975, 1)):
        df = 1.0
    else:
        df = float(_brentq(lambda f: float(_st.t.ppf(0.975, f)) - crit, 1.0, 1e7))
    method = f"t over {n_seeds} seeds ({n_seeds - 1} df) and items"
    return Estimate(point, lo, hi, p, method, math.sqrt(var), df)


def _clip(lo: float, hi: float, bounds: tuple[float, float] | None) -> tuple[float, float]:
    if bounds is None:
        return float(lo), float(hi)
    return float(max(bounds[0], lo)), float(min(bounds[1], hi))


def bootstrap_p_value(stats: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the statistic is 0": twice the smaller tail share at 0, (count + 1) / (B + 1)
    so that it is never exactly 0 from finitely many resamples."""
    stats = np.asarray(stats, dtype=float)
    if np.all(stats == 0):
        return 1.0
    tail = min(int((stats <= 0).sum()), int((stats >= 0).sum()))
    return float(min(1.0, 2 * (tail + 1) / (stats.size + 1)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): step-down, monotone, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (p.size - rank) * p[i]))
        adjusted[i] = running
    return [float(x) for x in adjusted]


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy's): sensible at 0/n and n/n, where a percentile bootstrap gives
    [0, 0]."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"Wilson interval needs 0 <= successes <= n, n > 0 (got {successes}/{n})")
    ci = _st.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def paired_diff_ci(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Difference mean(a) - mean(b) paired by item and seed: ``a[s][i]`` and ``b[s][i]`` are the same item i of seed s.
    Seeds and items both count (:func:`seed_item_estimate`).

    Returns:
        (difference, low, high).

    Raises:
        ValueError: a and b do not cover the same items.
    """
    est = paired_diff(a, b, n_boot=n_boot, confidence=confidence, seed=seed)
    return est.value, est.low, est.high


def paired_diff(
    a: Sequence[Sequence[float]] | Sequence[Sequence[Sequence[float]]],
    b: Sequence[Sequence[float]] | Sequence[Sequence[Sequence[float]]],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    bounds: tuple[float, float] | None = None,
    seeds_fixed: bool = False,
) -> Estimate:
    """:func:`paired_diff_ci` as an :class:`Estimate` (with its p-value); ``a[s]`` may also be a list of strata
    (benchmarks). The per-item differences go through :func:`seed_item_estimate` (``seeds_fixed`` too)."""
    if len(a) != len(b):
        raise ValueError("paired comparison needs the same seeds and items on both sides")
    nested = bool(len(a)) and bool(len(a[0])) and np.ndim(a[0][0]) == 1
    a3 = a if nested else [[x] for x in a]
    b3 = b if nested else [[x] for x in b]
    diffs = []
    for sa, sb in zip(a3, b3, strict=True):
        if len(sa) != len(sb) or any(len(x) != len(y) for x, y in zip(sa, sb, strict=True)):
            raise ValueError("paired comparison needs the same seeds and items on both sides")
        diffs.append([np.asarray(x, dtype=float) - np.asarray(y, dtype=float) for x, y in zip(sa, sb, strict=True)])
    return seed_item_estimate(
        diffs, n_boot=n_boot, confidence=confidence, seed=seed, bounds=bounds, seeds_fixed=seeds_fixed
    )


def _center_gram(k: np.ndarray) -> np.ndarray:
    k = k - k.mean(axis=0, keepdims=True)
    return k - k.mean(axis=1, keepdims=True)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same N points (rows): ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F).

    1 for identical representations, invariant to orthogonal transforms and isotropic scaling of either side.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"CKA needs the same N >= 2 rows on both sides (got {x.shape[0]} and {y.shape[0]})")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    num = np.linalg.norm(y.T @ x) ** 2
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(num / den) if den > 0 else float("nan")


def cka_from_grams(kx: np.ndarray, ky: np.ndarray) -> float:
    """Linear CKA from the (uncentred) Gram matrices K = X X^T and L = Y Y^T of the same N points."""
    kc, lc = _center_gram(kx), _center_gram(ky)
    den = np.linalg.norm(kc) * np.linalg.norm(lc)
    return float((kc * lc).sum() / den) if den > 0 else float("nan")


def cka_bootstrap(
    kx: np.ndarray,
    ky: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float, np.ndarray]:
    """CKA, a bootstrap interval that resamples whole sequences (``groups[i]`` = sequence of token i), and the
    bootstrap statistics. The same ``seed`` and ``groups`` draw the same sequences, so the
    statistics of several layers can be averaged resample by resample into the interval of the mean CKA.

    A resample repeats each token as often as its sequence was drawn, so its CKA is that of the full Grams with a
    weight per token (:func:`_weighted_cka`): all resamples at once from a few products of the N x N Grams, instead
    of two N x N copies per resample (the same numbers; the copies cost about 2 s per layer at N = 1,024)."""
    value = cka_from_grams(kx, ky)
    ids, seq_of = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = [np.bincount(rng.integers(0, len(ids), size=len(ids)), minlength=len(ids)) for _ in range(n_boot)]
    weights = np.stack(draws, axis=1)[seq_of].astype(np.float64)  # (tokens, resamples)
    stats_arr = _weighted_cka(kx, ky, weights)
    lo, hi = _interval(stats_arr, confidence)
    return value, lo, hi, stats_arr


def _weighted_cka(kx: np.ndarray, ky: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Linear CKA of the points of Grams ``kx``, ``ky`` repeated ``w[:, b]`` times, for every column b of ``w``.

    With W = diag(w) and n = sum(w), the centred cross term of the repeated points is
    tr(K H L H) = w^T (K o L) w - (2/n) sum_i w_i (K w)_i (L w)_i + (w^T K w)(w^T L w) / n^2. The Grams are centred
    on the whole sample first (a shift of the points, which no centred Gram sees), so the three terms do not cancel
    in large numbers."""
    kx, ky = _center_gram(kx), _center_gram(ky)
    n = w.sum(axis=0)
    kw, lw = kx @ w, ky @ w

    def hsic(a: np.ndarray, b: np.ndarray, aw: np.ndarray, bw: np.ndarray) -> np.ndarray:
        cross = np.einsum("ib,ib->b", w, (a * b) @ w)
        mixed = np.einsum("ib,ib,ib->b", w, aw, bw)
        means = np.einsum("ib,ib->b", w, aw) * np.einsum("ib,ib->b", w, bw)
        return cross - 2 * mixed / n + means / n**2

    xy, xx, yy = hsic(kx, ky, kw, lw), hsic(kx, kx, kw, kw), hsic(ky, ky, lw, lw)
    den = np.sqrt(np.clip(xx, 0, None) * np.clip(yy, 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, xy / np.where(den > 0, den, 1.0), np.nan)


def token_kl(base_logits, model_logits):
    """Per-position KL(base || model) in nats from two logit tensors of shape [..., vocab] (torch)."""
    import torch  # lazy: the report stage imports this module and needs numpy only, not torch

    lp = torch.log_softmax(base_logits.float(), dim=-1)
    lq = torch.log_softmax(model_logits.float(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(dim=-1).clamp_min(0.0)
