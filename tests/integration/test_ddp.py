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


def _two_processes(stage: str, overrides: list[str], env: dict) -> None:
    """Run a stage on two CPU processes through the launcher path the flows use for GPU configs (accelerate launch
    with a config file)."""
    from pipeline.params import Launcher, StageParams
    from pipeline.runner import stage_command

    params = StageParams(
        config="configs/tiny.yaml",
        overrides=overrides,
        launcher=Launcher(num_processes=2, accelerate_config="configs/accelerate/cpu-ddp.yaml"),
    )
    cmd = stage_command(stage, params)
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    _run(cmd, env)


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
    _two_processes("sft", [*COMMON, f"runs_root={tmp_path / 'two'}", "sft.training.per_device_train_batch_size=2"], env)

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


def test_flat_or_misshapen_parameters_are_refused_not_silently_skipped():
    # Flattened parameters (ZeRO-3, FSDP1) look 1-D, so no matrix matches. RPSFT must fail loudly.
    flat = torch.nn.ParameterDict({"w": torch.nn.Parameter(torch.randn(64))})
    with pytest.raises(RPSFTError, match="include / exclude"):
        compute_anchors(select_matrices(flat.named_parameters(), [".*"], []), None, 0.25)
    # A shard of another shape than its anchor is refused too.
    full = [("w", torch.nn.Parameter(torch.randn(8, 6)))]
    anchors = compute_anchors(full, None, 0.5)
    with pytest.raises(RPSFTError, match="another model"):
        RPSFTRegularizer([("w", torch.nn.Parameter(torch.randn(4, 6)))], anchors, 1.0)


PPO = [
    "rl.algorithm=ppo",
    "rl.generation.backend=hf",
    "rl.generation.max_completion_length=24",
    "rl.training.max_steps=3",
    "rl.training.learning_rate=1e-3",
    "rl.ppo.kl_coef=0.5",
    "rl.arm=rl-ppo",
    "torch_threads=1",
]


# 40 steps: at 30 the fine-tuned tiny model earned no reward on an AVX2 machine (the check below needs some); at 60
# PPO at lr 1e-3 moves it so far (KL ~1.1) that round-off between 1 and 2 processes passes 1e-4
SFT_INIT = ["sft.training.max_steps=40", "sft.training.learning_rate=1e-2", "torch_threads=1"]


@pytest.mark.slow
def test_two_process_ppo_matches_one_process(tmp_path, cache_dir):
    """PPO under data parallelism: each process samples and scores its share of the step's prompts, the rows are
    gathered, every process trains on its slice of the same global mini-batches, and DDP averages the gradients of
    the policy and the value head; the run must be the one-process run on the whole batch."""
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    # From a quickly fine-tuned tiny model: it ends its answers at different lengths and earns some reward, so the
    # processes' slices differ in token count and the advantages carry reward, not only the KL penalty.
    sft = tmp_path / "sft"
    _run([sys.executable, "-m", "stages.sft", "--config", "configs/tiny.yaml", f"runs_root={sft}"] + SFT_INIT, env)
    ppo = [*PPO, f"rl.init={sft / 'tiny' / 'sft' / 'checkpoint'}"]
    # Global batch 8 completions (2 prompts x 4) either way: one process x 8, or two processes x 4.
    _run(
        [
            sys.executable,
            "-m",
            "stages.rl",
            "--config",
            "configs/tiny.yaml",
            *ppo,
            f"runs_root={tmp_path / 'one'}",
            "rl.training.per_device_train_batch_size=8",
        ],
        env,
    )
    _two_processes("rl", [*ppo, f"runs_root={tmp_path / 'two'}", "rl.training.per_device_train_batch_size=4"], env)

    one, two = tmp_path / "one" / "tiny" / "rl-ppo", tmp_path / "two" / "tiny" / "rl-ppo"
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert (m1["num_processes"], m2["num_processes"]) == (1, 2)
    r1, r2 = ([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two))
    assert [r["step"] for r in r2] == [1, 2, 3]  # rank 0 alone writes the rows
    # grad_norm is taken before clipping: a gradient off by a constant factor (a missing or doubled average over
    # processes, a per-process token count) shows there, though AdamW's update would hide it
    # Step 1 starts from the same weights: the same numbers up to the reductions' round-off (1e-4; grad_norm, a norm
    # over all weights, 1e-3). Later steps follow AdamW updates, which turn round-off in near-zero gradients into
    # whole steps on single weights (see the weights below): 1e-3, and 1e-2 for the norm of the gradient of weights
    # that already differ (step 3's differed by 2.2e-3 on an AVX-512 machine, where the reductions' kernels round
    # differently; the weights themselves are held to 1e-2 of the update below). Losses are sums of terms that nearly
    # cancel (whitened advantages have mean 0), so their error is measured against the terms' scale. A factor-of-2
    # fault (a missing or doubled average over processes) is two orders above every tolerance.
    scale = max(abs(r["policy_loss"]) + abs(r["value_loss"]) for r in r1)
    for key in ("completions/mean_length", "reward", "kl", "loss", "policy_loss", "value_loss", "grad_norm"):
        for i, (a, b) in enumerate(zip(r1, r2, strict=True)):
            rel = (1e-2 if i > 0 else 1e-3) if key == "grad_norm" else (1e-3 if i > 0 else 1e-4)
            tol = rel * scale if key in ("loss", "policy_loss") else 1e-6
            assert b[key] == pytest.approx(a[key], rel=rel, abs=tol), (key, a["step"])
    assert abs(r1[-1]["kl"]) > 1e-3  # the policy moved: the comparison is not between two untouched models
    assert min(r["completions/mean_length"] for r in r1) < 24 and max(r["reward"] for r in r1) > 0
    w0 = load_file(sft / "tiny" / "sft" / "checkpoint" / "model.safetensors")
    w1, w2 = load_file(one / "checkpoint" / "model.safetensors"), load_file(two / "checkpoint" / "model.safetensors")
    assert w1.keys() == w2.keys()

    def norm(d) -> float:
        return float(torch.sqrt(sum((t.double() ** 2).sum() for t in d.values())))

    # The same update up to round-off: the runs differ by 0.07% of what PPO changed (AdamW turns round-off in
    # near-zero gradients into whole steps on single weights, so an elementwise bound says less); with the
    # gradient all-reduce switched off they differ by as much as the update itself.
    update = norm({k: w1[k] - w0[k] for k in w1})
    assert update > 0.1 and norm({k: w1[k] - w2[k] for k in w1}) < 1e-2 * update
    h1, h2 = load_file(one / "value_head.safetensors"), load_file(two / "value_head.safetensors")
    assert norm({k: h1[k] - h2[k] for k in h1}) < 1e-3 * norm(h1)
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in one.iterdir() if not p.name.startswith(".")
    )


