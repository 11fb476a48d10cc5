"""The RPSFT regulariser's maths, with the hand-derived expectations next to each assertion."""

from __future__ import annotations

import math

import pytest
import torch

from stages.rpsft import (
    RPSFTError,
    RPSFTRegularizer,
    block_product,
    compute_anchors,
    grad_factors,
    principal_angles_deg,
    resolve_k,
    select_matrices,
    subspace_diagnostics,
    summarize_diagnostics,
    top_k_factors,
)


def spectrum_matrix(m: int, n: int, s: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W = U diag(s) V^T with random orthonormal U (m x r), V (n x r)."""
    g = torch.Generator().manual_seed(seed)
    r = s.numel()
    U, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    return (U * s.double()) @ V.T, U, V


class Toy(torch.nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor]):
        super().__init__()
        for name, w in weights.items():
            self.register_parameter(name, torch.nn.Parameter(w.float().clone()))
        self.bias = torch.nn.Parameter(torch.zeros(3))  # 1-D: never regularised


def make_reg(weights: dict[str, torch.Tensor], k=None, k_fraction=None, lam=1.0):
    model = Toy(weights)
    named = select_matrices(model.named_parameters(), [".*"], [])
    anchors = compute_anchors(named, k, k_fraction)
    return model, RPSFTRegularizer(named, anchors, lam), anchors


@pytest.mark.parametrize("shape", [(120, 40), (40, 120)])
def test_gram_anchors_match_exact_svd(shape):
    m, n = shape
    # Well separated spectrum: the top-8 subspace is well defined, so the subspaces themselves can be compared.
    s = torch.cat([torch.linspace(10, 5, 8), torch.linspace(1.0, 0.1, 32)])
    W, U, V = spectrum_matrix(m, n, s)
    Ug, sg, Vg = top_k_factors(W.float(), 8, "gram")
    assert torch.allclose(sg.double(), s[:8].double(), rtol=1e-5)
    # Principal angles between the computed and the exact subspaces: cosines all 1 (to fp32 round-off).
    cos_u = torch.linalg.svdvals(Ug.double().T @ U[:, :8])
    cos_v = torch.linalg.svdvals(Vg.double().T @ V[:, :8])
    assert cos_u.min() > 1 - 1e-5 and cos_v.min() > 1 - 1e-5
    # Orthonormal columns.
    assert torch.allclose(Ug.T @ Ug, torch.eye(8), atol=1e-5)
    assert torch.allclose(Vg.T @ Vg, torch.eye(8), atol=1e-5)


def test_gram_singular_values_on_a_generic_matrix():
    W = torch.randn(300, 90, generator=torch.Generator().manual_seed(3))
    exact = torch.linalg.svdvals(W.double())[:22]
    _, s, _ = top_k_factors(W, 22, "gram")
    assert torch.allclose(s.double(), exact, rtol=1e-4)


def test_resolve_k():
    assert resolve_k((576, 576), None, 0.25) == 144
    assert resolve_k((192, 576), None, 0.25) == 48
    assert resolve_k((10, 3), None, 0.01) == 1  # at least 1
    assert resolve_k((10, 30), 768, None) == 10  # capped at min(m, n): full-rank fallback
    with pytest.raises(ValueError):
        resolve_k((4, 4), 0, None)
    with pytest.raises(ValueError):
        resolve_k((4, 4), None, 1.5)


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize(("m", "n"), [(30, 20), (20, 30), (20, 20)])  # each association of the block product
def test_penalty_zero_at_start_positive_in_block_zero_in_tail_and_cross(m, n, method):
    k = 5
    s = torch.linspace(9, 1, min(m, n))
    W0, U, V = spectrum_matrix(m, n, s)
    model = Toy({"w": W0})
    named = select_matrices(model.named_parameters(), [".*"], [])
    anchors = compute_anchors(named, k, None, method)
    reg = RPSFTRegularizer(named, anchors, 1.0)
    a = anchors.anchors["w"]
    assert a.k == k and not a.full
    assert reg.penalty() == 0.0  # exactly: S_ref is computed with the same operations as the residual

    Uk, Vk = U[:, :k], V[:, :k]
    Ut, Vt = U[:, k:], V[:, k:]
    E = torch.randn(k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.no_grad():
        # Inside the top-k block: R = ||U_k^T (U_k E V_k^T) V_k||^2 = ||E||_F^2.
        model.w.copy_((W0 + Uk @ E @ Vk.T).float())
    assert reg.penalty() == pytest.approx(float((E**2).sum()), rel=1e-3)

    t = min(m, n) - k  # the tail has rank min(m, n) - k = 15
    Et = torch.randn(t, t, dtype=torch.float64) * 0.5
    Ec = torch.randn(k, t, dtype=torch.float64) * 0.5
    Ec2 = torch.randn(t, k, dtype=torch.float64) * 0.5
    for delta in (Ut @ Et @ Vt.T, Uk @ Ec @ Vt.T, Ut @ Ec2 @ Vk.T):
        with torch.no_grad():
            model.w.copy_((W0 + delta).float())
        # Tail and cross blocks are free: U_k^T delta V_k = 0 (to fp32 round-off of a unit-norm-ish matrix).
        assert reg.penalty() < 1e-8


def test_penalty_is_exactly_zero_at_start_with_the_threads_the_regulariser_uses():
    """Anchors are computed one matrix per thread (per_matrix); S_ref must come from the products the regulariser
    computes with the process's threads, or SmolLM2's penalty at step 0 reads 1.4e-8 instead of 0 (a threaded
    product rounds differently at these sizes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        weights = {"up": torch.randn(1536, 576, generator=g) * 0.02, "down": torch.randn(576, 1536, generator=g) * 0.02}
        _, reg, anchors = make_reg(weights, k_fraction=0.25)
        assert all(not a.full for a in anchors.anchors.values())
        assert reg.penalty() == 0.0
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("m", "n"), [(48, 12), (12, 48), (20, 20)])
def test_block_and_gradient_products_take_the_cheaper_association(m, n):
    """U^T W V and U D V^T each cost 2 m n k for the large product; the small one costs 2 k^2 min(m, n) with the
    association these functions pick, against 2 k^2 max(m, n) with the other (a tall embedding pays the difference on
    every step). The values equal the fp64 product to fp32 round-off."""
    from torch.utils.flop_counter import FlopCounterMode

    k = 4
    g = torch.Generator().manual_seed(0)
    W, D = torch.randn(m, n, generator=g), torch.randn(k, k, generator=g)
    U = torch.linalg.qr(torch.randn(m, k, generator=g))[0]
    V = torch.linalg.qr(torch.randn(n, k, generator=g))[0]
    with FlopCounterMode(display=False) as counter:
        block = block_product(U, W, V)
    assert counter.get_total_flops() == 2 * m * n * k + 2 * k * k * min(m, n)
    assert torch.allclose(block.double(), U.double().T @ W.double() @ V.double(), atol=1e-5)
    with FlopCounterMode(display=False) as counter:
        A, B = grad_factors(U, D, V)
        G = A @ B
    assert counter.get_total_flops() == 2 * m * n * k + 2 * k * k * min(m, n)
    assert torch.allclose(G.double(), U.double() @ D.double() @ V.double().T, atol=1e-5)


def test_penalty_gradient_matches_autograd_and_closed_form():
    torch.manual_seed(0)
    weights = {"a": torch.randn(24, 16), "b": torch.randn(16, 40)}
    model, reg, anchors = make_reg(weights, k_fraction=0.25, lam=0.7)
    with torch.no_grad():
        for p in (model.a, model.b):
            p.add_(0.05 * torch.randn_like(p))
    pen = reg.penalty_autograd()
    pen.backward()
    auto = {n: p.grad.clone() for n, p in (("a", model.a), ("b", model.b))}
    for p in model.parameters():
        p.grad = None
    stats = reg.add_penalty_grad()
    assert stats["penalty"] * 0.7 == pytest.approx(float(pen.detach()), rel=1e-5)
    for name, p in (("a", model.a), ("b", model.b)):
        assert torch.allclose(p.grad, auto[name], rtol=1e-4, atol=1e-6)
        # dR/dW = 2 lambda U_k (U_k^T W V_k - S_ref) V_k^T
        an = anchors.anchors[name]
        closed = 2 * 0.7 * an.U @ (an.U.T @ p.detach() @ an.V - an.S_ref) @ an.V.T
        assert torch.allclose(p.grad, closed, rtol=1e-4, atol=1e-6)
        assert p.grad.abs().max() > 0
    assert model.bias.grad is None  # 1-D parameters are not regularised


@pytest.mark.parametrize("fused", [False, True])  # fused AdamW does not bump the weights' version counter
def test_a_kept_block_is_reused_until_the_weight_changes_and_never_after(fused, monkeypatch):
    import stages.rpsft as rpsft_mod

    torch.manual_seed(1)
    model, reg, anchors = make_reg({"a": torch.randn(24, 16)}, k_fraction=0.25, lam=1.0)
    opt = torch.optim.AdamW([model.a], lr=0.05, fused=fused)
    calls = []
    real = reg._residual
    partial = rpsft_mod.partial_deviation
    monkeypatch.setattr(rpsft_mod, "partial_deviation", lambda *args: calls.append(1) or partial(*args))
    for _ in range(3):
        model.a.grad = torch.randn_like(model.a)
        before = reg.add_penalty_grad()["penalty"]
        fresh = float(real(anchors.anchors["a"], model.a.detach()).pow(2).sum())
        assert before == pytest.approx(fresh, rel=1e-6)  # the block the gradient used is the current weight's
        opt.step()
        reg.weights_changed()  # what the trainer's optimizer-step callback calls
        after = reg.stats()["penalty"]  # the log's pass after the step ...
        assert after == pytest.approx(float(real(anchors.anchors["a"], model.a.detach()).pow(2).sum()), rel=1e-6)
        assert reg.penalty() == after  # ... read again without a new product
    assert len(calls) == 3 + 1  # one block product per step, and one for the first step's gradient
    with torch.no_grad():
        model.a.copy_(torch.randn_like(model.a))  # e.g. a checkpoint loaded into the weights
    assert reg.penalty() == pytest.approx(float(real(anchors.anchors["a"], model.a.detach()).pow(2).sum()), rel=1e-6)


def test_full_rank_fallback_is_l2_to_init():
    W0 = torch.randn(6, 4)
    model, reg, anchors = make_reg({"w": W0}, k=4)  # k >= min(m, n)
    assert anchors.full_rank == 1 and anchors.anchors["w"].full
    delta = torch.randn(6, 4)
    with torch.no_grad():
        model.w.add_(delta)
    assert reg.penalty() == pytest.approx(float((delta**2).sum()), rel=1e-5)


def test_select_matrices_tied_once_and_patterns():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=True)
    head.weight = emb.weight  # tied
    model = torch.nn.ModuleDict({"embed": emb, "head": head, "proj": torch.nn.Linear(4, 4)})
    names = [n for n, _ in select_matrices(model.named_parameters(remove_duplicate=False), [".*"], [])]
    assert names == ["embed.weight", "proj.weight"]  # tied weight once, biases (1-D) never
    names = [n for n, _ in select_matrices(model.named_parameters(), [".*"], ["embed"])]
    assert names == ["proj.weight"]
    with pytest.raises(RPSFTError, match="matched no 2-D"):
        compute_anchors([], None, 0.5)


