"""The RPSFT regulariser: anchors, penalty, its gradient, and diagnostics.

For every regularised 2-D weight W (m x n) with pretrained value W0 = U S V^T and k < min(m, n):

    R(W) = || U_k^T W V_k - S_ref ||_F^2,   S_ref = U_k^T W0 V_k          (the top-k block, rotation included)
    dR/dW = 2 U_k (U_k^T W V_k - S_ref) V_k^T

and for k >= min(m, n) the block is the whole matrix: R(W) = ||W - W0||_F^2 (L2-to-init), named in the logs.
The training loss is ``mean response-token CE + lambda * sum_W R(W)``.

Differences from the authors' release (see README): anchors come from the eigenvectors of the small Gram matrix
(not a full SVD) and are cached on disk keyed by a hash of the weights and k; everything is fp32, so the penalty is
zero at step 0; S_ref is computed from the same U_k, V_k (no copy of W0 is kept unless k is full rank); the
gradient is added once per optimizer step instead of once per micro-batch; sharded parameters are refused loudly.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import xxhash
from safetensors import safe_open
from safetensors.torch import save_file

from stages.config import ConfigError
from stages.io import atomic_write

log = logging.getLogger(__name__)

ANCHOR_FORMAT_VERSION = 3


class RPSFTError(ConfigError):
    """RPSFT cannot run as configured (nothing to regularise, sharded parameters ...)."""


@dataclass
class Anchor:
    """Fixed reference of one matrix. ``full`` anchors keep W0; block anchors keep U_k, V_k and S_ref only."""

    name: str
    shape: tuple[int, int]
    k: int
    full: bool
    U: torch.Tensor | None = None  # (m, k) fp32
    V: torch.Tensor | None = None  # (n, k) fp32
    S_ref: torch.Tensor | None = None  # (k, k) fp32
    W0: torch.Tensor | None = None  # (m, n) fp32, full-rank fallback only
    s_top: float = 0.0  # largest singular value of W0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.U, self.V, self.S_ref, self.W0) if t is not None)


@dataclass
class Anchors:
    anchors: dict[str, Anchor] = field(default_factory=dict)
    k_spec: str = ""
    method: str = "gram"
    weights_hash: str = ""

    @property
    def full_rank(self) -> int:
        return sum(a.full for a in self.anchors.values())

    def nbytes(self) -> int:
        return sum(a.nbytes() for a in self.anchors.values())


def resolve_k(shape: tuple[int, int], k: int | None, k_fraction: float | None) -> int:
    """k for one matrix: absolute, or ``round(k_fraction * min(m, n))`` (at least 1). Capped at min(m, n)."""
    r = min(shape)
    if k is not None:
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        return min(k, r)
    if k_fraction is None or not (0 < k_fraction <= 1):
        raise ValueError(f"k_fraction must be in (0, 1], got {k_fraction}")
    return max(1, min(r, round(k_fraction * r)))


def select_matrices(
    named_params: Iterable[tuple[str, torch.nn.Parameter]], include: list[str], exclude: list[str]
) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable 2-D parameters whose name matches an include regex and no exclude regex. Tied weights count once."""
    inc = [re.compile(p) for p in include]
    exc = [re.compile(p) for p in exclude]
    seen: set[int] = set()
    out = []
    for name, p in named_params:
        if not p.requires_grad or p.ndim != 2:
            continue
        if id(p) in seen:
            continue
        if not any(r.search(name) for r in inc) or any(r.search(name) for r in exc):
            continue
        seen.add(id(p))
        out.append((name, p))
    return out


