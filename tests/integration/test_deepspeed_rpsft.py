"""RPSFT under DeepSpeed ZeRO-1/2/3: two CPU processes (gloo); each rank's optimizer holds fp32 fragments of the
flat parameters (ZeRO-3: each rank holds a partition of every parameter), split inside rows. The penalty from partial
blocks and one all-reduce, its gradient taken through the loss of the last micro-batch (ZeRO-1/2: DeepSpeed steps
inside accelerate's ``backward``) or added to each rank's gradient partition before the step (ZeRO-3), and the
trained weights must be those of one process holding whole matrices on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.test_fsdp_rpsft import follows_one_process

DRIVER = REPO / "tests" / "integration" / "deepspeed_rpsft_driver.py"
# make setup installs DeepSpeed beside the venv's packages, on the path of these tests' processes only
DEEPSPEED = Path(sys.prefix) / "deepspeed"


def _launch(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    out = str(tmp_path / "out.json")
    assert (DEEPSPEED / "deepspeed").is_dir(), f"DeepSpeed is not installed in {DEEPSPEED}: run make setup"
    path = os.pathsep.join(x for x in (str(REPO), str(DEEPSPEED), os.environ.get("PYTHONPATH", "")) if x)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "DS_ACCELERATOR": "cpu"}
    for _ in range(3):  # a free port can be taken by another process before the launcher binds it: try another
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
        cmd += [str(DRIVER), "--out", out, *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 or "address already in use" not in proc.stderr.lower():
            break
    return proc, out


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage,optim,tol", [(2, "sgd", 1e-6), (2, "adamw", 1e-5), (1, "sgd", 1e-6), (3, "sgd", 1e-6), (3, "adamw", 1e-5)]
)
def test_deepspeed_zero_rpsft_matches_one_process(tmp_path, stage, optim, tol):
    proc, out = _launch(tmp_path, "--stage", str(stage), "--optim", optim)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads(open(out).read())
    r0, r1 = d["ranks"]
    # The weights really are split: each matrix's flat ranges partition it over the ranks. ZeRO-1/2's optimizer
    # fragments split l2.weight inside its first row and leave rank 0 nothing of l3.weight (a full-rank anchor) and
    # rank 1 nothing of l1.weight; ZeRO-3 partitions every parameter itself, l1.weight inside its fourth row.
    assert r0["sharded"] and r1["sharded"]
    for name in r0["flat"]:
        m, n = d["shapes"][name]
        assert r0["flat"][name][1] + r1["flat"][name][1] == m * n, name
    if stage < 3:
        assert r0["flat"]["l2.weight"] == [0, 2] and r1["flat"]["l2.weight"] == [2, 33]
        assert r0["flat"]["l3.weight"][1] == 0 and r1["flat"]["l1.weight"][1] == 0
    else:
        assert [r0["flat"]["l1.weight"], r1["flat"]["l1.weight"]] == [[0, 21], [21, 21]]
        assert [r0["flat"]["l3.weight"], r1["flat"]["l3.weight"]] == [[0, 3], [3, 2]]
    # Every rank logs the same, exact penalty (one all-reduce of the partial blocks of the fp32 weights) ...
    assert r0["log"] == r1["log"]
    # (the penalty is a small difference of fp32 blocks of size about 1: summing ZeRO-3's four partial row blocks per
    # matrix in another order moves it by about 1e-6 of itself, measured 1.2e-6)
    same = d["same_weights"]
    assert same["sharded"]["penalty"] == pytest.approx(same["whole"]["penalty"], rel=1e-5)
    assert same["sharded"]["block_drift_max"] == pytest.approx(same["whole"]["block_drift_max"], rel=1e-5)
    # ... and along the run it follows the one-process run, and so do the weights.
    follows_one_process(d, r0["log"], tol)
