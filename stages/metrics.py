"""Evaluation statistics: Avg@k and pass@k, bootstrap intervals (plain, paired, across seeds), linear CKA, token KL.

Pure numpy / torch, no model code, so every formula here is unit tested on hand-computed cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


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


def seeds_bootstrap_ci(
    per_seed: Sequence[Sequence[float]], *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean across seeds of the per-seed mean score; items are resampled within each seed (stratified bootstrap).

    With one seed this equals :func:`bootstrap_ci`.
    """
    arrays = [np.asarray(s, dtype=float) for s in per_seed]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("every seed needs at least one item")
    rng = np.random.default_rng(seed)
    stats = np.zeros(n_boot)
    for a in arrays:
        stats += a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    stats /= len(arrays)
    lo, hi = _interval(stats, confidence)
    return float(np.mean([a.mean() for a in arrays])), lo, hi


def paired_diff_ci(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Difference mean(a) - mean(b) paired by item and seed: ``a[s][i]`` and ``b[s][i]`` are the same item i of seed s.

    Returns:
        (difference, low, high).

    Raises:
        ValueError: a and b do not cover the same items.
    """
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b, strict=True)):
        raise ValueError("paired comparison needs the same seeds and items on both sides")
    return seeds_bootstrap_ci(
        [np.asarray(x, dtype=float) - np.asarray(y, dtype=float) for x, y in zip(a, b, strict=True)],
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
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
) -> tuple[float, float, float]:
    """CKA and a bootstrap interval that resamples whole sequences (``groups[i]`` = sequence of token i)."""
    value = cka_from_grams(kx, ky)
    ids = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in ids]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = np.concatenate([members[j] for j in rng.integers(0, len(ids), size=len(ids))])
        stats.append(cka_from_grams(kx[np.ix_(idx, idx)], ky[np.ix_(idx, idx)]))
    lo, hi = _interval(np.asarray(stats), confidence)
    return value, lo, hi


def token_kl(base_logits, model_logits):
    """Per-position KL(base || model) in nats from two logit tensors of shape [..., vocab] (torch)."""
    import torch

    lp = torch.log_softmax(base_logits.float(), dim=-1)
    lq = torch.log_softmax(model_logits.float(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(dim=-1).clamp_min(0.0)