@torch.no_grad()
def top_k_factors(W: torch.Tensor, k: int, method: str = "gram", with_block: bool = False) -> tuple[torch.Tensor, ...]:
    """Top-k singular triplets of W in fp32: U_k (m, k), s_k (k,), V_k (n, k) [and the block U_k^T W V_k].

    ``gram`` takes the eigenvectors of the Gram matrix of the short side (min(m,n)^2 entries): the same flops as one
    product, a much smaller eigenproblem than the SVD, accurate to fp32 round-off for the leading k triplets (tested
    against an exact SVD). ``svd`` is the exact full SVD.

    With ``with_block`` the fourth output is ``U_k^T (W @ V_k)``, computed with exactly the operations that
    ``RPSFTRegularizer`` uses, so the penalty of W itself is exactly zero.
    """
    W = W.detach().float()
    m, n = W.shape
    if method == "svd":
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        U, s, V = U[:, :k].contiguous(), s[:k].contiguous(), Vh[:k].T.contiguous()
        return (U, s, V, U.T @ (W @ V)) if with_block else (U, s, V)
    tall = m >= n
    A = W if tall else W.T  # (M, N) with M >= N
    evals, evecs = torch.linalg.eigh(A.T @ A)  # ascending
    evecs_k = evecs[:, -k:].flip(1).contiguous()  # (N, k)
    s = evals[-k:].flip(0).clamp(min=0).sqrt()
    AV = A @ evecs_k  # (M, k) = U_k diag(s) in exact arithmetic
    # Orthonormalise AV (Cholesky QR: two BLAS-3 products, cheaper than Householder QR on tall matrices). Its
    # columns are orthogonal up to round-off already; this fixes their norms and the residual drift.
    gram_k = AV.T @ AV
    scale = s.clamp(min=s[0] * 1e-12 if s[0] > 0 else 1.0)
    try:
        L = torch.linalg.cholesky(gram_k)
        other = torch.linalg.solve_triangular(L, AV.T, upper=False).T
    except RuntimeError:  # rank-deficient: fall back to Householder QR
        other, r = torch.linalg.qr(AV / scale)
        other = other * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if tall:
        U, V = other.contiguous(), evecs_k
        block = U.T @ AV  # AV is W @ V_k, the same product the regulariser computes
    else:
        U, V = evecs_k, other.contiguous()
        block = U.T @ (W @ V) if with_block else None
    return (U, s, V, block) if with_block else (U, s, V)


def weights_hash(named: list[tuple[str, torch.Tensor]]) -> str:
    """Fast content hash of the regularised weights (names, shapes, dtypes, bytes): the anchor cache key."""
    h = xxhash.xxh3_128()
    for name, t in named:
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy())  # buffer protocol: no copy
    return h.hexdigest()


def compute_anchors(
    named: list[tuple[str, torch.Tensor]],
    k: int | None,
    k_fraction: float | None,
    method: str = "gram",
    cache_dir: Path | None = None,
) -> Anchors:
    """Anchors of every matrix in ``named``, from the cache when the weights and k match.

    Raises:
        RPSFTError: ``named`` is empty (nothing would be regularised).
    """
    if not named:
        raise RPSFTError(
            "RPSFT matched no 2-D trainable weight: check sft.rpsft.include / exclude. Under FSDP or ZeRO-3 the "
            "parameters are sharded and look 1-D; use DDP or ZeRO-2 for RPSFT."
        )
    k_spec = f"k={k}" if k is not None else f"k_fraction={k_fraction}"
    digest = weights_hash(named)
    path = None
    if cache_dir is not None:
        tag = re.sub(r"[^A-Za-z0-9._=-]", "_", k_spec)
        path = Path(cache_dir) / f"anchors-v{ANCHOR_FORMAT_VERSION}-{digest}-{tag}-{method}.safetensors"
        if path.is_file():
            try:
                loaded = load_anchors(path)
                if set(loaded.anchors) == {n for n, _ in named}:
                    log.info("RPSFT anchors: cache hit %s", path.name)
                    return loaded
            except Exception as e:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
                log.warning("RPSFT anchor cache %s unreadable (%s); recomputing", path, e)
    t0 = time.perf_counter()
    out = Anchors(k_spec=k_spec, method=method, weights_hash=digest)

    def one(item: tuple[str, torch.Tensor]) -> Anchor:
        name, W = item
        shape = (int(W.shape[0]), int(W.shape[1]))
        kk = resolve_k(shape, k, k_fraction)
        if kk >= min(shape):
            W0 = W.detach().float().clone()
            return Anchor(name, shape, kk, True, W0=W0, s_top=float(torch.linalg.matrix_norm(W0, ord=2)))
        # S_ref (k, k) is diag(s) up to round-off, computed with the operations of _residual: R(W0) is exactly 0.
        U, s, V, S_ref = top_k_factors(W, kk, method, with_block=True)
        return Anchor(name, shape, kk, False, U=U, V=V, S_ref=S_ref, s_top=float(s[0]))

    # One matrix per thread, one BLAS/LAPACK thread each: the eigensolver scales poorly with threads, so matrices
    # in parallel are faster (README "Measured numbers").
    threads = torch.get_num_threads()
    workers = max(1, min(threads, 8))
    if workers > 1:
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(one, named))
        finally:
            torch.set_num_threads(threads)
    else:
        results = [one(item) for item in named]
    out.anchors = {a.name: a for a in results}
    log.info(
        "RPSFT anchors: %d matrices (%d full-rank fallback: L2-to-init) in %.2f s (%s, %s)",
        len(out.anchors),
        out.full_rank,
        time.perf_counter() - t0,
        k_spec,
        method,
    )
    if path is not None:
        save_anchors(out, path)
    return out