def test_anchor_cache_hit_and_key(tmp_path):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(30, 12))
    first = compute_anchors([("w", p)], None, 0.5, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    again = compute_anchors([("w", p)], None, 0.5, cache_dir=tmp_path)
    assert torch.equal(first.anchors["w"].U, again.anchors["w"].U)
    with torch.no_grad():
        p.add_(1.0)
    compute_anchors([("w", p)], None, 0.5, cache_dir=tmp_path)  # other weights: another key
    compute_anchors([("w", p)], 3, None, cache_dir=tmp_path)  # other k: another key
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_an_anchor_cache_file_made_for_other_weights_is_never_used(tmp_path, caplog):
    """A cache entry copied or renamed onto another key (the same matrix names, other weights) is recomputed."""
    import shutil

    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(30, 12)), torch.nn.Parameter(torch.randn(30, 12))
    for_a = compute_anchors([("w", a)], None, 0.5, cache_dir=tmp_path / "a")
    for_b = compute_anchors([("w", b)], None, 0.5, cache_dir=tmp_path / "b")
    (file_a,), (file_b,) = (list((tmp_path / d).glob("*.safetensors")) for d in ("a", "b"))
    shutil.copy(file_a, file_b)  # b's cache entry now holds a's anchors
    again = compute_anchors([("w", b)], None, 0.5, cache_dir=tmp_path / "b")
    assert "made for other weights or settings" in caplog.text
    assert again.weights_hash == for_b.weights_hash != for_a.weights_hash
    assert torch.allclose(again.anchors["w"].S_ref, for_b.anchors["w"].S_ref)


