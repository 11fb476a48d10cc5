"""The default model's SFT arms and a long RL from both, on the lent GPU machine: what the CPU budget cannot show.

Runs the product's own stages as child processes, one at a time, into ``--runs-root``:

1. ``stages.sft`` for the default config's ``sft`` and ``rpsft`` arms (one seed, the default recipe, on the GPU);
2. ``benchmarks/rl_setting.py`` from both arms with a longer GRPO setting than two CPU cores afford (``--setting``),
   each RL checkpoint read against its own initial checkpoint, paired by item, and the difference of the two gains
   (claim (c)'s reading).

Writes ``--out`` (the SFT arms' wall times and summaries, the RL JSON's path) after every step, and the RL JSON beside
it; work that would start past ``--deadline-s`` is skipped and says so, and a child past it is stopped.

    python scripts/gpu_check/arms.py --out $OUT/gpu_arms.json          # the GPU machine (device.sh --run --arms)
    python scripts/gpu_check/arms.py --smoke --out runs/gpu-arms.json  # a CPU, the tiny model: the script's test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from stages.store import atomic_write_json  # noqa: E402 - the repository goes on the path first

FULL = {
    "config": "configs/smollm2-cpu.yaml",
    "setting": "t0.7-lr3e-5-mixed-8x8-30steps",
    # every stage: the GPU, transformers generation (the machine has no vLLM), evaluation in large batches
    "stage_set": ["device=cuda", "rl.generation.backend=hf", "eval.backend=hf", "eval.batch_size=256"],
    "rl_set": [],
    "eval_size": None,
}
SMOKE = {
    "config": "configs/tiny.yaml",
    "setting": "t0.7-lr3e-5-mixed-8x8-30steps",
    "stage_set": ["device=cpu"],
    "rl_set": ["rl.training.max_steps=2", "rl.generation.max_completion_length=8", "rl.prompt_filter.samples=0"],
    "eval_size": 4,
}


def run_child(cmd: list[str], until: float, log: Path) -> dict:
    """``cmd`` from the repository root, stopped at the monotonic time ``until``; its output appended to ``log``."""
    t0 = time.monotonic()
    left = until - t0
    if left < 30:
        return {"skipped": f"deadline: {left:.0f} s left"}
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=left).returncode
        except subprocess.TimeoutExpired:
            ran = round(time.monotonic() - t0, 1)
            return {"stopped": f"deadline: ran {ran:.0f} s", "wall_s": ran}
    return {"rc": rc, "wall_s": round(time.monotonic() - t0, 1)}


def tail(log: Path, n: int = 4000) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return text[-n:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON to write (on the device: under $OUT)")
    parser.add_argument("--smoke", action="store_true", help="the tiny model on the CPU: the test of this script")
    parser.add_argument("--runs-root", default=None, help="default: runs/gpu-arms beside --out's run, or a temp dir")
    parser.add_argument("--deadline-s", type=float, default=480.0, help="nothing starts or runs past this")
    args = parser.parse_args(argv)
    p = SMOKE if args.smoke else FULL
    until = time.monotonic() + args.deadline_s
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs_root or REPO / "runs" / "gpu-arms").resolve()
    runs.mkdir(parents=True, exist_ok=True)
    log = out.with_name(out.stem + ".log")
    os.environ.setdefault("SFT2RL_CACHE_DIR", str(REPO / ".cache" / "sft2rl"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    result: dict = {
        "mode": "smoke" if args.smoke else "full",
        "config": p["config"],
        "setting": p["setting"],
        "stage_overrides": p["stage_set"],
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cores": os.cpu_count(),
            "arch": platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "sft": {},
    }
    atomic_write_json(out, result)
    common = [f"runs_root={runs}", "run_name=init", "seed=0", "seeds=[]", *p["stage_set"]]
    for method in ("sft", "rpsft"):
        cmd = [sys.executable, "-m", "stages.sft", "--config", p["config"], *common, f"method={method}"]
        got = run_child(cmd, until, log)
        summary = runs / "init" / method / "metrics.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            got["train_runtime_s"] = s.get("train_runtime_s")
            got["summary"] = {k: v for k, v in s.items() if isinstance(v, int | float | str)}
        if got.get("rc"):
            got["log_tail"] = tail(log)
        result["sft"][method] = got
        atomic_write_json(out, result)
        print(f"sft {method}: {got}", flush=True)
    rl_out = out.with_name("rl_gpu.json")
    cmd = [sys.executable, "benchmarks/rl_setting.py", "--config", p["config"], "--init-run", str(runs / "init")]
    cmd += ["--runs", f"{p['setting']}:sft,{p['setting']}:rpsft", "--runs-root", str(runs), "--out", str(rl_out)]
    cmd += [x for s in p["stage_set"] for x in ("--stage-set", s)] + [x for s in p["rl_set"] for x in ("--set", s)]
    if p["eval_size"]:
        cmd += ["--eval-size", str(p["eval_size"])]
    got = run_child(cmd, until, log)
    if got.get("rc"):
        got["log_tail"] = tail(log)
    result["rl"] = got | {"json": rl_out.name}
    atomic_write_json(out, result)
    print(f"rl: {got}", flush=True)
    ok = all(v.get("rc") == 0 for v in result["sft"].values()) and got.get("rc") == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