def save_anchors(anchors: Anchors, path: Path) -> None:
    """Write anchors as safetensors (atomic rename)."""
    tensors: dict[str, torch.Tensor] = {}
    meta = {"k_spec": anchors.k_spec, "method": anchors.method, "weights_hash": anchors.weights_hash, "matrices": {}}
    for i, (name, a) in enumerate(anchors.anchors.items()):
        meta["matrices"][name] = {"i": i, "shape": list(a.shape), "k": a.k, "full": a.full, "s_top": a.s_top}
        for key in ("U", "V", "S_ref", "W0"):
            t = getattr(a, key)
            if t is not None:
                tensors[f"{i}.{key}"] = t.contiguous()
    # several ranks may write the same entry at once: each to its own temporary file, renamed atomically
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"sft2rl": json.dumps(meta)}))


def load_anchors(path: Path) -> Anchors:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["sft2rl"])
        keys = set(f.keys())
        out = Anchors(k_spec=meta["k_spec"], method=meta["method"], weights_hash=meta["weights_hash"])
        for name, m in meta["matrices"].items():
            i = m["i"]
            parts = {key: f.get_tensor(f"{i}.{key}") for key in ("U", "V", "S_ref", "W0") if f"{i}.{key}" in keys}
            out.anchors[name] = Anchor(name, tuple(m["shape"]), m["k"], m["full"], s_top=m["s_top"], **parts)
    return out