def test_diagnostics_zero_when_unchanged_positive_after_rotation():
    s = torch.linspace(8, 1, 12)
    W0, U, V = spectrum_matrix(20, 12, s)
    _, _, anchors = make_reg({"w": W0}, k=4)
    same = subspace_diagnostics(anchors, {"w": W0.float()})["w"]
    assert same["principal_angle_left_max_deg"] < 0.5 and abs(same["top_singular_value_drift"]) < 1e-5
    # Rotate the leading left singular vector towards a tail direction by 30 degrees.
    th = math.radians(30)
    U2 = U.clone()
    U2[:, 0] = math.cos(th) * U[:, 0] + math.sin(th) * U[:, 10]
    U2[:, 10] = -math.sin(th) * U[:, 0] + math.cos(th) * U[:, 10]
    W1 = (U2 * s.double()) @ V.T
    d = subspace_diagnostics(anchors, {"w": W1.float()})["w"]
    assert d["principal_angle_left_max_deg"] == pytest.approx(30.0, abs=0.5)
    assert d["block_drift"] > 0.05


@pytest.mark.parametrize("shape", [(60, 20), (20, 60), (30, 30)])
def test_diagnostic_subspaces_equal_a_float64_svds(shape):
    """The diagnostics' top-k subspaces (Gram eigenproblem, thin QR) against LAPACK's full float64 SVD: angles far
    below anything reported, all singular values to float64 round-off."""
    from stages.rpsft import _top_subspaces_fp64

    m, n = shape
    s = torch.logspace(1, -1, min(m, n))  # a spread of 100 between the largest and the smallest
    W, _, _ = spectrum_matrix(m, n, s, seed=3)
    k = 7
    U, sv, V = _top_subspaces_fp64(W.float(), k)
    assert U.shape == (m, k) and V.shape == (n, k) and sv.shape == (min(m, n),)
    U_ref, s_ref, Vh_ref = torch.linalg.svd(W.float().double(), full_matrices=False)
    assert torch.allclose(sv[: k + 1], s_ref[: k + 1], rtol=1e-12)  # all the diagnostics read (s_k / s_(k+1))
    assert torch.allclose(sv, s_ref, rtol=0, atol=1e-11)
    assert float(principal_angles_deg(U_ref[:, :k], U).max()) < 1e-9
    assert float(principal_angles_deg(Vh_ref[:k].T, V).max()) < 1e-9


