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

from stages.checkpointing import FAULT_ENV
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

    # resumed with another recipe: refused, naming the key, before anything is trained or rewritten
    recorded = (arm / "config.yaml").read_text()
    cmd = [
        sys.executable,
        "-m",
        "stages.sft",
        *ARGS,
        f"runs_root={tmp_path / 'crash'}",
        "sft.training.learning_rate=0.05",
    ]
    changed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "was started with another SFT recipe" in changed.stderr
    assert "sft.training.learning_rate: 0.005 -> 0.05" in changed.stderr and "--force" in changed.stderr
    assert (arm / "config.yaml").read_text() == recorded and (arm / "trainer" / "checkpoint-4").is_dir()

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


RL_ARGS = [
    "--config",
    "configs/tiny.yaml",
    "rl.training.max_steps=6",
    "rl.training.save_steps=2",
    "rl.training.save_total_limit=10",
    "rl.rewards=[format, math_correct]",
]


def _rl(runs_root, init, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "stages.rl", *RL_ARGS, f"runs_root={runs_root}", f"rl.init={init}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_rl_sigkill_after_a_checkpoint_then_rerun_continues(tmp_path, cache_dir):
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    init_run = _sft(tmp_path / "init", env)
    assert init_run.returncode == 0, init_run.stderr[-2000:]
    init = tmp_path / "init" / "tiny" / "rpsft" / "checkpoint"

    clean = _rl(tmp_path / "clean", init, env)
    assert clean.returncode == 0, clean.stderr[-2000:]
    crashed = _rl(tmp_path / "crash", init, {**env, FAULT_ENV: "4"})
    assert crashed.returncode == -signal.SIGKILL
    arm = tmp_path / "crash" / "tiny" / "rl-rpsft"
    assert (arm / "trainer" / "checkpoint-4").is_dir() and not (arm / "DONE").exists()
    resumed = _rl(tmp_path / "crash", init, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    rows_clean = [
        json.loads(x) for x in (tmp_path / "clean" / "tiny" / "rl-rpsft" / "metrics.jsonl").read_text().splitlines()
    ]
    rows_res = [json.loads(x) for x in (arm / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_res] == list(range(1, 7))  # no step repeated or skipped
    # Sampling RNG and optimizer state come back with the checkpoint: the same rewards and losses as without a crash.
    assert [r["reward"] for r in rows_res] == pytest.approx([r["reward"] for r in rows_clean], abs=1e-6)
    assert [r["loss"] for r in rows_res] == pytest.approx([r["loss"] for r in rows_clean], rel=1e-3, abs=1e-6)
    w_clean = load_file(tmp_path / "clean" / "tiny" / "rl-rpsft" / "checkpoint" / "model.safetensors")
    w_res = load_file(arm / "checkpoint" / "model.safetensors")
    for k in w_clean:
        assert torch.allclose(w_clean[k], w_res[k], atol=1e-5), k

    # --force trains again from step 1: the trainer checkpoints of the run before are not resumed
    cmd = [sys.executable, "-m", "stages.rl", "--force", *RL_ARGS, f"runs_root={tmp_path / 'crash'}", f"rl.init={init}"]
    forced = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0, forced.stderr[-2000:]
    rows_forced = [json.loads(x) for x in (arm / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_forced] == list(range(1, 7))
    assert [r["reward"] for r in rows_forced] == pytest.approx([r["reward"] for r in rows_clean], abs=1e-6)


def test_no_disk_for_a_checkpoint_stops_before_writing_and_keeps_the_last(tiny_cfg, monkeypatch):
    from stages import store
    from stages.sft import run as sft_run

    cfg = tiny_cfg("sft.training.max_steps=4", "sft.training.save_steps=2")
    real = store.free_bytes
    calls = {"n": 0}

    def fake_free(path):
        calls["n"] += 1
        return real(path) if calls["n"] == 1 else 1024  # room for the first checkpoint only

    monkeypatch.setattr(store, "free_bytes", fake_free)
    with pytest.raises(store.ResourceError, match=r"not enough disk for the trainer checkpoint of step 4 .*GiB free"):
        sft_run(cfg)
    trainer = cfg.arm_dir / "trainer"
    assert (trainer / "checkpoint-2").is_dir() and not (trainer / "checkpoint-4").exists()
    assert not (cfg.arm_dir / "DONE").exists()
    monkeypatch.setattr(store, "free_bytes", real)
    assert sft_run(cfg)["steps"] == 4  # with room again, the run resumes from checkpoint-2 and finishes


def test_memory_estimate_warns_on_a_small_machine(monkeypatch, caplog):
    import logging

    from stages import store

    monkeypatch.setattr(store, "available_memory_bytes", lambda: 2 << 30)
    log = logging.getLogger("test.mem")
    with caplog.at_level(logging.WARNING, logger="test.mem"):
        gib = store.warn_memory(1_000_000_000, copies=4, what="SFT (sft)", logger=log)
    assert gib == pytest.approx(16e9 / 2**30 + 1)  # 1e9 parameters x 4 bytes x 4 copies + 1 GiB
    assert "needs an estimated" in caplog.text and "2.0 GiB are available" in caplog.text
    caplog.clear()
    monkeypatch.setattr(store, "available_memory_bytes", lambda: 64 << 30)
    with caplog.at_level(logging.WARNING, logger="test.mem"):
        store.warn_memory(10_000_000, copies=4, what="SFT (sft)", logger=log)
    assert not caplog.text


@pytest.mark.slow
def test_killed_while_writing_the_final_checkpoint_then_rerun_completes(tmp_path, cache_dir):
    from stages.checkpointing import FAULT_DURING_SAVE_ENV

    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    cmd = [sys.executable, "-m", "stages.sft", "--config", "configs/tiny.yaml", f"runs_root={tmp_path}"]
    cmd += ["sft.training.max_steps=2", "sft.training.save_steps=2"]
    killed = subprocess.run(cmd, cwd=REPO, env={**env, FAULT_DURING_SAVE_ENV: "1"}, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    arm = tmp_path / "tiny" / "sft"
    # Half-written: the weights are in the temporary folder, nothing is published, nothing is marked complete.
    assert (arm / ".checkpoint.tmp" / "model.safetensors").is_file()
    assert not (arm / "checkpoint").exists() and not (arm / "DONE").exists() and not (arm / "metrics.json").exists()
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (arm / "DONE").is_file() and not (arm / ".checkpoint.tmp").exists()
    assert json.loads((arm / "metrics.json").read_text())["steps"] == 2
    w = load_file(arm / "checkpoint" / "model.safetensors")
    assert w and all(torch.isfinite(t).all() for t in w.values())
    assert (arm / "checkpoint" / "tokenizer_config.json").is_file()


def test_an_epoch_based_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, cache_dir):
    """max_steps=-1 (epochs): the rerun resumes to the trainer's own step budget, not to "-1" (which published the
    checkpoint-4 weights as final with DONE)."""
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    epochs = ["sft.training.max_steps=-1", "sft.training.num_train_epochs=1", "data.size=48"]

    def sft(root, extra_env):
        cmd = [sys.executable, "-m", "stages.sft", *ARGS, *epochs, f"runs_root={root}"]
        return subprocess.run(cmd, cwd=REPO, env={**env, **extra_env}, capture_output=True, text=True, timeout=300)

    clean = sft(tmp_path / "clean", {})
    assert clean.returncode == 0, clean.stderr[-2000:]
    steps = json.loads((tmp_path / "clean" / "tiny" / "rpsft" / "metrics.json").read_text())["steps"]
    assert steps == 12  # 48 items / batch 4, one epoch
    assert sft(tmp_path / "crash", {FAULT_ENV: "4"}).returncode == -signal.SIGKILL
    arm = tmp_path / "crash" / "tiny" / "rpsft"
    # A kill in the middle of writing the next checkpoint leaves one without trainer_state.json: skipped, not fatal.
    (arm / "trainer" / "checkpoint-6").mkdir()
    (arm / "trainer" / "checkpoint-6" / "model.safetensors").write_bytes(b"partial")
    resumed = sft(tmp_path / "crash", {})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "skipping incomplete trainer checkpoint" in resumed.stderr
    m = json.loads((arm / "metrics.json").read_text())
    assert m["steps"] == steps
    w_clean = load_file(tmp_path / "clean" / "tiny" / "rpsft" / "checkpoint" / "model.safetensors")
    w_res = load_file(arm / "checkpoint" / "model.safetensors")
    for k in w_clean:
        assert torch.allclose(w_clean[k], w_res[k], atol=1e-5), k


_FLOW = """
import sys
from pipeline.flows import sft_flow
state = sft_flow(config="configs/tiny.yaml", method="rpsft", overrides=sys.argv[1:], return_state=True)
print("FLOW STATE", state.type.value, flush=True)
"""


@pytest.mark.slow
def test_a_crashed_stage_is_retried_once_by_the_flow_and_resumes(tmp_path, cache_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        SFT2RL_CACHE_DIR=str(cache_dir),
        OMP_NUM_THREADS="1",
        PREFECT_HOME=str(tmp_path / "prefect"),  # no PREFECT_API_URL: a temporary server for this flow
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # Prefect waits 20 s for that server by default: a loaded 2-core CI machine once took longer (the test
        # failed before any stage ran); the wait is not what this test measures
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    env[FAULT_ENV] = "4"  # the first attempt is SIGKILLed right after its step-4 checkpoint
    over = [a for a in ARGS[2:] if a != "sft.method=rpsft"] + [f"runs_root={tmp_path / 'runs'}"]
    out = subprocess.run(
        [sys.executable, "-c", _FLOW, *over], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    log = out.stdout + out.stderr
    assert "FLOW STATE COMPLETED" in log, log[-4000:]
    assert "exit -9, crash" in log and "Retry" in log  # the crash, then Prefect's retry of the task
    m = json.loads((tmp_path / "runs" / "tiny" / "rpsft" / "metrics.json").read_text())
    assert [h["step"] for h in m["log_history"]] == list(range(1, 9))  # resumed at step 5, not restarted


def test_refusals_are_never_retried_crashes_are():
    from pipeline.runner import StageFailed

    assert StageFailed("x", rc=-9).transient and StageFailed("x", rc=1).transient
    for rc in (2, 3, 4, 130, None):
        assert not StageFailed("x", rc=rc).transient


_PPO_ARGS = [
    "--config",
    "configs/tiny.yaml",
    "rl.algorithm=ppo",
    "rl.generation.backend=hf",
    "rl.training.max_steps=4",
    "rl.training.save_steps=2",
    "rl.training.learning_rate=1e-3",
    "rl.arm=rl-ppo",
]


@pytest.mark.slow
def test_ppo_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, cache_dir):
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)

    def ppo(root, extra_env):
        cmd = [sys.executable, "-m", "stages.rl", *_PPO_ARGS, f"runs_root={root}"]
        return subprocess.run(cmd, cwd=REPO, env=extra_env, capture_output=True, text=True, timeout=600)

    clean = ppo(tmp_path / "clean", env)
    assert clean.returncode == 0, clean.stderr[-2000:]
    crashed = ppo(tmp_path / "crash", {**env, FAULT_ENV: "2"})
    arm = tmp_path / "crash" / "tiny" / "rl-ppo"
    assert crashed.returncode == -signal.SIGKILL and (arm / "trainer" / "checkpoint-2" / "DONE").is_file()
    assert not (arm / "DONE").exists()
    resumed = ppo(tmp_path / "crash", env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming PPO" in resumed.stderr

    def rows(root):
        return [json.loads(x) for x in (root / "tiny" / "rl-ppo" / "metrics.jsonl").read_text().splitlines()]

    a, b = rows(tmp_path / "clean"), rows(tmp_path / "crash")
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # every step once: 1-2 before the kill, 3-4 after
    for key in ("reward", "kl", "policy_loss", "value_loss"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-4, abs=1e-6), key
    w_clean = load_file(tmp_path / "clean" / "tiny" / "rl-ppo" / "checkpoint" / "model.safetensors")
    w_res = load_file(arm / "checkpoint" / "model.safetensors")
    assert max(float((w_clean[k] - w_res[k]).abs().max()) for k in w_clean) < 1e-5
