"""Generation speed of vLLM (CPU) vs transformers generate, side by side, and RL steps split into their phases, on
SmolLM2-135M-Instruct at the default RL batch shape. Writes JSON.

    python benchmarks/generation.py --out benchmarks/results/generation.json

Both backends sample the same prompts (one RL step's batch: prompts x completions at the config's temperature and
length, fp32, the model's chat template), interleaved over rounds; the machine (CPU model, vector flags, cores,
threads) is recorded with the figures, which differ by machine kind. The RL splits come from running the RL stage
itself for a few steps from the base model: GRPO with vLLM, and PPO with each engine (transformers, vLLM), each step
split into weight push into the engine (``timing/weight_sync_s``), generation proper (``timing/generation_s``) and
training (``timing/training_s``); the first step is dropped (engine warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PHASES = ("timing/weight_sync_s", "timing/generation_s", "timing/training_s", "step_time_s")


def rl_steps(
    config: str, run_name: str, algorithm: str, backend: str, steps: int, overrides: list[str] | None = None
) -> list[dict]:
    """The per-step rows of a short RL run (the stage itself, in a child process, in a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "stages.rl", "--config", config, *(overrides or [])]
        cmd += [f"runs_root={tmp}", "arm=rl-bench"]
        cmd += [f"algorithm={algorithm}", f"max_steps={steps}", f"backend={backend}", "rl.training.save_steps=1000"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        # one seed's folder (a multi-seed config runs RL for rl.seeds only): <run>[/seeds/seed-<s>]/rl-bench/
        found = sorted((Path(tmp) / run_name).rglob("rl-bench/metrics.jsonl"))
        if not found:
            raise SystemExit(f"the {algorithm} run wrote no metrics.jsonl under {tmp}: {proc.stderr[-2000:]}")
        path = found[0]
        return [json.loads(x) for x in path.read_text().splitlines()]


def phases(rows: list[dict]) -> dict[str, float]:
    """Median seconds per phase over the steps after the first."""
    steady = rows[1:] or rows
    return {k.split("/")[-1]: statistics.median(r.get(k, 0.0) for r in steady) for k in PHASES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="configs/smollm2-cpu.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grpo-steps", type=int, default=3)
    parser.add_argument("--ppo-steps", type=int, default=3, help="0: skip the PPO runs")
    parser.add_argument("overrides", nargs="*", help="config overrides for every measurement (e.g. device=cuda)")
    args = parser.parse_args(argv)
    import torch

    from stages.backends import machine, probe_in_child
    from stages.config import load_config

    cfg = load_config(args.config, args.overrides)
    # the measurement `backend: auto` makes (stages/backends.py, in a child process), at the RL step's batch shape
    probe = probe_in_child(cfg, rounds=args.rounds)
    grpo = rl_steps(args.config, cfg.run_name, "grpo", "vllm", args.grpo_steps, args.overrides)
    grpo_split = phases(grpo)
    result = {
        "model": "SmolLM2-135M-Instruct",
        # CPU model, the vector flags vLLM-CPU uses, cores, threads: figures differ by machine kind
        "machine": {**machine(), "torch_threads": cfg.torch_threads or torch.get_num_threads()},
        **probe,
        "grpo_step_generation_s": grpo_split["generation_s"],
        "grpo_step_weight_sync_s": grpo_split["weight_sync_s"],
        "grpo_step_training_s": grpo_split["training_s"],
        "grpo_steps": grpo,
    }
    if args.ppo_steps:
        ppo = {b: rl_steps(args.config, cfg.run_name, "ppo", b, args.ppo_steps, args.overrides) for b in ("hf", "vllm")}
        result["ppo_step"] = {b: phases(rows) for b, rows in ppo.items()}  # per engine: seconds per phase
        result["ppo_steps"] = ppo
    result["vllm_over_hf"] = result["vllm_tokens_per_s"] / result["hf_tokens_per_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_steps")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
