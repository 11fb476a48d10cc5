"""Crash and resume: the SFT stage is SIGKILLed right after a checkpoint; the same command continues from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from stages.sft import FAULT_ENV
from tests.conftest import REPO

ARGS = [
    "--config",
    "configs/tiny.yaml",
    "sft.method=rpsft",
    "sft.training.max_steps=8",
    "sft.training.save_steps=2",
    "sft.training.save_total_limit=10",
    "sft.training.learning_rate=5e-3",
]


def _sft(runs_root, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "stages.sft", *ARGS, f"runs_root={runs_root}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_rerun_continues(tmp_path, cache_dir):
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    clean = _sft(tmp_path / "clean", env)
    assert clean.returncode == 0, clean.stderr[-2000:]

    crashed = _sft(tmp_path / "crash", {**env, FAULT_ENV: "4"})
    assert crashed.returncode == -signal.SIGKILL
    arm = tmp_path / "crash" / "tiny" / "rpsft"
    assert (arm / "trainer" / "checkpoint-4").is_dir()
    assert not (arm / "DONE").exists() and not (arm / "checkpoint").exists()  # not taken for complete

    resumed = _sft(tmp_path / "crash", env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr

    m_clean = json.loads((tmp_path / "clean" / "tiny" / "rpsft" / "metrics.json").read_text())
    m_res = json.loads((arm / "metrics.json").read_text())
    # Every step exactly once: steps 1-4 from the first process, 5-8 from the rerun.
    assert [h["step"] for h in m_res["log_history"]] == list(range(1, 9))
    assert m_res["steps"] == 8
    assert [h["loss"] for h in m_res["log_history"]] == pytest.approx(
        [h["loss"] for h in m_clean["log_history"]], rel=1e-4
    )
    w_clean = load_file(tmp_path / "clean" / "tiny" / "rpsft" / "checkpoint" / "model.safetensors")
    w_res = load_file(arm / "checkpoint" / "model.safetensors")
    for k in w_clean:
        assert torch.allclose(w_clean[k], w_res[k], atol=1e-5), k


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir):
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir)}
    env.pop(FAULT_ENV, None)
    # A learning rate of 1e37 blows the weights up after the first update: the loss of step 2 is not finite.
    cmd = [sys.executable, "-m", "stages.sft", "--config", "configs/tiny.yaml", f"runs_root={tmp_path}"]
    cmd += [
        "sft.training.max_steps=6",
        "sft.training.save_steps=1",
        "sft.training.learning_rate=1e37",
        "sft.training.max_grad_norm=0",
        "sft.training.lr_scheduler_type=constant",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "training loss is" in proc.stderr and "at step" in proc.stderr and "lower the learning rate" in proc.stderr
    arm = tmp_path / "tiny" / "sft"
    kept = sorted(p.name for p in (arm / "trainer").glob("checkpoint-*"))
    assert kept == ["checkpoint-1"] and not (arm / "DONE").exists() and not (arm / "checkpoint").exists()
    assert "at step 2" in proc.stderr
