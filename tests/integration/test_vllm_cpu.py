"""The CPU patches of TRL's colocated vLLM engine (stages/vllm_cpu.py): the engine computes in the trainer's
precision whatever the checkpoint's config says, vLLM keeps its packed linear kernels (both: the speed of issue
19), and a weight push reaches them once they are rebuilt, as they are after every TRL sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stages.models import resolve_model
from tests.conftest import REPO


@pytest.mark.slow
def test_pushed_weights_reach_vllms_packed_kernels(tiny_cfg):
    path = resolve_model(tiny_cfg())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "tests/integration/vllm_repack_driver.py", str(path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][-1])
    # the engine computes in the trainer's precision, not the checkpoint's bfloat16, and eager
    assert r["engine_dtype"] == "torch.float32" and r["eager"], r
    assert r["linears"] > 0 and r["weights_kept"]
    assert r["packed"] == r["linears"], r  # vLLM's own kernels, not torch.nn.functional.linear
    # every packed layer is rebuilt (the output head too), except the input embedding, which is only looked up
    assert r["rebuilt"] == r["linears"] - 1 == len(r["to_rebuild"]), r
    assert "ParallelLMHead" in r["to_rebuild"] and "VocabParallelEmbedding" not in r["to_rebuild"], r
    assert r["before_push_vs_old"] < 1e-3, r  # the engine computes what transformers computes
    # the push alone does not reach the packed kernels (what the rebuild is for): a model that is neither ...
    assert r["pushed_not_rebuilt_vs_new"] > 0.05, r
    # ... after the rebuild the engine computes the pushed model
    assert r["rebuilt_vs_new"] < 1e-3, r
    assert r["rebuilt_vs_old"] > 0.05, r


REFUSAL = """
import torch
from stages.vllm_cpu import apply_cpu_colocate_patches
apply_cpu_colocate_patches("bfloat16")
import vllm.model_executor.layers.utils as u
layer = torch.nn.Module()
layer.weight = torch.nn.Parameter(torch.zeros(8, 1, 4, dtype=torch.float32), requires_grad=False)
u.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)  # a float32 conv weight: computed unpacked
assert layer.cpu_linear is torch.nn.functional.linear and layer.weight.shape == (8, 1, 4)
layer.weight = torch.nn.Parameter(torch.zeros(8, 1, 4, dtype=torch.bfloat16), requires_grad=False)
try:
    u.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
except RuntimeError as e:
    print("REFUSED:", e)
"""


def test_bf16_causal_conv_weights_are_refused_with_the_fix_named():
    """vLLM packs bfloat16 causal-conv weights (hybrid Mamba / gated-delta-net models) in place and its kernels then
    assume packing, which a weight push could not follow: refused at engine start, naming what to set instead."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", REFUSAL], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REFUSED:" in proc.stdout and "model.dtype=float32" in proc.stdout and "backend=hf" in proc.stdout
