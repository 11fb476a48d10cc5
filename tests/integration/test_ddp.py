"""RPSFT under data parallelism: a 2-process CPU run (accelerate launch, gloo), started the way the flows start
multi-GPU training, gives the penalty and update of one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stages.rpsft import RPSFTError, RPSFTRegularizer, compute_anchors, select_matrices
from tests.conftest import REPO

COMMON = [
    "sft.method=rpsft",
    "sft.training.max_steps=3",
    "sft.training.learning_rate=1e-2",
    "sft.rpsft.lambda=10",
    "torch_threads=1",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], env: dict) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, cache_dir):
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    base = ["--config", "configs/tiny.yaml", *COMMON]
    # Global batch 4 either way: one process x 4, or two processes x 2.
    _run(
        [
            sys.executable,
            "-m",
            "stages.sft",
            *base,
            f"runs_root={tmp_path / 'one'}",
            "sft.training.per_device_train_batch_size=4",
        ],
        env,
    )
    # Two processes through the launcher path the flows use for GPU configs (accelerate launch + a config file).
    from pipeline.flows import Launcher, StageParams, stage_command

    params = StageParams(
        config="configs/tiny.yaml",
        overrides=[*COMMON, f"runs_root={tmp_path / 'two'}", "sft.training.per_device_train_batch_size=2"],
        launcher=Launcher(num_processes=2, accelerate_config="configs/accelerate/cpu-ddp.yaml"),
    )
    cmd = stage_command("sft", params)
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    _run(cmd, env)

    one, two = tmp_path / "one" / "tiny" / "rpsft", tmp_path / "two" / "tiny" / "rpsft"
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["penalty_at_end"] > 0.1
    assert m2["penalty_at_end"] == pytest.approx(m1["penalty_at_end"], rel=1e-5)
    assert [h["loss"] for h in m2["log_history"]] == pytest.approx([h["loss"] for h in m1["log_history"]], rel=1e-5)
    w1, w2 = load_file(one / "checkpoint" / "model.safetensors"), load_file(two / "checkpoint" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-4), k
    # Only rank 0 wrote: one metrics file, one checkpoint.
    assert sorted(p.name for p in Path(two).iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in Path(one).iterdir() if not p.name.startswith(".")
    )


def test_sharded_parameters_are_refused_not_silently_skipped():
    # ZeRO-3 / FSDP flatten parameters: they look 1-D, so no matrix matches. RPSFT must fail loudly.
    flat = torch.nn.ParameterDict({"w": torch.nn.Parameter(torch.randn(64))})
    with pytest.raises(RPSFTError, match="ZeRO-3"):
        compute_anchors(select_matrices(flat.named_parameters(), [".*"], []), None, 0.25)
    # A shard of another shape than its anchor is refused too.
    full = [("w", torch.nn.Parameter(torch.randn(8, 6)))]
    anchors = compute_anchors(full, None, 0.5)
    with pytest.raises(RPSFTError, match="sharded"):
        RPSFTRegularizer([("w", torch.nn.Parameter(torch.randn(4, 6)))], anchors, 1.0)
