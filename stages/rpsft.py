"""The RPSFT regulariser: anchors, penalty, its gradient, and diagnostics.

For every regularised 2-D weight W (m x n) with pretrained value W0 = U S V^T and k < min(m, n):

    R(W) = || U_k^T W V_k - S_ref ||_F^2,   S_ref = U_k^T W0 V_k          (the top-k block, rotation included)
    dR/dW = 2 U_k (U_k^T W V_k - S_ref) V_k^T

and for k >= min(m, n) the block is the whole matrix: R(W) = ||W - W0||_F^2 (L2-to-init), named in the logs.
The training loss is ``mean response-token CE + lambda * sum_W R(W)``.

Differences from the authors' release (see docs/rpsft.md): anchors come from the eigenvectors of the small Gram matrix
(not a full SVD) and are cached on disk keyed by a hash of the weights and k; everything is fp32, so the penalty is
zero at step 0; S_ref is computed from the same U_k, V_k (no copy of W0 is kept unless k is full rank); the
gradient is added once per optimizer step instead of once per micro-batch; row-sharded (FSDP2) parameters and
DeepSpeed ZeRO-1/2's fp32 master fragments (flat ranges) get the exact penalty from partial blocks and one all-reduce.

``precision: split_bf16`` computes the block's large product W V_k as three bf16 products with fp32 accumulation (W
= W_hi + W_lo and V_k = V_hi + V_lo in bf16, the W_lo V_lo term dropped): about 16 bits of W kept, so the block is
off by about 1e-5 of its size, far below the drift the penalty measures, and S_ref is computed the same way (the
penalty of W0 is zero where the blocks run where S_ref was computed, round-off elsewhere). On a GPU those products
run on the bf16 tensor cores instead of fp32 ones; on a CPU they are emulated in fp32 (the same numbers, no faster).
The gradient's product U_k D V_k^T is one bf16 product.
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
from stages.store import atomic_write

log = logging.getLogger(__name__)

# 4: S_ref in the regulariser's association ((U_k^T W0) V_k for more rows than columns) and with this process's
# threads (3: one thread per matrix, which rounds differently from the regulariser's products)
ANCHOR_FORMAT_VERSION = 4


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


PRECISIONS = ("fp32", "split_bf16")


@dataclass
class Anchors:
    anchors: dict[str, Anchor] = field(default_factory=dict)
    k_spec: str = ""
    method: str = "gram"
    weights_hash: str = ""
    precision: str = "fp32"  # how the block products are computed (S_ref here, the blocks in RPSFTRegularizer)

    @property
    def full_rank(self) -> int:
        return sum(a.full for a in self.anchors.values())

    def nbytes(self) -> int:
        return sum(a.nbytes() for a in self.anchors.values())


def split_bf16(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (fp32) as hi + lo, both bf16: hi the nearest bf16, lo the nearest bf16 to what hi leaves (about 16 bits
    of the mantissa together)."""
    t = t.float()
    hi = t.to(torch.bfloat16)
    return hi, (t - hi.float()).to(torch.bfloat16)


_NATIVE_BF16_MM = {"ok": True}  # false once torch refused a bf16 product with fp32 output on this device


