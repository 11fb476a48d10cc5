"""The GPU check's sizing: FLOP counts of the real shapes at conservative H200 rates fit the 8-minute budget, and
the matrices it counts are the model's."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("gpu_check_run", REPO / "scripts" / "gpu_check" / "run.py")
gc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gc)


def test_the_full_run_is_planned_under_eight_minutes_on_one_h200():
    p = gc.plan(gc.FULL)
    assert p["total"] < 8 * 60, p
    assert p["anchors"] > p["steps"] > 0  # the fp32 SVDs of the 152064 x 3584 embedding and head dominate
    # the paper's shapes: two Qwen2.5-7B layers with embedding and head, 1.56 B parameters in 2-D weights
    assert abs(sum(m * n for m, n in gc.matrices(gc.SHAPES["qwen2.5-7b-layers"])) - 1.556e9) < 1e6


def test_the_counted_matrices_are_those_of_the_built_model():
    import torch

    for name in ("smoke-layers", "smoke-body"):
        shape = {**gc.SHAPES[name], "vocab_size": gc.SHAPES[name].get("vocab_size", 1024)}
        model = gc.build_layers_model(shape, torch.device("cpu"), torch.float32)
        built = sorted(tuple(p.shape) for p in model.parameters() if p.dim() == 2)
        assert built == sorted(gc.matrices(shape)), name