def test_fp64_angles_of_identical_weights_are_exactly_zero_and_small_rotations_are_exact():
    s = torch.linspace(8, 1, 12)
    W0, U, V = spectrum_matrix(20, 12, s)
    _, _, anchors = make_reg({"w": W0}, k=4)
    base = {"w": W0.float()}.get
    same = subspace_diagnostics(anchors, {"w": W0.float()}, base=base)["w"]
    assert same["principal_angle_left_max_deg"] == 0.0 and same["principal_angle_right_max_deg"] == 0.0
    assert same["block_drift"] == 0.0  # the block in the anchors' own association: exactly S_ref
    # A 0.01-degree rotation of the leading direction into the tail: fp32 arccos could not see it (its round-off
    # reads 0.005-0.04 degrees); the float64 sines measure it.
    th = math.radians(0.01)
    U2 = U.clone()
    U2[:, 0] = math.cos(th) * U[:, 0] + math.sin(th) * U[:, 10]
    U2[:, 10] = -math.sin(th) * U[:, 0] + math.cos(th) * U[:, 10]
    W1 = (U2 * s.double()) @ V.T
    d = subspace_diagnostics(anchors, {"w": W1.float()}, base={"w": W0.float()}.get)["w"]
    assert d["principal_angle_left_max_deg"] == pytest.approx(0.01, rel=0.05)
    assert d["principal_angle_right_max_deg"] < 1e-3


