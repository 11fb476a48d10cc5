"""RPSFT under DeepSpeed ZeRO-1/2, one process of a ``torch.distributed.run`` launch (gloo, CPU).

Every process trains the same model twice from the same start on the same global batches: once whole (the
single-process reference, on the whole batch, the gradient added after the last micro-batch as the SFT trainer adds
it under DDP) and once under a DeepSpeed engine (on its half of each batch), driven the way accelerate drives it
(``set_gradient_accumulation_boundary``, ``backward(loss, scale_wrt_gas=False)`` as the Trainer passes it, ``step``
on the boundary) with the penalty's term added to the last micro-batch's loss. The block comes from each rank's fp32
optimizer fragments (flat ranges that start and end inside rows) and one all-reduce. Rank 0 writes what the test
compares.

    python -m torch.distributed.run --nproc_per_node 2 tests/integration/deepspeed_rpsft_driver.py --out out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stages.rpsft import RPSFTError, RPSFTRegularizer, compute_anchors, select_matrices  # noqa: E402
from tests.integration.fsdp_rpsft_driver import CLIP, GA, LAM, MICRO, STEPS, Net, optimizer, problem, train  # noqa: E402


class FlatNet(Net):
    """Net with l2's bias only: 42 + 35 + 5 + 5 = 87 values, padded to 88, so ZeRO's two 44-element partitions split
    l2.weight inside its first row (rank 0 holds its first 2 values, rank 1 the other 33), rank 0 holds nothing of
    l3 (1 x 5, a full-rank anchor: L2-to-init) and rank 1 nothing of l1."""

    def __init__(self):
        super().__init__()
        self.l1.bias = None
        self.l3.bias = None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--optim", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--stage", type=int, choices=[1, 2, 3], default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist

    # On a CPU, DeepSpeed's comm backend compiles its shared-memory all-reduce kernel when it starts (C++ with ninja,
    # about 40 s on 2 cores in every new environment, cached in ~/.cache/torch_extensions per environment). Only its
    # inference all-reduce calls that kernel, never ZeRO's training collectives, which go through torch.distributed
    # (gloo here) either way; marked unavailable, the backend starts without it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    model, batches, reference, start = problem(FlatNet)
    named = select_matrices(model.named_parameters(), [r"weight$"], [])
    anchors = compute_anchors(named, None, 0.5)
    ref_reg = RPSFTRegularizer(select_matrices(reference.named_parameters(), [r"weight$"], []), anchors, LAM)
    ref_log = train(reference, ref_reg, batches, args.optim)

    reg = RPSFTRegularizer(named, anchors, LAM)
    opt = optimizer(model, args.optim)
    half = MICRO // world
    config = {
        "train_micro_batch_size_per_gpu": half,
        "gradient_accumulation_steps": GA,
        "gradient_clipping": CLIP,
        # ZeRO-3 keeps parameters under its persistence threshold whole; 0 partitions every one, as a 7B model's are
        "zero_optimization": {"stage": args.stage, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    try:
        reg.bind(engine.module)
    except RPSFTError as e:  # pragma: no cover - what the test reads when binding fails
        Path(f"{args.out}.rank{rank}").write_text(str(e))
        dist.destroy_process_group()
        return 3
    flat = {n: list(reg._rows[n].flat) for n, _ in reg.params}
    sharded = all(hasattr(p, "ds_id" if args.stage == 3 else "_hp_mapping") for _, p in reg.params)
    local = [[(x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]) for x, y in b] for b in batches]
    log = []
    for step in range(STEPS):
        for micro in range(GA):
            last = micro == GA - 1
            x, y = local[step][micro]
            engine.set_gradient_accumulation_boundary(is_boundary=last)
            loss = ((engine(x) - y) ** 2).mean() / GA
            before = None
            if last and args.stage < 3:  # ZeRO-1/2: the gradient through the loss, since accelerate steps in backward
                term, before = reg.penalty_term(scale=1.0)
                loss = loss + term
            engine.backward(loss, scale_wrt_gas=False)
            if last and args.stage == 3:  # ZeRO-3: into each rank's gradient partition, before the step
                before = reg.add_penalty_grad()
            if last:
                engine.step()
        reg.weights_changed()
        after = reg.stats()
        log.append({"before": before["penalty"], "after": after["penalty"], "drift": after["block_drift_max"]})
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=args.stage == 3):
        weights = {n: p.detach().tolist() for n, p in engine.module.named_parameters()}
    # The same weights, whole, through the same fp32 arithmetic: the sharded penalty differs only by the order in
    # which the partial blocks are summed.
    whole = FlatNet()
    whole.load_state_dict({n: torch.tensor(w) for n, w in weights.items()})
    same = RPSFTRegularizer(select_matrices(whole.named_parameters(), [r"weight$"], []), anchors, LAM).stats()
    sharded_now = reg.stats()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {"flat": flat, "sharded": sharded, "log": log})
    if rank == 0:
        Path(args.out).write_text(
            json.dumps(
                {
                    "ranks": gathered,
                    "reference_log": ref_log,
                    "weights": weights,
                    "reference_weights": {n: p.detach().tolist() for n, p in reference.named_parameters()},
                    "start_weights": start,
                    "shapes": {n: list(p.shape) for n, p in reference.named_parameters()},
                    "same_weights": {"whole": same, "sharded": sharded_now},
                }
            )
        )
    # Every rank has reported. Leave without interpreter teardown: DeepSpeed ZeRO-3 on gloo sometimes aborts there
    # ("terminate called without an active exception": once in about 30 runs here), after the results are out.
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
