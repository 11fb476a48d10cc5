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
    assert r["rebuilt"] == r["linears"]
    assert r["before_push_vs_old"] < 1e-3, r  # the engine computes what transformers computes
    # the push alone does not reach the packed kernels (what the rebuild is for): a model that is neither ...
    assert r["pushed_not_rebuilt_vs_new"] > 0.05, r
    # ... after the rebuild the engine computes the pushed model
    assert r["rebuilt_vs_new"] < 1e-3, r
    assert r["rebuilt_vs_old"] > 0.05, r
