"""RPSFT on FSDP2 row shards, one process of a ``torch.distributed.run`` launch (gloo, CPU).

Every process trains the same model twice from the same start on the same global batches: once whole (the
single-process reference, on the whole batch) and once sharded with torch's ``fully_shard`` (on its half of each
batch), with the regulariser used the way the SFT trainer uses it (gradient added after the last micro-batch's
backward, clipping, optimizer step, ``weights_changed``, the logged penalty after the step). Rank 0 writes what the
test compares: the penalties of both runs, the weights of both after the last step, and the rows each rank held.

    python -m torch.distributed.run --nproc_per_node 2 tests/integration/fsdp_rpsft_driver.py --out out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stages.rpsft import RPSFTError, RPSFTRegularizer, compute_anchors, select_matrices  # noqa: E402

# Row counts chosen for the split over 2 ranks: 7 rows -> 4 + 3, 5 -> 3 + 2, 1 -> 1 + 0 (rank 1 holds no row of it;
# with k_fraction 0.5 that one is a full-rank anchor, L2-to-init, and the other two are k x k blocks).
STEPS, GA, MICRO, LAM, CLIP = 3, 2, 8, 10.0, 0.5


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(6, 7)
        self.l2 = torch.nn.Linear(7, 5)
        self.l3 = torch.nn.Linear(5, 1)

    def forward(self, x):
        return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x)))))


def optimizer(model, optim: str):
    if optim == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.2)
    return torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)


def problem(model_cls=Net):
    """The model (seeded), its global batches, an untouched copy for the one-process reference, its start weights."""
    torch.manual_seed(0)
    model = model_cls()
    g = torch.Generator().manual_seed(1)
    batches = [
        [(torch.randn(MICRO, 6, generator=g), torch.randn(MICRO, 1, generator=g)) for _ in range(GA)]
        for _ in range(STEPS)
    ]
    start = {n: p.detach().tolist() for n, p in model.named_parameters()}
    return model, batches, copy.deepcopy(model), start


def train(model, reg, batches, optim: str, sync=None) -> list[dict[str, float]]:
    opt = optimizer(model, optim)
    out = []
    for step in range(STEPS):
        for micro in range(GA):
            x, y = batches[step][micro]
            if sync is not None:
                sync(micro == GA - 1)  # gradients reduced on the last micro-batch only, as accelerate does
            (((model(x) - y) ** 2).mean() / GA).backward()
        before = reg.add_penalty_grad()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad()
        reg.weights_changed()
        after = reg.stats()
        out.append({"before": before["penalty"], "after": after["penalty"], "drift": after["block_drift_max"]})
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--optim", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--drop-anchor-on-rank", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, batches, reference, start = problem()
    named = select_matrices(model.named_parameters(), [r"weight$"], [])
    anchors = compute_anchors(named, None, 0.5)
    try:
        if args.drop_anchor_on_rank == rank:
            anchors = copy.copy(anchors)
            anchors.anchors = {k: v for k, v in anchors.anchors.items() if k != "l2.weight"}
        reg = RPSFTRegularizer(named, anchors, LAM)
    except RPSFTError as e:
        Path(f"{args.out}.rank{rank}").write_text(str(e))
        dist.destroy_process_group()
        return 3

    ref_reg = RPSFTRegularizer(select_matrices(reference.named_parameters(), [r"weight$"], []), anchors, LAM)
    ref_log = train(reference, ref_reg, batches, args.optim)

    mesh = init_device_mesh("cpu", (world,))
    for layer in (model.l1, model.l2, model.l3):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    reg.bind(model)
    rows = {n: list(p.to_local().shape) for n, p in model.named_parameters() if n.endswith("weight")}
    sharded = all(type(p).__name__ == "DTensor" and p.placements[0].is_shard(0) for _, p in reg.params)
    half = MICRO // world
    local = [[(x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]) for x, y in b] for b in batches]
    log = train(model, reg, local, args.optim, sync=model.set_requires_gradient_sync)

    full = {n: p.full_tensor() for n, p in model.named_parameters()}
    weights = {n: t.tolist() for n, t in full.items()}
    # The same weights, whole, through the same fp32 arithmetic: the sharded penalty differs only by the order in
    # which the partial blocks are summed.
    whole = Net()
    whole.load_state_dict(full)
    same = RPSFTRegularizer(select_matrices(whole.named_parameters(), [r"weight$"], []), anchors, LAM).stats()
    sharded_now = reg.stats()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {"rows": rows, "sharded": sharded, "log": log})
    if rank == 0:
        Path(args.out).write_text(
            json.dumps(
                {
                    "ranks": gathered,
                    "reference_log": ref_log,
                    "weights": weights,
                    "reference_weights": {n: p.detach().tolist() for n, p in reference.named_parameters()},
                    "start_weights": start,
                    "same_weights": {"whole": same, "sharded": sharded_now},
                }
            )
        )
    dist.barrier()  # both ranks leave together: gloo can abort a rank torn down while the other still talks to it
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