class RPSFTRegularizer:
    """lambda * sum_W R(W) over the anchored parameters, with a closed-form gradient.

    ``add_penalty_grad`` adds lambda * dR/dW to ``W.grad`` once per optimizer step (after the cross-entropy gradients
    of all micro-batches are accumulated, before clipping): the same update as adding lambda * R to every
    micro-batch loss of the release, without GA repeated penalty evaluations.

    Each matrix's block deviation D = U_k^T W V_k - S_ref is kept until the weights change: the trainer calls
    :meth:`weights_changed` after every optimizer step (fused AdamW updates weights without bumping torch's version
    counter), and the version counter catches the rest (a checkpoint loaded into the weights). The block computed
    after step t for the log is therefore the one step t+1's gradient uses: one block product per matrix and step,
    the floor.
    """

    def __init__(self, params: list[tuple[str, torch.nn.Parameter]], anchors: Anchors, lam: float):
        missing = [n for n, _ in params if n not in anchors.anchors]
        if missing:
            raise RPSFTError(f"no anchor for {missing[:3]}...: anchors were computed for another model")
        self.params = params
        self.anchors = anchors
        self.lam = float(lam)
        self._moved = False
        self._blocks: dict[str, tuple[tuple[int, int], torch.Tensor]] = {}  # name -> ((update, version), D)
        self._updates = 0
        # Blocks are kept between steps when k x k; the full-rank W - W0 of L2 (a second copy of the weights) is not,
        # and costs one subtraction when needed.
        self.keeps_blocks = any(not anchors.anchors[n].full for n, _ in params)
        for name, p in params:
            a = anchors.anchors[name]
            if tuple(p.shape) != a.shape:
                raise RPSFTError(
                    f"parameter {name} has shape {tuple(p.shape)} but its anchor {a.shape}: the weights are sharded "
                    "(FSDP / ZeRO-3) or belong to another model. RPSFT supports DDP and ZeRO-1/2; not sharded params."
                )

    @property
    def count(self) -> int:
        return len(self.params)

    def _to(self, device: torch.device) -> None:
        if self._moved:
            return
        for a in self.anchors.anchors.values():
            for key in ("U", "V", "S_ref", "W0"):
                t = getattr(a, key)
                if t is not None and t.device != device:
                    setattr(a, key, t.to(device))
        self._moved = True

    @staticmethod
    def _residual(a: Anchor, W: torch.Tensor) -> torch.Tensor:
        """The block deviation: U_k^T W V_k - S_ref (k, k), or W - W0 (m, n) for the full-rank fallback."""
        Wf = W.float()
        if a.full:
            return Wf - a.W0
        return a.U.T @ (Wf @ a.V) - a.S_ref

    def penalty_autograd(self) -> torch.Tensor:
        """lambda * sum R(W) as a differentiable tensor: the naive form of the release (one call per micro-batch)."""
        total = None
        for name, p in self.params:
            a = self.anchors.anchors[name]
            self._to(p.device)
            r = self._residual(a, p).pow(2).sum()
            total = r if total is None else total + r
        return self.lam * total

    def weights_changed(self) -> None:
        """The weights were updated (an optimizer step): every kept block is stale."""
        self._updates += 1

    def _block(self, name: str, a: Anchor, p: torch.Tensor) -> torch.Tensor:
        """D for ``p`` as it is now: the kept one while the weight is unchanged, else computed (and kept, unless
        full rank)."""
        if a.full:
            return self._residual(a, p)
        version = (self._updates, p._version)
        kept = self._blocks.get(name)
        if kept is not None and kept[0] == version:
            return kept[1]
        D = self._residual(a, p)
        self._blocks[name] = (version, D)
        return D

    @torch.no_grad()
    def penalty(self) -> float:
        """sum R(W) (without lambda)."""
        return self.stats()["penalty"]

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """sum R(W) (without lambda) and the block drift's mean and max, in one pass over the matrices."""
        total = 0.0
        drifts = []
        for name, p in self.params:
            a = self.anchors.anchors[name]
            self._to(p.device)
            D = self._block(name, a, p)
            total += float(D.pow(2).sum())
            ref = a.W0 if a.full else a.S_ref
            drifts.append(float(torch.linalg.matrix_norm(D) / torch.linalg.matrix_norm(ref).clamp(min=1e-12)))
        return {
            "penalty": total,
            "block_drift_mean": sum(drifts) / max(1, len(drifts)),
            "block_drift_max": max(drifts, default=0.0),
        }

    @torch.no_grad()
    def add_penalty_grad(self) -> dict[str, float]:
        """Add lambda * dR/dW to every ``W.grad``; return the penalty and block drift statistics."""
        total = 0.0
        drifts = []
        two_lam = 2.0 * self.lam
        for name, p in self.params:
            a = self.anchors.anchors[name]
            self._to(p.device)
            D = self._block(name, a, p)
            total += float(D.pow(2).sum())
            ref = a.W0 if a.full else a.S_ref
            drifts.append(float(torch.linalg.matrix_norm(D) / torch.linalg.matrix_norm(ref).clamp(min=1e-12)))
            if self.lam == 0.0:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if a.full:
                p.grad.add_(D.to(p.dtype), alpha=two_lam)
            elif p.grad.dtype == torch.float32:
                p.grad.addmm_(a.U @ D, a.V.T, alpha=two_lam)  # in place: no (m, n) temporary
            else:  # low-precision grads: fp32 math, one rounding
                p.grad.add_(((a.U @ D) @ a.V.T).mul_(two_lam).to(p.grad.dtype))
        return {
            "penalty": total,
            "block_drift_mean": sum(drifts) / max(1, len(drifts)),
            "block_drift_max": max(drifts, default=0.0),
        }

    @torch.no_grad()
    def block_drift(self) -> dict[str, float]:
        """Per matrix ||U_k^T W V_k - S_ref||_F / ||S_ref||_F (relative deviation of the preserved block)."""
        out = {}
        for name, p in self.params:
            a = self.anchors.anchors[name]
            self._to(p.device)
            D = self._block(name, a, p)
            ref = a.W0 if a.full else a.S_ref
            out[name] = float(torch.linalg.matrix_norm(D) / torch.linalg.matrix_norm(ref).clamp(min=1e-12))
        return out


