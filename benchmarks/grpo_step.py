"""What a GRPO step costs, and what the work TRL does by default adds to it: the RL stage as the config runs it, from
one initial checkpoint, in three variants back to back, one at a time; writes JSON.

- ``trl_default``: TRL's defaults: the importance-sampling correction on (one more forward of every completion per
  step, to compare the trainer's log-probs with vLLM's) and gradient checkpointing on (activations recomputed in the
  backward pass);
- ``checkpointing``: the correction off, gradient checkpointing on (what each of the two costs);
- ``default``: the stage as it runs (the correction off where vLLM is colocated on a CPU, whose log-probs are the
  trainer's; gradient checkpointing off unless rl.training asks for it);
- ``beta0``: as ``default`` with ``rl.training.beta=0``: no reference model (and no KL measured).

Each variant is a stage process (``python -m stages.rl``) into a temporary runs folder. A step's cost is TRL's own
timing read from the arm's metrics.jsonl (``timing/training_s``: forward and backward passes of the step, without
generation and the weight push), the median over the steps after the first.

    python benchmarks/grpo_step.py --init runs/smollm2-cpu/seeds/seed-0/sft/checkpoint \
        --out benchmarks/results/grpo_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS: dict[str, list[str]] = {
    "trl_default": ['rl.trl={"vllm_importance_sampling_correction": true}', "rl.training.gradient_checkpointing=true"],
    "checkpointing": ["rl.training.gradient_checkpointing=true"],
    "default": [],
    "beta0": ["rl.training.beta=0.0"],
}
KEYS = ("timing/training_s", "timing/generation_s", "timing/weight_sync_s", "step_time_s")


def _variant(config: str, init: str, runs: Path, name: str, extra: list[str], steps: int) -> dict:
    cmd = [sys.executable, "-m", "stages.rl", "--config", str(REPO / config), f"rl.init={init}", f"rl.arm=rl-{name}"]
    cmd += [f"runs_root={runs}", "run_name=grpo-step", "seeds=[]", f"rl.training.max_steps={steps}"]
    cmd += ["rl.generation.backend=vllm", f"rl.training.save_steps={steps}", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)  # noqa: S603 - our own stage
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (runs / "grpo-step" / f"rl-{name}" / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    out = {"overrides": extra, "stage_wall_s": round(wall, 1), "steps": len(rows)}
    for key in KEYS:
        vals = [r[key] for r in later if key in r]
        out[key.replace("timing/", "") + "_median"] = round(statistics.median(vals), 3) if vals else None
    out["kl_logged"] = any("kl" in r for r in rows)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smollm2-cpu.yaml")
    parser.add_argument("--init", required=True, help="the initial checkpoint (an SFT arm's checkpoint folder)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/grpo_step.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("SFT2RL_CACHE_DIR", str(REPO / ".cache" / "sft2rl"))
    from stages.backends import machine  # light: reads /proc/cpuinfo

    result: dict = {
        "config": args.config,
        "init": args.init,
        "what": "TRL's timing/training_s per GRPO step (forward and backward, no generation), median of steps 2..N",
        "machine": machine(),
        "variants": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="grpo-step-"))
    try:
        for name, extra in VARIANTS.items():
            row = _variant(args.config, args.init, tmp, name, extra, args.steps)
            result["variants"][name] = row
            print(f"{name}: training {row['training_s_median']} s per step", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    v = result["variants"]
    result["default_over_trl_default"] = round(
        v["default"]["training_s_median"] / v["trl_default"]["training_s_median"], 3
    )
    result["beta0_over_default"] = round(v["beta0"]["training_s_median"] / v["default"]["training_s_median"], 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