def mm_bf16(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of bf16 matrices, accumulated and returned in fp32 (the tensor cores' bf16 product on a GPU; on a CPU the
    same numbers from an fp32 product, since a product of two bf16 values is exact in fp32)."""
    if a.is_cuda and _NATIVE_BF16_MM["ok"]:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError) as e:  # a torch or device without it: the same numbers, at fp32's speed
            if isinstance(e, torch.OutOfMemoryError):
                raise
            _NATIVE_BF16_MM["ok"] = False
            log.warning("bf16 products with fp32 output are not available here (%s); computing them in fp32", e)
    return a.float() @ b.float()


def times_v(W: torch.Tensor, V: torch.Tensor, precision: str, V_split=None) -> torch.Tensor:
    """W @ V_k (m, k) in fp32, the block's large product: one fp32 product, or, with ``split_bf16``, three bf16
    products of the hi/lo parts (``V_split``: V's parts, when the caller keeps them)."""
    if precision == "fp32":
        return W.to(V.dtype) @ V  # the anchors' precision: fp32
    W_hi, W_lo = split_bf16(W)
    V_hi, V_lo = V_split if V_split is not None else split_bf16(V)
    return mm_bf16(W_hi, V_hi) + mm_bf16(W_hi, V_lo) + mm_bf16(W_lo, V_hi)


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

    With ``with_block`` the fourth output is the block ``U_k^T W V_k`` from :func:`block_product`, exactly the
    operations of ``RPSFTRegularizer``'s fp32 blocks, so the penalty of W itself is exactly zero.
    """
    W = W.detach().float()
    m, n = W.shape
    if method == "svd":
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        U, s, V = U[:, :k].contiguous(), s[:k].contiguous(), Vh[:k].T.contiguous()
        return (U, s, V, block_product(U, W, V)) if with_block else (U, s, V)
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
    else:
        U, V = evecs_k, other.contiguous()
    block = None
    if with_block:  # the regulariser's own association; a square W's W @ V_k is AV, already computed
        block = U.T @ AV if m == n else block_product(U, W, V)
    return (U, s, V, block) if with_block else (U, s, V)


def weights_hash(named: list[tuple[str, torch.Tensor]]) -> str:
    """Fast content hash of the regularised weights (names, shapes, dtypes, bytes): the anchor cache key."""
    h = xxhash.xxh3_128()
    for name, t in named:
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy())  # buffer protocol: no copy
    return h.hexdigest()


def anchor_inputs(named: list[tuple[str, torch.Tensor]], model_path: str) -> list[tuple[str, torch.Tensor]]:
    """The matrices anchors are computed from: the loaded weights, or, where a process holds none yet (FSDP's
    rank-0-only loading leaves them on the meta device), the same tensors read from the checkpoint files, in the
    parameter's dtype (the same bytes, so the same anchor cache entry).

    Raises:
        RPSFTError: a weight is neither loaded nor in the checkpoint files.
    """
    if not any(p.is_meta for _, p in named):
        return named
    load = base_weight_loader(model_path)
    out = []
    for name, p in named:
        if p.is_meta:
            t = load(name)
            if t is None or tuple(t.shape) != tuple(p.shape):
                raise RPSFTError(f"{name} is not loaded in this process nor in the safetensors files of {model_path}")
            p = t.to(p.dtype)
        out.append((name, p))
    return out


def per_matrix(fn, items: list) -> list:
    """``[fn(x) for x in items]``, one matrix per thread with one BLAS/LAPACK thread each: eigensolvers and SVDs
    scale poorly with threads, so matrices in parallel are faster (docs/measured.md: the anchors 2.5 s against 3.6 s
    on 2 cores). Results in the order of ``items``; a LAPACK routine on one thread rounds differently from one on
    several (fp64 diagnostics differ by about 1e-9 relative)."""
    threads = torch.get_num_threads()
    workers = max(1, min(threads, 8))
    if workers == 1:
        return [fn(x) for x in items]
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)


def compute_anchors(
    named: list[tuple[str, torch.Tensor]],
    k: int | None,
    k_fraction: float | None,
    method: str = "gram",
    cache_dir: Path | None = None,
    precision: str = "fp32",
) -> Anchors:
    """Anchors of every matrix in ``named``, from the cache when the weights and k match. ``precision``: how S_ref's
    product is computed, as the regulariser will compute the blocks (:func:`times_v`).

    Raises:
        RPSFTError: ``named`` is empty (nothing would be regularised).
    """
    if not named:
        raise RPSFTError(
            "RPSFT matched no 2-D trainable weight: check sft.rpsft.include / exclude (the names and shapes are "
            "those of the model before any engine shards it)"
        )
    k_spec = f"k={k}" if k is not None else f"k_fraction={k_fraction}"
    digest = weights_hash(named)
    path = None
    if cache_dir is not None:
        tag = re.sub(r"[^A-Za-z0-9._=-]", "_", k_spec)
        tag += "" if precision == "fp32" else f"-{precision}"
        path = Path(cache_dir) / f"anchors-v{ANCHOR_FORMAT_VERSION}-{digest}-{tag}-{method}.safetensors"
        if path.is_file():
            try:
                loaded = load_anchors(path)
                same = (loaded.weights_hash, loaded.k_spec, loaded.method, loaded.precision) == (
                    digest,
                    k_spec,
                    method,
                    precision,
                )
                if same and set(loaded.anchors) == {n for n, _ in named}:
                    log.info("RPSFT anchors: cache hit %s", path.name)
                    return loaded
                # a file under this name made for other weights or settings (copied or renamed): never trusted
                log.warning("RPSFT anchor cache %s was made for other weights or settings; recomputing", path)
            except Exception as e:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
                log.warning("RPSFT anchor cache %s unreadable (%s); recomputing", path, e)
    t0 = time.perf_counter()
    if precision not in PRECISIONS:
        raise RPSFTError(f"unknown block precision {precision!r}: one of {', '.join(PRECISIONS)}")
    out = Anchors(k_spec=k_spec, method=method, weights_hash=digest, precision=precision)

    def one(item: tuple[str, torch.Tensor]) -> Anchor:
        name, W = item
        shape = (int(W.shape[0]), int(W.shape[1]))
        kk = resolve_k(shape, k, k_fraction)
        if kk >= min(shape):
            W0 = W.detach().float().clone()
            return Anchor(name, shape, kk, True, W0=W0, s_top=float(torch.linalg.matrix_norm(W0, ord=2)))
        U, s, V = top_k_factors(W, kk, method)
        return Anchor(name, shape, kk, False, U=U, V=V, S_ref=None, s_top=float(s[0]))

    results = per_matrix(one, named)
    # S_ref (k, k; diag(s) up to round-off) with the regulariser's own operations and this process's threads, not
    # per_matrix's one thread per matrix: a product's round-off depends on how many threads share it (91 of SmolLM2's
    # 211 blocks differed, and the penalty at step 0 read 1.4e-8 instead of 0), so R(W0) is exactly 0 where the
    # regulariser runs as the anchors were computed.
    for a, (_, W) in zip(results, named, strict=True):
        if not a.full:
            a.S_ref = partial_deviation(a, W.detach(), 0, precision)  # all rows: the block U_k^T W0 V_k
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
    meta = {
        "k_spec": anchors.k_spec,
        "method": anchors.method,
        "weights_hash": anchors.weights_hash,
        "precision": anchors.precision,
        "matrices": {},
    }
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
        out = Anchors(
            k_spec=meta["k_spec"],
            method=meta["method"],
            weights_hash=meta["weights_hash"],
            precision=meta.get("precision", "fp32"),
        )
        for name, m in meta["matrices"].items():
            i = m["i"]
            parts = {key: f.get_tensor(f"{i}.{key}") for key in ("U", "V", "S_ref", "W0") if f"{i}.{key}" in keys}
            out.anchors[name] = Anchor(name, tuple(m["shape"]), m["k"], m["full"], s_top=m["s_top"], **parts)
    return out


def block_product(U: torch.Tensor, W: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """U^T W V (k, k) in fp32, associated the cheaper way: (U^T W) V when W has more rows than columns (the (vocab,
    hidden) embedding, an MLP's up and gate projections), else U^T (W V). Both cost 2 m n k for the large product; the
    small one then costs 2 k^2 min(m, n) instead of 2 k^2 max(m, n) (on SmolLM2 at k = 25% the block and its gradient
    take 82 GFLOP a step instead of 91). Anchors' S_ref and the regulariser's blocks come from this one function, so
    the penalty of W0 itself is exactly zero."""
    if W.shape[0] > W.shape[1]:
        return (U.T @ W) @ V
    return U.T @ (W @ V)


def grad_factors(U: torch.Tensor, D: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A @ B = U D V^T, the (m, n) gradient direction of a block deviation D, associated the cheaper way:
    U (D V^T) when U has more rows than V, else (U D) V^T (see :func:`block_product`)."""
    if U.shape[0] > V.shape[0]:
        return U, D @ V.T
    return U @ D, V.T


def shard_rows(rows: int, world: int, rank: int) -> tuple[int, int]:
    """The rows of a ``rows``-row matrix that ``rank`` of ``world`` holds under row sharding (``Shard(0)``: FSDP2's
    ``torch.chunk`` split, ceil(rows / world) per rank, the last ranks short or empty)."""
    chunk = -(-rows // world)
    r0 = min(rank * chunk, rows)
    return r0, min(r0 + chunk, rows)


def partial_deviation(a: Anchor, W_rows: torch.Tensor, r0: int, precision: str = "fp32", V_split=None) -> torch.Tensor:
    """This shard's part of the deviation, from rows ``r0 : r0 + len(W_rows)`` of W.

    Block anchors: U_k[rows]^T W[rows] V_k (k x k); the sum of these over any split of W's rows is U_k^T W V_k, so
    one sum over the ranks gives the block. Full-rank anchors: W[rows] - W0[rows], this shard's rows of W - W0."""
    r1 = r0 + W_rows.shape[0]
    if a.full:
        return W_rows.to(a.W0.dtype) - a.W0[r0:r1]  # the anchors' precision: fp32
    if precision == "fp32":
        return block_product(a.U[r0:r1], W_rows.to(a.U.dtype), a.V)
    return a.U[r0:r1].T @ times_v(W_rows, a.V, precision, V_split)


def _local(t: torch.Tensor) -> torch.Tensor:
    """The part of a parameter (or gradient) this process holds: a DTensor's local shard, else the tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


_WRAPPERS = {"module", "_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"}


def _plain_name(name: str) -> str:
    """A parameter name without the parts engines add when they wrap a model (DDP's ``module.``, torch.compile's
    ``_orig_mod.``, activation checkpointing's ``_checkpoint_wrapped_module.``)."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPERS)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def agree(problem: str | None, names: list[str]) -> None:
    """Every process stops together, or none does: each one's problem (or None) and the matrices it matched are
    gathered; any problem, or ranks that matched different matrices, raises RPSFTError on every rank (naming the
    rank), so no rank is left waiting in a collective that the others never reach."""
    rank, world = _world()
    if world == 1:
        if problem:
            raise RPSFTError(problem)
        return
    import torch.distributed as dist

    digest = xxhash.xxh3_64("\n".join(names).encode()).hexdigest()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (problem, digest, len(names)))
    for r, (p, _, _) in enumerate(gathered):
        if p:
            raise RPSFTError(f"rank {r}: {p}")
    if len({d for _, d, _ in gathered}) > 1:
        counts = ", ".join(f"rank {r}: {n}" for r, (_, _, n) in enumerate(gathered))
        raise RPSFTError(
            f"the ranks matched different weight matrices ({counts}): every process must load the same model with the "
            "same sft.rpsft.include / exclude"
        )


@dataclass
class _Rows:
    """Where a regularised parameter lives: rows r0:r1 of the matrix in this process, and the process group that
    holds the other rows (None when this process has the whole matrix). Under DeepSpeed ZeRO-1/2 (``flat``) the
    weights the optimizer steps are fp32 fragments, flat ranges [start, start + numel) of the flattened matrix that
    may begin and end inside a row: r0:r1 are the rows the range touches."""

    r0: int
    r1: int
    group: object = None
    flat: tuple[int, int] | None = None
    zero3: bool = False  # the parameter itself is partitioned (DeepSpeed ZeRO-3): its gradient is the local partition


def flat_rows(start: int, numel: int, cols: int) -> tuple[int, int]:
    """The rows r0:r1 that elements [start, start + numel) of a flattened matrix with ``cols`` columns touch."""
    if numel == 0:
        return 0, 0
    return start // cols, -(-(start + numel) // cols)


def fragment_rows(frag: torch.Tensor, start: int, cols: int) -> tuple[torch.Tensor, int]:
    """A flat fragment (elements ``start : start + len(frag)`` of a matrix with ``cols`` columns) as the rows it
    touches, zero outside the fragment, and the first row's index: its partial block is then the rows' one."""
    r0, r1 = flat_rows(start, frag.numel(), cols)
    buf = frag.new_zeros((r1 - r0) * cols)
    off = start - r0 * cols
    buf[off : off + frag.numel()] = frag
    return buf.view(r1 - r0, cols), r0


def _zero3_view(name: str, p: torch.Tensor) -> _Rows:
    """The partition of a ZeRO-3 parameter this process holds: elements [rank * size, (rank + 1) * size) of the
    flattened matrix (``ds_tensor``'s size; the last rank's range is cut at the matrix's end, or empty)."""
    import torch.distributed as dist

    group = getattr(p, "ds_process_group", None) or dist.group.WORLD
    size = int(p.ds_tensor.ds_numel)
    start = dist.get_rank(group=group) * size
    numel = max(0, min(size, int(p.ds_numel) - start))
    r0, r1 = flat_rows(start, numel, int(p.ds_shape[1]))
    return _Rows(r0, r1, group, flat=(start, numel), zero3=True)


def _deepspeed_view(name: str, p: torch.Tensor) -> _Rows:
    """The fp32 fragment of ``p`` this process's DeepSpeed optimizer steps (``p._hp_mapping``: ZeRO-1/2 and
    DeepSpeed's bf16 optimizer), as a flat range; no fragment (None) when another rank holds all of ``p``."""
    import torch.distributed as dist

    mapping = p._hp_mapping
    group = dist.group.WORLD if dist.is_available() and dist.is_initialized() else None
    if mapping is None:
        return _Rows(0, 0, group, flat=(0, 0))
    addr = mapping.lp_fragment_address
    r0, r1 = flat_rows(addr.start, addr.numel, int(p.shape[1]))
    return _Rows(r0, r1, group, flat=(addr.start, addr.numel))


def _rows_of(name: str, p: torch.Tensor) -> _Rows:
    """The rows of ``p`` this process holds. Whole tensors and replicated DTensors hold all rows; FSDP2 parameters
    (``Shard(0)`` on a one-dimensional mesh) hold a contiguous block of rows. Anything else is refused."""
    if hasattr(p, "ds_id"):
        return _zero3_view(name, p)
    if hasattr(p, "_hp_mapping"):
        return _deepspeed_view(name, p)
    m = int(p.shape[0])
    placements = getattr(p, "placements", None)
    if placements is None:
        return _Rows(0, m)
    mesh = p.device_mesh
    kinds = [("shard0" if pl.is_shard(0) else "replicate" if pl.is_replicate() else repr(pl)) for pl in placements]
    if mesh.ndim != 1 or kinds[0] not in ("shard0", "replicate"):
        raise RPSFTError(
            f"parameter {name} is placed as {list(placements)} on a {mesh.ndim}-D device mesh: the RPSFT/L2 penalty "
            "supports whole matrices (DDP) and row sharding on one mesh dimension (FSDP2's Shard(0)); launch with "
            "configs/accelerate/fsdp.yaml or configs/accelerate/ddp.yaml"
        )
    if kinds[0] == "replicate":
        return _Rows(0, m)
    r0, r1 = shard_rows(m, mesh.size(), mesh.get_local_rank())
    held = int(_local(p).shape[0])
    if held != r1 - r0:
        raise RPSFTError(
            f"parameter {name}: this process holds {held} rows where row sharding of {m} rows over {mesh.size()} "
            f"ranks gives {r1 - r0}: an engine with another split; RPSFT cannot place its anchors"
        )
    return _Rows(r0, r1, mesh.get_group())


class RPSFTRegularizer:
    """lambda * sum_W R(W) over the anchored parameters, with a closed-form gradient.

    ``add_penalty_grad`` adds lambda * dR/dW to ``W.grad`` once per optimizer step (after the cross-entropy gradients
    of all micro-batches are accumulated, before clipping): the same update as adding lambda * R to every
    micro-batch loss of the release, without GA repeated penalty evaluations.

    Each matrix is seen through the rows this process holds: all of them under DDP, a block of rows under FSDP2
    (:meth:`bind` finds the parameters by name after the engine wrapped them). Every process computes its partial
    block U_k[rows]^T W[rows] V_k; one fp32 all-reduce of all partial blocks (and of the full-rank matrices' squared
    norms) gives every rank the exact D = U_k^T W V_k - S_ref, so every rank logs the exact penalty, and each adds
    2 lambda U_k[rows] D V_k^T to its own rows' gradient.

    The deviations are kept until the weights change: the trainer calls :meth:`weights_changed` after every optimizer
    step (fused AdamW updates weights without bumping torch's version counter), and on whole matrices the version
    counters catch the rest (a checkpoint loaded into the weights). The blocks computed after step t for the log are
    therefore the ones step t+1's gradient uses: one block product per matrix and step, the floor.
    """

    def __init__(self, params: list[tuple[str, torch.nn.Parameter]], anchors: Anchors, lam: float):
        problem = None
        missing = [n for n, _ in params if n not in anchors.anchors]
        if missing:
            problem = f"no anchor for {missing[:3]}...: anchors were computed for another model"
        else:
            for name, p in params:
                a = anchors.anchors[name]
                if tuple(p.shape) != a.shape:
                    problem = (
                        f"parameter {name} has shape {tuple(p.shape)} but its anchor {a.shape}: the anchors were "
                        "computed for another model"
                    )
                    break
        agree(problem, [n for n, _ in params])
        self.params = params
        self.anchors = anchors
        self.lam = float(lam)
        self._moved = False
        self._rows = {n: _Rows(0, int(p.shape[0])) for n, p in params}
        self.group = None  # the process group of sharded parameters (one all-reduce per block computation)
        self._kept: tuple[object, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self._updates = 0
        # Blocks are kept between steps when k x k; the full-rank W - W0 of L2 (a second copy of the weights) is not,
        # and costs one subtraction when needed.
        self.keeps_blocks = any(not anchors.anchors[n].full for n, _ in params)
        self.precision = anchors.precision  # the products S_ref was computed with (``split_bf16``: V_k's parts kept)
        self._v_split: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ref_norm = {
            n: float(torch.linalg.matrix_norm(a.W0 if a.full else a.S_ref).clamp(min=1e-12))
            for n, a in ((n, anchors.anchors[n]) for n, _ in params)
        }

    @property
    def count(self) -> int:
        return len(self.params)

    @property
    def sharded(self) -> bool:
        return self.group is not None

    def bind(self, model: torch.nn.Module) -> None:
        """Use the parameters of ``model`` as the engine wrapped it (found by name: FSDP2 replaces each parameter by a
        sharded one). Every rank must find every matrix with its anchor's shape and a supported placement, or every
        rank stops (:func:`agree`)."""
        named = list(model.named_parameters())
        found = {_plain_name(n): p for n, p in named}
        found.update(named)  # a name as it was wins over a name with wrapper parts taken out
        problem = None
        params, rows, groups = [], {}, set()
        for name, _ in self.params:
            p = found.get(name)
            if p is None:
                problem = f"parameter {name} is not in the model the engine wrapped: anchors of another model"
                break
            shape = tuple(getattr(p, "ds_shape", p.shape))  # ZeRO-3: the parameter reads empty outside forward
            if shape != self.anchors.anchors[name].shape:
                problem = f"parameter {name} has shape {shape}, its anchor {self.anchors.anchors[name].shape}"
                break
            try:
                rows[name] = _rows_of(name, p)
            except RPSFTError as e:
                problem = str(e)
                break
            if rows[name].group is not None:
                groups.add(rows[name].group)
            params.append((name, p))
        if problem is None and len(groups) > 1:
            problem = "the regularised matrices are sharded over different process groups; RPSFT needs one"
        agree(problem, [n for n, _ in self.params])
        self.params, self._rows = params, rows
        self.group = next(iter(groups), None)
        self._moved = False
        self.weights_changed()

    def _to(self, device: torch.device) -> None:
        if self._moved:
            return
        for a in self.anchors.anchors.values():
            for key in ("U", "V", "S_ref", "W0"):
                t = getattr(a, key)
                if t is not None and t.device != device:
                    setattr(a, key, t.to(device))
        if self.precision != "fp32":
            self._v_split = {n: split_bf16(a.V) for n, a in self.anchors.anchors.items() if not a.full}
        self._moved = True

    @staticmethod
    def _residual(a: Anchor, W: torch.Tensor) -> torch.Tensor:
        """The block deviation: U_k^T W V_k - S_ref (k, k), or W - W0 (m, n) for the full-rank fallback (fp32
        products: the per-micro-batch form is for comparison with the release)."""
        Wf = W.float()
        if a.full:
            return Wf - a.W0
        return block_product(a.U, Wf, a.V) - a.S_ref

    def penalty_autograd(self) -> torch.Tensor:
        """lambda * sum R(W) as a differentiable tensor: the naive form of the release (one call per micro-batch).
        Whole matrices only (the trainer refuses this mode under FSDP)."""
        if self.sharded:
            raise RPSFTError("sft.rpsft.mode=per_micro_batch needs whole matrices; under FSDP use mode=per_step")
        if self.precision != "fp32":
            raise RPSFTError("sft.rpsft.precision=split_bf16 needs sft.rpsft.mode=per_step")
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

    def _version(self) -> object:
        if self.sharded:  # the same on every rank (a rank holding no rows of a matrix sees no version bump)
            return self._updates
        return (self._updates, tuple(p._version for _, p in self.params))

    def _deviations(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(D of every block anchor (k x k, complete), ||W - W0||_F^2 of every full-rank anchor), for the weights as
        they are now: kept while they are unchanged, else computed with one all-reduce over the shards."""
        version = self._version()
        if self._kept is not None and self._kept[0] == version:
            return self._kept[1], self._kept[2]
        parts: dict[str, torch.Tensor] = {}
        for name, p in self.params:
            a = self.anchors.anchors[name]
            rows = self._rows[name]
            self._to(p.device)
            if rows.flat is not None:
                parts[name] = self._fragment_part(a, name, p, rows)
                continue
            W = _local(p)
            part = partial_deviation(a, W.detach(), rows.r0, self.precision, self._v_split.get(name))
            parts[name] = part.pow(2).sum().reshape(1) if a.full else part
        if self.group is not None:
            import torch.distributed as dist

            flat = torch.cat([t.reshape(-1) for t in parts.values()])
            dist.all_reduce(flat, group=self.group)
            at = 0
            for name, t in parts.items():
                parts[name] = flat[at : at + t.numel()].view_as(t)
                at += t.numel()
        blocks, squares = {}, {}
        for name, _ in self.params:
            a = self.anchors.anchors[name]
            if a.full:
                squares[name] = parts[name][0]
            else:
                blocks[name] = parts[name] - a.S_ref
                squares[name] = blocks[name].pow(2).sum()
        self._kept = (version, blocks, squares) if self.keeps_blocks else None
        return blocks, squares

    def _fragment_part(self, a: Anchor, name: str, p: torch.Tensor, rows: _Rows) -> torch.Tensor:
        """This process's part of a matrix's deviation under DeepSpeed, from the fp32 weights its optimizer steps
        (not the low-precision copy the forward uses): the partial block of the fragment's rows, or, full rank, the
        fragment's squared distance to W0."""
        start, numel = rows.flat
        if numel == 0:
            return torch.zeros((1,) if a.full else (a.k, a.k), dtype=torch.float32, device=p.device)
        if rows.zero3:
            frag = p._z3_optimizer.get_local_fp32_param(p).detach()[:numel]
        else:
            frag = p._hp_mapping.hp_fragment.detach()
        frag = frag.to(device=p.device, dtype=torch.float32)
        if a.full:
            return (frag - a.W0.reshape(-1)[start : start + numel]).pow(2).sum().reshape(1)
        W, r0 = fragment_rows(frag, start, a.shape[1])
        return partial_deviation(a, W, r0, self.precision, self._v_split.get(name))

    def _summary(self, squares: dict[str, torch.Tensor]) -> dict[str, float]:
        values = {n: float(s) for n, s in squares.items()}
        drifts = [math.sqrt(max(v, 0.0)) / self._ref_norm[n] for n, v in values.items()]
        return {
            "penalty": sum(values.values()),
            "block_drift_mean": sum(drifts) / max(1, len(drifts)),
            "block_drift_max": max(drifts, default=0.0),
        }

    @torch.no_grad()
    def penalty(self) -> float:
        """sum R(W) (without lambda)."""
        return self.stats()["penalty"]

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """sum R(W) (without lambda) and the block drift's mean and max, in one pass over the matrices (a collective
        under FSDP: every rank calls it at the same point)."""
        return self._summary(self._deviations()[1])

    @torch.no_grad()
    def add_penalty_grad(self) -> dict[str, float]:
        """Add lambda * dR/dW to the gradient of the rows this process holds; return the penalty and block drift
        statistics."""
        if any(r.flat is not None and not r.zero3 for r in self._rows.values()):
            raise RPSFTError("under DeepSpeed ZeRO-1/2 the penalty's gradient goes through the loss: use penalty_term")
        blocks, squares = self._deviations()
        two_lam = 2.0 * self.lam
        if self.lam != 0.0:
            for name, p in self.params:
                a = self.anchors.anchors[name]
                rows = self._rows[name]
                if rows.r1 == rows.r0:  # this rank holds no row of the matrix
                    continue
                if rows.zero3:
                    self._add_zero3_grad(a, name, p, rows, blocks.get(name), two_lam)
                    continue
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                g = _local(p.grad)
                if a.full:
                    g.add_(partial_deviation(a, _local(p).detach(), rows.r0).to(g.dtype), alpha=two_lam)
                    continue
                U = a.U[rows.r0 : rows.r1]
                if self.precision == "split_bf16":  # one bf16 product (fp32 accumulation); D itself is exact
                    UD, Vt = (U @ blocks[name]).to(torch.bfloat16), self._v_split[name][0].T
                    rows = max(1, (1 << 26) // max(1, Vt.shape[1]))  # fp32 temporaries of at most 256 MiB
                    for r in range(0, UD.shape[0], rows):
                        g[r : r + rows].add_(mm_bf16(UD[r : r + rows], Vt).mul_(two_lam).to(g.dtype))
                elif g.dtype == torch.float32:
                    g.addmm_(*grad_factors(U, blocks[name], a.V), alpha=two_lam)  # in place: no (m, n) temporary
                else:  # low-precision grads: fp32 math, one rounding
                    A, B = grad_factors(U, blocks[name], a.V)
                    g.add_((A @ B).mul_(two_lam).to(g.dtype))
        return self._summary(squares)

    def _add_zero3_grad(self, a: Anchor, name: str, p, rows: _Rows, D, two_lam: float) -> None:
        """ZeRO-3: add lambda dR/dW to this rank's fp32 gradient partition (between the engine's backward and its
        step, times the loss scale the partition's gradients carry), computed for the rows the partition touches
        only."""
        start, numel = rows.flat
        if a.full:
            frag = p._z3_optimizer.get_local_fp32_param(p).detach()[:numel].float()
            part = (frag - a.W0.reshape(-1)[start : start + numel]).mul_(two_lam)
        else:
            A, B = grad_factors(a.U[rows.r0 : rows.r1], D, a.V)
            G = A @ B
            off = start - rows.r0 * a.shape[1]
            part = G.reshape(-1)[off : off + numel].mul_(two_lam)
        opt = p._z3_optimizer
        grad = opt.get_local_fp32_grad_for_param(p).clone()
        # the partitions hold loss-scaled gradients until the step unscales them (fp16; 1 otherwise)
        grad[:numel] += part.to(grad.device) * float(getattr(opt, "loss_scale", 1.0))
        p._z3_optimizer.set_local_grad_for_param(grad, p)

    def penalty_term(self, scale: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        """For engines that step the optimizer inside ``backward`` (DeepSpeed under accelerate): a zero-valued term to
        add to the loss of an optimizer step's last micro-batch, whose backward adds ``scale * lambda * dR/dW`` to
        every regularised parameter's gradient, so the engine reduces, clips and steps it with the rest; and the
        penalty statistics before the step. ``scale`` undoes what the engine divides that loss by (gradient
        accumulation); any loss scaling reaches the term through its backward. Parameters must be whole (ZeRO-1/2:
        the fragments only give D, one all-reduce). One matrix's gradient exists at a time."""
        blocks, squares = self._deviations()
        stats = self._summary(squares)
        term = None
        if self.lam != 0.0:
            for name, p in self.params:
                t = _PenaltyGrad.apply(p, self, name, blocks.get(name), self.lam * scale)
                term = t if term is None else term + t
        if term is None:
            term = torch.zeros((), device=self.params[0][1].device if self.params else "cpu")
        return term, stats

    def whole_grad(self, name: str, p: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
        """dR/dW of a whole matrix (fp32): 2 U_k D V_k^T (one bf16 product with ``split_bf16``), or 2 (W - W0).

        W - W0 under DeepSpeed ZeRO-1/2 comes from this rank's fp32 fragment, not from the low-precision copy the
        forward uses (bf16 rounding of W is about the size of the drift): the fragment's elements carry world times
        their gradient and the others zero, so the engine's average over ranks leaves each element's own value."""
        a = self.anchors.anchors[name]
        rows = self._rows.get(name)
        if a.full and rows is not None and rows.flat is not None and not rows.zero3:
            import torch.distributed as dist

            start, numel = rows.flat
            g = torch.zeros(a.W0.numel(), dtype=torch.float32, device=a.W0.device)
            if numel:
                frag = p._hp_mapping.hp_fragment.detach().to(device=g.device, dtype=torch.float32)
                world = dist.get_world_size(group=rows.group) if rows.group is not None else 1
                g[start : start + numel] = (frag - a.W0.reshape(-1)[start : start + numel]) * (2.0 * world)
            return g.view(a.shape)
        if a.full:
            return 2.0 * (p.detach().float() - a.W0)
        if self.precision == "split_bf16":
            return mm_bf16((a.U @ D).to(torch.bfloat16), self._v_split[name][0].T).mul_(2.0)
        A, B = grad_factors(a.U, D, a.V)
        return (A @ B).mul_(2.0)

    @torch.no_grad()
    def block_drift(self) -> dict[str, float]:
        """Per matrix ||U_k^T W V_k - S_ref||_F / ||S_ref||_F (relative deviation of the preserved block)."""
        squares = self._deviations()[1]
        return {n: math.sqrt(max(float(s), 0.0)) / self._ref_norm[n] for n, s in squares.items()}


class _PenaltyGrad(torch.autograd.Function):
    """A zero in the loss whose backward is the penalty's gradient for one matrix (see
    :meth:`RPSFTRegularizer.penalty_term`): the block was computed before, so the forward does no product."""

    @staticmethod
    def forward(ctx, p, reg, name, D, coeff):  # noqa: ANN001
        ctx.reg, ctx.name, ctx.D, ctx.coeff = reg, name, D, coeff
        ctx.save_for_backward(p)
        return torch.zeros((), dtype=torch.float32, device=p.device)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001
        (p,) = ctx.saved_tensors
        g = ctx.reg.whole_grad(ctx.name, p, ctx.D)
        g.mul_(ctx.coeff * float(grad_out))  # coeff: lambda times the scale the engine divides the loss by
        return g.to(p.dtype), None, None, None, None


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


def _top_subspaces_fp64(W: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_k, all singular values, V_k) of W in float64, from the eigenproblem of the short side's Gram matrix and one
    thin QR of the top k directions: the leading subspaces agree with a full float64 SVD's to about 1e-11 degrees
    (their round-off grows as (s_1 / s_i)^2, far below anything the diagnostics report), at about 0.4 to 0.65 of the
    SVD's time on SmolLM2's shapes, since neither the tail's vectors nor a wide matrix's SVD are computed."""
    W = W.double()
    m, n = W.shape
    tall = m >= n
    A = W if tall else W.T
    evals, evecs = torch.linalg.eigh(A.T @ A)  # ascending
    s = evals.flip(0).clamp(min=0).sqrt()
    V_ = evecs[:, -k:].flip(1)
    U_, _ = torch.linalg.qr(A @ V_)  # columns s_i u_i: orthonormalised (their span is all the angles read)
    return (U_, s, V_) if tall else (V_, s, U_)


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

    def one(name: str, a: Anchor) -> dict:
        W = final[name].detach().float().cpu()
        if a.full:
            W0 = a.W0.cpu()
            rel = float(torch.linalg.matrix_norm(W - W0) / torch.linalg.matrix_norm(W0).clamp(min=1e-12))
            return {"k": a.k, "full_rank": True, "relative_change": rel}
        W0 = base(name) if base is not None else None
        if W0 is not None and tuple(W0.shape) != tuple(W.shape):
            W0 = None
        U1, s1, V1 = _top_subspaces_fp64(W, a.k)
        if W0 is not None:
            W0 = W0.float()
            U0, s0, V0 = _top_subspaces_fp64(W0, a.k)
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
        block = block_product(a.U.cpu(), W, a.V.cpu()) - a.S_ref.cpu()
        return {
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

    todo = [(name, a) for name, a in anchors.anchors.items() if name in final]
    results = per_matrix(lambda item: one(*item), todo)
    return {name: r for (name, _), r in zip(todo, results, strict=True)}


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