def test_principal_angles_match_their_definition_at_every_size():
    rng = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, generator=rng, dtype=torch.float64))
    for deg in (0.0, 1e-4, 0.5, 30.0, 60.0, 89.9):
        th = math.radians(deg)
        B = torch.stack([math.cos(th) * Q[:, 0] + math.sin(th) * Q[:, 5], Q[:, 1]], 1)
        angles = principal_angles_deg(Q[:, :2], B)
        assert angles.tolist() == pytest.approx(sorted([deg, 0.0]), abs=1e-9)


def test_a_near_degenerate_k_boundary_is_reported_apart():
    s = torch.tensor([9.0, 8.0, 7.0, 5.0, 4.9999, 3.0, 2.0, 1.0])  # s_4 / s_5 = 1.00002: direction 4 is not defined
    W0, U, V = spectrum_matrix(16, 8, s)
    _, _, anchors = make_reg({"w": W0}, k=4)
    W1 = W0 + 1e-3 * torch.randn(16, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = subspace_diagnostics(anchors, {"w": W1.float()}, base={"w": W0.float()}.get)["w"]
    assert d["stable_k"] == 3 and d["boundary_gap"] == pytest.approx(5.0 / 4.9999, rel=1e-4)
    assert d["principal_angle_boundary_max_deg"] > 5 * d["principal_angle_left_max_deg"]
    assert summarize_diagnostics({"w": d})["degenerate_boundary_matrices"] == 1


def _float64_anchor(m: int, n: int, k: int):
    """W0, another W and W0's anchor (top-k block, or full rank when k covers the matrix), in float64."""
    from stages.rpsft import Anchor

    W0, W = torch.randn(m, n, dtype=torch.float64), torch.randn(m, n, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(W0, full_matrices=False)
    full = k >= min(m, n)
    U, V = U[:, :k], Vh[:k].T
    return W0, W, Anchor("w", (m, n), k, full, U=U, V=V, S_ref=U.T @ W0 @ V, W0=W0 if full else None)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_row_shards_sum_to_the_whole_block_and_gradient(world):
    """What FSDP2 ranks compute, in float64 without processes: any split of W's rows into shards (some empty) gives
    partial blocks that sum to U_k^T W V_k, and each shard's gradient rows are the whole gradient's rows."""
    from stages.rpsft import partial_deviation, shard_rows

    torch.manual_seed(world)
    for m, n, k in [(7, 5, 2), (5, 9, 3), (1, 4, 1), (3, 3, 3)]:
        W0, W, a = _float64_anchor(m, n, k)
        full = a.full
        spans = [shard_rows(m, world, r) for r in range(world)]
        assert [r0 for r0, _ in spans] == sorted(r0 for r0, _ in spans) and spans[-1][1] == m
        assert sum(r1 - r0 for r0, r1 in spans) == m  # a partition of the rows, empty shards allowed
        parts = [partial_deviation(a, W[r0:r1], r0) for r0, r1 in spans]
        if full:
            D = torch.cat(parts)
            assert torch.equal(D, W - W0)
            continue
        whole = a.U.T @ W @ a.V
        assert torch.allclose(sum(parts), whole, rtol=0, atol=1e-12)
        D = whole - a.S_ref
        grad = 2 * a.U @ D @ a.V.T
        pieces = torch.cat([2 * a.U[r0:r1] @ D @ a.V.T for r0, r1 in spans])
        assert torch.allclose(pieces, grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_flat_fragments_sum_to_the_whole_block(world):
    """What DeepSpeed ZeRO-1/2 ranks compute, in float64 without processes: the flattened matrix cut into ranges at
    arbitrary points (inside rows, empty ranges allowed), each range padded with zeros to the rows it touches, gives
    partial blocks that sum to U_k^T W V_k, and squared distances to W0 that sum to ||W - W0||^2."""
    from stages.rpsft import flat_rows, fragment_rows, partial_deviation

    g = torch.Generator().manual_seed(world)
    for m, n, k in [(7, 5, 2), (5, 9, 3), (1, 4, 1), (3, 3, 3)]:
        W0, W, a = _float64_anchor(m, n, k)
        full = a.full
        cuts = sorted({0, m * n, *torch.randint(0, m * n + 1, (world - 1,), generator=g).tolist()})
        ranges = list(zip(cuts[:-1], cuts[1:], strict=True)) + [(m * n, m * n)]  # one rank with nothing
        flat = W.reshape(-1)
        if full:
            parts = [(flat[s:e] - W0.reshape(-1)[s:e]).pow(2).sum() for s, e in ranges]
            assert torch.allclose(sum(parts), (W - W0).pow(2).sum(), rtol=1e-12)
            continue
        parts = []
        for s, e in ranges:
            rows, r0 = fragment_rows(flat[s:e], s, n)
            assert (r0, r0 + rows.shape[0]) == (flat_rows(s, e - s, n) if e > s else (0, 0))
            parts.append(partial_deviation(a, rows, r0))
        assert torch.allclose(sum(parts), a.U.T @ W @ a.V, rtol=0, atol=1e-12)


def test_the_penalty_term_is_zero_and_its_backward_is_the_closed_form_gradient():
    """The term DeepSpeed's backward carries: value 0, gradient scale * lambda * 2 U_k D V_k^T (or 2 (W - W0) for a
    full-rank anchor), times whatever the loss it joins was multiplied by; the statistics are the penalty's."""
    from stages.rpsft import RPSFTRegularizer, compute_anchors, select_matrices

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.Linear(7, 1))
    named = select_matrices(model.named_parameters(), [r"weight$"], [])
    reg = RPSFTRegularizer(named, compute_anchors(named, None, 0.5), 3.0)
    with torch.no_grad():
        for _, p in named:
            p.add_(0.1 * torch.randn_like(p))
    reg.weights_changed()
    expected = {}
    for name, p in named:
        p.grad = None
        with torch.enable_grad():
            r = RPSFTRegularizer([(name, p)], reg.anchors, 3.0).penalty_autograd()
            (g,) = torch.autograd.grad(r, [p])
        expected[name] = g
    term, stats = reg.penalty_term(scale=2.0)
    assert float(term.detach()) == 0.0 and stats["penalty"] == pytest.approx(reg.penalty(), rel=1e-6)
    (7.0 * term).backward()
    for name, p in named:
        assert torch.allclose(p.grad, 14.0 * expected[name], rtol=1e-4, atol=1e-7), name


def test_anchor_inputs_read_weights_a_process_does_not_hold_from_the_files(tmp_path):
    """FSDP's rank-0 loading leaves the other ranks' weights on the meta device: their anchors come from the
    checkpoint files, the same bytes, so the same anchors (and cache entry) as rank 0's."""
    from safetensors.torch import save_file

    from stages.rpsft import anchor_inputs, weights_hash

    W = torch.randn(6, 4)
    save_file({"model.layer.weight": W}, str(tmp_path / "model.safetensors"))
    loaded = [("model.layer.weight", torch.nn.Parameter(W.clone()))]
    meta = [("model.layer.weight", torch.nn.Parameter(torch.empty(6, 4, device="meta")))]
    assert anchor_inputs(loaded, str(tmp_path)) is loaded
    got = anchor_inputs(meta, str(tmp_path))
    assert torch.equal(got[0][1], W) and weights_hash(got) == weights_hash(loaded)
    with pytest.raises(RPSFTError, match="not loaded in this process"):
        anchor_inputs([("other.weight", meta[0][1])], str(tmp_path))