def test_ppo_mini_batches_that_leave_a_process_without_rows_are_refused():
    from stages.config import ConfigError
    from stages.ppo import PPOSettings
    from stages.rl import _check_ppo_processes

    s = PPOSettings(1e-3, 2, 1, 2, 1, 4, 1.0, 0.95, 0.2, 0.2, 0.1, 0.05, 1.0, 0.0, {})
    _check_ppo_processes(s, 1)  # one process: any split
    with pytest.raises(ConfigError, match="num_mini_batches=4"):
        _check_ppo_processes(s, 2)  # 4 rows, 4 mini-batches: one row each, nothing for the second process
    _check_ppo_processes(PPOSettings(**{**s.__dict__, "num_mini_batches": 2}), 2)


@pytest.mark.slow
def test_two_process_grpo_runs_with_rank_zero_writing_alone(tmp_path, cache_dir):
    """GRPO (TRL) through the same launcher: it completes, and only rank 0 writes the arm (before, every rank
    published the same checkpoint folder and metrics)."""
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    overrides = ["rl.training.max_steps=2", "rl.training.per_device_train_batch_size=4", "rl.arm=rl-grpo"]
    _two_processes("rl", [*overrides, "torch_threads=1", f"runs_root={tmp_path}"], env)
    arm = tmp_path / "tiny" / "rl-grpo"
    rows = [json.loads(x) for x in (arm / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # one row per step: rank 0 alone logs
    summary = json.loads((arm / "metrics.json").read_text())
    assert summary["algorithm"] == "grpo" and summary["steps"] == 2 and (arm / "DONE").is_file()
    assert (arm / "checkpoint" / "model.safetensors").is_file()
    assert not [p.name for p in arm.iterdir() if p.name.startswith(".") and p.name != ".lock"]  # no leftovers


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_two_processes_each_push_the_weights_into_their_own_vllm_engine(tmp_path, cache_dir, algorithm):
    """Colocated vLLM under the flows' launcher: each process holds an engine in its own process and pushes the
    updated weights into it before generating, so the log-probs of what vLLM sampled stay the trainer's (reduced
    over both processes) while the policy moves. PPO moves the tiny model from the first step (its KL and value
    terms); GRPO's advantages are 0 on the tiny model's all-zero rewards, so for GRPO this shows the two engines run
    and agree, and test_rl_vllm.py shows the push under a moving GRPO policy."""
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    overrides = [f"rl.algorithm={algorithm}", "rl.generation.backend=vllm", "rl.generation.max_completion_length=24"]
    overrides += ["rl.training.max_steps=3", "rl.training.per_device_train_batch_size=4", "rl.arm=rl-vllm"]
    overrides += ["rl.training.learning_rate=2e-2", "torch_threads=1", f"runs_root={tmp_path}"]
    if algorithm == "grpo":  # TRL then logs vLLM's and the trainer's log-prob difference (off by default on CPU)
        overrides += ['rl.trl={"vllm_importance_sampling_correction": true}']
    _two_processes("rl", overrides, env)
    arm = tmp_path / "tiny" / "rl-vllm"
    rows = [json.loads(x) for x in (arm / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert json.loads((arm / "metrics.json").read_text())["backend"] == "vllm"
    assert max(r["sampling/sampling_logp_difference/mean"] for r in rows) < 1e-4, rows
    if algorithm == "ppo":
        moved = max(float((a - b).abs().max()) for a, b in _weights(cache_dir, arm))
        assert moved > 1e-3  # the policy moved: a stale engine would have drifted


def _weights(cache_dir: Path, arm: Path):
    from stages.models import resolve_model

    before = load_file(next(Path(resolve_model(_tiny(cache_dir))).glob("*.safetensors")))
    after = load_file(arm / "checkpoint" / "model.safetensors")
    return [(after[k], before[k]) for k in after if k in before]


def _tiny(cache_dir: Path):
    from stages.config import load_config

    return load_config(REPO / "configs" / "tiny.yaml", [f"cache_dir={cache_dir}"])