def principal_angles_deg(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Principal angles (degrees, ascending) between the column spans of A and B (orthonormal columns), in float64.

    Small angles come from their sines, the singular values of ``B - A (A^T B)``: the arccos of cosines near 1 loses
    all precision there (fp32 ``arccos`` reads 0.005-0.04 degrees for identical subspaces). Large angles (> 45
    degrees) come from the cosines, which are accurate there.
    """
    A, B = A.double(), B.double()
    cosines = torch.linalg.svdvals(A.T @ B).clamp(0.0, 1.0)  # descending: angles ascending
    sines = torch.linalg.svdvals(B - A @ (A.T @ B)).clamp(0.0, 1.0).flip(0)  # ascending
    from_sin, from_cos = torch.arcsin(sines), torch.arccos(cosines)
    return torch.rad2deg(torch.where(from_sin < math.pi / 4, from_sin, from_cos))


def _top_subspaces_fp64(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All singular vectors and values of W in float64 (the short side's Gram eigenproblem for tall matrices)."""
    W = W.double()
    m, n = W.shape
    if max(m, n) > 4 * min(m, n):  # e.g. a (vocab, hidden) embedding: the Gram route is much cheaper
        tall = m >= n
        A = W if tall else W.T
        evals, evecs = torch.linalg.eigh(A.T @ A)
        s = evals.flip(0).clamp(min=0).sqrt()
        V_ = evecs.flip(1)
        U_, _ = torch.linalg.qr(A @ V_)
        return (U_, s, V_) if tall else (V_, s, U_)
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    return U, s, Vh.T


DEGENERATE_GAP = 1e-3  # s_k / s_(k+1) below 1 + this: the k-th direction is not defined by the matrix


def _stable_k(s: torch.Tensor, k: int) -> int:
    """The largest j <= k whose boundary s_j / s_(j+1) is not near-degenerate (directions across a near-degenerate
    boundary swap places under any perturbation, so their angles say nothing about rotation)."""
    j = k
    while 0 < j < s.numel() and s[j] > 0 and float(s[j - 1] / s[j]) < 1 + DEGENERATE_GAP:
        j -= 1
    return j


def base_weight_loader(model_path: str):
    """``name -> pretrained tensor or None``, read lazily from the safetensors files of ``model_path``."""
    files = sorted(Path(model_path).glob("*.safetensors")) if model_path and Path(model_path).is_dir() else []
    index = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for key in h.keys():  # noqa: SIM118 - safe_open handles have keys(), not iteration
                index[key] = f

    def load(name: str) -> torch.Tensor | None:
        for key in (name, name.removeprefix("model."), f"model.{name}"):
            if key in index:
                with safe_open(str(index[key]), framework="pt") as h:
                    return h.get_tensor(key)
        return None

    return load


@torch.no_grad()
def subspace_diagnostics(
    anchors: Anchors, final: dict[str, torch.Tensor], method: str = "gram", base=None
) -> dict[str, dict]:
    """Per matrix: principal angles (degrees, float64, through sines) between the pretrained and final top-k left and
    right singular subspaces, the relative drift of the top singular value and of the preserved block.

    ``base(name)`` gives the pretrained matrix (:func:`base_weight_loader`); both subspaces then come from float64
    decompositions, and unchanged weights read exactly 0. Without it the anchors' fp32 factors are used. When the
    pretrained spectrum is near-degenerate at k (s_k / s_(k+1) < 1 + 1e-3), the angles are reported for the stable
    top ``stable_k`` directions, and the boundary directions apart (``principal_angle_boundary_max_deg``).
    Full-rank anchors report only the relative change ||W - W0|| / ||W0|| (their subspace is the whole space).
    """
    out: dict[str, dict] = {}
    for name, a in anchors.anchors.items():
        if name not in final:
            continue
        W = final[name].detach().float().cpu()
        if a.full:
            W0 = a.W0.cpu()
            rel = float(torch.linalg.matrix_norm(W - W0) / torch.linalg.matrix_norm(W0).clamp(min=1e-12))
            out[name] = {"k": a.k, "full_rank": True, "relative_change": rel}
            continue
        W0 = base(name) if base is not None else None
        if W0 is not None and tuple(W0.shape) != tuple(W.shape):
            W0 = None
        U1, s1, V1 = _top_subspaces_fp64(W)
        if W0 is not None:
            W0 = W0.float()
            U0, s0, V0 = _top_subspaces_fp64(W0)
        else:
            U0, _ = torch.linalg.qr(a.U.cpu().double())
            V0, _ = torch.linalg.qr(a.V.cpu().double())
            s0 = s1
        k = a.k
        j = _stable_k(s0, k) if W0 is not None else k
        if W0 is not None and torch.equal(W, W0):  # unchanged: exactly 0, not round-off
            ang_u = ang_v = su = sv = torch.zeros(k, dtype=torch.float64)
        else:
            ang_u = principal_angles_deg(U0[:, :k], U1[:, :k])
            ang_v = principal_angles_deg(V0[:, :k], V1[:, :k])
            su, sv = ang_u, ang_v
            if 0 < j < k:  # the stable directions alone; the boundary ones are reported apart
                su = principal_angles_deg(U0[:, :j], U1[:, :j])
                sv = principal_angles_deg(V0[:, :j], V1[:, :j])
        block = a.U.cpu().T @ W @ a.V.cpu() - a.S_ref.cpu()
        out[name] = {
            "k": k,
            "full_rank": False,
            "stable_k": j,
            "boundary_gap": float(s0[k - 1] / s0[k]) if k < s0.numel() and s0[k] > 0 else None,
            "principal_angle_left_mean_deg": float(su.mean()),
            "principal_angle_left_max_deg": float(su.max()),
            "principal_angle_right_mean_deg": float(sv.mean()),
            "principal_angle_right_max_deg": float(sv.max()),
            "principal_angle_boundary_max_deg": float(torch.maximum(ang_u.max(), ang_v.max())),
            "top_singular_value_drift": float((s1[0] - a.s_top) / max(a.s_top, 1e-12)),
            "block_drift": float(torch.linalg.matrix_norm(block) / torch.linalg.matrix_norm(a.S_ref.cpu())),
        }
    return out


def summarize_diagnostics(per_matrix: dict[str, dict]) -> dict[str, float]:
    """Means over matrices (block anchors only for the angle statistics)."""
    block = [d for d in per_matrix.values() if not d["full_rank"]]
    if not block:
        return {"matrices": len(per_matrix)}

    def mean(key: str) -> float:
        vals = [d[key] for d in block]
        return float(sum(vals) / len(vals))

    return {
        "matrices": len(per_matrix),
        "degenerate_boundary_matrices": sum(1 for d in block if d.get("stable_k", d["k"]) < d["k"]),
        "principal_angle_left_mean_deg": mean("principal_angle_left_mean_deg"),
        "principal_angle_right_mean_deg": mean("principal_angle_right_mean_deg"),
        "principal_angle_max_deg": float(
            max(max(d["principal_angle_left_max_deg"], d["principal_angle_right_max_deg"]) for d in block)
        ),
        "top_singular_value_drift_mean_abs": float(sum(abs(d["top_singular_value_drift"]) for d in block) / len(block)),
        "block_drift_mean": mean("block_drift"),
    }
