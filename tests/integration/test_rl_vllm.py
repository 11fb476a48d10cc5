"""GRPO with vLLM (CPU, colocate) on the tiny model: the trainer's weights really reach vLLM after every update."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from stages.sft import run as sft_run
from tests.conftest import REPO

STEPS = 4


def _rl(tmp_path, cache_dir, init, arm: str, *extra: str) -> list[dict]:
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "tests/integration/rl_vllm_driver.py", *extra]
    cmd += [f"runs_root={tmp_path / 'runs'}", f"cache_dir={cache_dir}", f"rl.init={init}", f"rl.arm={arm}"]
    cmd += ["rl.generation.backend=vllm", "rl.rewards=[digit_share]", "rl.training.learning_rate=2e-2"]
    cmd += [f"rl.training.max_steps={STEPS}", "rl.training.beta=0.0"]
    if "rl.algorithm=ppo" not in extra:  # TRL then logs vLLM's and the trainer's log-prob difference (off by default)
        cmd += ['rl.trl={"vllm_importance_sampling_correction": true}']
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    path = tmp_path / "runs" / "tiny" / arm / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_vllm_colocate_weight_sync_on_cpu(tiny_cfg, tmp_path, cache_dir):
    cfg = tiny_cfg("sft.training.max_steps=2")
    sft_run(cfg)
    init = cfg.arm_dir / "checkpoint"

    synced = _rl(tmp_path, cache_dir, init, "rl-vllm")
    assert [r["step"] for r in synced] == list(range(1, STEPS + 1))
    assert all(r["timing/weight_sync_s"] > 0 and r["timing/generation_s"] > 0 for r in synced)  # timed apart
    diff = "sampling/sampling_logp_difference/mean"
    # The policy really moved: the final weights differ from the initial ones.
    before = AutoModelForCausalLM.from_pretrained(init)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "tiny" / "rl-vllm" / "checkpoint")
    moved = max(float((a - b).abs().max()) for a, b in zip(after.parameters(), before.parameters(), strict=True))
    assert moved > 1e-2

    # Control: the same run with TRL's weight sync disabled. vLLM keeps sampling from the initial weights, so its
    # log-probs drift away from the trainer's once the policy has moved.
    stale = _rl(tmp_path, cache_dir, init, "rl-vllm-nosync", "--no-sync")
    assert synced[0][diff] == pytest.approx(stale[0][diff], rel=0.5)  # identical before any update
    late_synced = max(r[diff] for r in synced[1:])
    late_stale = max(r[diff] for r in stale[2:])
    assert late_synced < 1e-4, synced  # measured 2e-7-4e-7: one precision, the same weights
    assert late_stale > 5 * late_synced, (late_stale, late_synced)
    assert torch.isfinite(torch.tensor([r["loss"] for r in synced])).all()


@pytest.mark.slow
def test_ppo_generates_with_vllm_from_the_trainers_weights(tiny_cfg, tmp_path, cache_dir):
    """PPO through the same engine as GRPO (TRL's VLLMGeneration, colocated on CPU): the weights are pushed into vLLM
    before every step, so vLLM's log-probs of the tokens it sampled stay those the trainer computes; without the push
    they drift as soon as the policy moves."""
    cfg = tiny_cfg("sft.training.max_steps=2")
    sft_run(cfg)
    init = cfg.arm_dir / "checkpoint"
    diff = "sampling/sampling_logp_difference/mean"

    synced = _rl(tmp_path, cache_dir, init, "rl-ppo-vllm", "rl.algorithm=ppo")
    stale = _rl(tmp_path, cache_dir, init, "rl-ppo-nosync", "--no-sync", "rl.algorithm=ppo")
    summary = json.loads((tmp_path / "runs" / "tiny" / "rl-ppo-vllm" / "metrics.json").read_text())
    assert summary["algorithm"] == "ppo" and summary["backend"] == "vllm"
    assert [r["step"] for r in synced] == list(range(1, STEPS + 1))
    for key in ("timing/weight_sync_s", "timing/generation_s", "timing/training_s", "step_time_s", "loss"):
        assert all(key in r for r in synced), key
    assert synced[-1]["kl"] > 0.1  # the policy moved away from the initial weights vLLM loaded
    assert synced[0][diff] == pytest.approx(stale[0][diff], rel=0.5)  # identical before any update
    late_synced = max(r[diff] for r in synced[1:])
    late_stale = max(r[diff] for r in stale[1:])
    assert late_synced < 1e-4, synced  # measured 2e-7-4e-7: one precision, the same weights
    assert late_stale > 5 * late_synced, (late_stale, late_synced)


@pytest.mark.slow
def test_an_rl_stage_generating_with_vllm_ends_without_a_traceback(tmp_path, cache_dir):
    """The stage as a flow runs it (its command line), generating with vLLM colocated: a completed stage ends with
    exit 0 and no traceback in its output (vLLM's process groups are taken down before the default one)."""
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir)}
    cmd = [sys.executable, "-m", "stages.rl", "--config", "configs/tiny.yaml", f"runs_root={tmp_path / 'runs'}"]
    cmd += [f"cache_dir={cache_dir}", "rl.generation.backend=vllm", "rl.training.max_steps=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert (tmp_path / "runs" / "tiny" / "rl-base" / "DONE").is_file()
    assert "Traceback" not in out and "Invalid process group" not in out, out[-4000:]


@pytest.mark.slow
def test_auto_on_a_machine_where_vllm_measured_faster_learns_its_speed_inside_the_rl_steps(tmp_path, cache_dir):
    """rl.generation.backend=auto with figures that favour vLLM generates with vLLM colocated, and records the speed it
    reached inside the GRPO steps for the next auto run (the plan's figures, read in the plan's precision)."""
    from stages import backends
    from stages.config import load_config
    from stages.models import resolve_model

    runs = tmp_path / "runs"
    common = [f"runs_root={runs}", f"cache_dir={cache_dir}"]
    cfg = load_config("configs/tiny.yaml", common)
    model = backends.model_id(resolve_model(cfg), backends.engine_dtype(cfg, "rl"))
    cache = cache_dir / backends.CACHE_FILE
    key = backends.cache_key(model, backends.machine())
    cache.write_text(json.dumps({key: {"hf_tokens_per_s": 1.0, "vllm_tokens_per_s": 1000.0}}))
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir)}
    cmd = [sys.executable, "-m", "stages.rl", "--config", "configs/tiny.yaml", *common]
    cmd += ["rl.generation.backend=auto", "rl.training.max_steps=2", "rl.arm=rl-auto"]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        learned = json.loads(cache.read_text())[key]
    finally:
        cache.unlink()
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((runs / "tiny" / "rl-auto" / "metrics.json").read_text())
    assert summary["backend"] == "vllm" and "vLLM 1000 tokens/s" in summary["backend_reason"]
    assert summary["generation_tokens_per_s"] > 0
    assert learned["colocated_vllm_tokens_per_s"] == pytest.approx(summary["generation_tokens_per_s"], rel=1e-3)
    assert "backend: auto" in (runs / "tiny" / "rl-auto" / "config.yaml").read_text()
