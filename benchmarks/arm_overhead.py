"""RPSFT's cost inside a real arm: the SFT stage as the default config runs it (its logging every step, the
diagnostics, trainer checkpoints, the final save), plain SFT beside RPSFT, at gradient accumulation 1 and 4; writes
JSON. The bare-step ratio is ``benchmarks/rpsft_overhead.py``'s; this is what a user pays.

Each arm is a stage process (``python -m stages.sft``) into a temporary runs folder, the arms of one setting run back
to back (sft, rpsft, then again in the other order with ``--rounds 2``), one at a time. The ratio reads the trainer's
own ``train_runtime_s`` (the training loop, saves included; not the model load or the anchors, which are cached).
``--ref REV`` also measures the code of another revision (a git worktree) in the same run, for a before / after.

    python benchmarks/arm_overhead.py --out benchmarks/results/arm_overhead.json \
        --into benchmarks/results/rpsft_overhead.json

``--into`` (what ``make bench`` passes) also writes the real-arm ratios beside the bare-step ones of
``benchmarks/rpsft_overhead.py``'s file: ``arm_ratio_ga1``, ``arm_ratio_ga4`` (this code's), measured on the same
machine right after it.
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


def _machine() -> dict:
    """CPU model and vector flags, cores: the record every benchmark of this project writes (stages.backends)."""
    sys.path.insert(0, str(REPO))
    from stages.backends import machine

    return machine()


def _commit() -> str:
    """The code measured: its commit, ``-dirty`` with uncommitted changes."""
    cmd = ["git", "describe", "--always", "--dirty"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: S603


def _arm(code: Path, config: str, runs: Path, method: str, ga: int, steps: int, name: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "stages.sft",
        "--config",
        str(REPO / config),
        f"sft.method={method}",
        f"runs_root={runs}",
        f"run_name={name}",
        "seeds=[]",
        f"sft.training.max_steps={steps}",
        f"sft.training.gradient_accumulation_steps={ga}",
        f"sft.training.warmup_steps={min(4, steps // 4)}",
    ]
    env = {**os.environ, "PYTHONPATH": str(code)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)  # noqa: S603 - our own stage
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{method} GA {ga} failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    m = json.loads((runs / name / method / "metrics.json").read_text())
    return {"train_runtime_s": round(m["train_runtime_s"], 2), "stage_wall_s": round(wall, 1), "steps": m["steps"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smollm2-cpu.yaml")
    # the default recipe's length: 80 optimizer steps at GA 1, the same 80 micro-batches at GA 4 (a shorter arm
    # weighs the first steps' and the saves' fixed costs more than a user's arm does)
    parser.add_argument("--steps-ga1", type=int, default=80, help="0: measure GA 4 only")
    parser.add_argument("--steps-ga4", type=int, default=20, help="0: measure GA 1 only")
    parser.add_argument("--rounds", type=int, default=1, help="sft/rpsft pairs per setting (order alternates)")
    parser.add_argument("--ref", default=None, help="also measure this git revision's code (before / after)")
    parser.add_argument("--out", default="benchmarks/results/arm_overhead.json")
    parser.add_argument("--into", default=None, help="a bare-step JSON file to add the real-arm ratios to")
    args = parser.parse_args(argv)
    os.environ.setdefault("SFT2RL_CACHE_DIR", str(REPO / ".cache" / "sft2rl"))

    codes = {"current": REPO}
    tmp = Path(tempfile.mkdtemp(prefix="arm-overhead-"))
    if args.ref:
        wt = tmp / "ref"
        subprocess.run(["git", "worktree", "add", "--detach", str(wt), args.ref], cwd=REPO, check=True)  # noqa: S603,S607
        codes[f"ref {args.ref}"] = wt
    result: dict = {
        "config": args.config,
        "what": "train_runtime_s of the SFT stage's training loop (default config: logging every step, diagnostics, "
        "trainer checkpoints every save_steps), rpsft / sft side by side",
        "machine": _machine(),
        "commit": _commit(),
        "settings": [],
    }
    if Path(args.out).is_file():  # the records of other machines stay when this run replaces the file's own
        result["other_machines"] = json.loads(Path(args.out).read_text()).get("other_machines", [])
    try:
        for label, code in codes.items():
            for ga, steps in ((1, args.steps_ga1), (4, args.steps_ga4)):
                if steps <= 0:  # --steps-ga4 0: that setting is not measured
                    continue
                runs: dict[str, list[dict]] = {"sft": [], "rpsft": []}
                for r in range(args.rounds):
                    order = ("sft", "rpsft") if r % 2 == 0 else ("rpsft", "sft")
                    for method in order:
                        runs[method].append(
                            _arm(code, args.config, tmp / "runs", method, ga, steps, f"{label.split()[0]}-ga{ga}-{r}")
                        )
                sft = statistics.median(x["train_runtime_s"] for x in runs["sft"])
                rp = statistics.median(x["train_runtime_s"] for x in runs["rpsft"])
                row = {
                    "code": label,
                    "gradient_accumulation_steps": ga,
                    "steps": steps,
                    "runs": runs,
                    "sft_s_per_step": round(sft / steps, 3),
                    "rpsft_s_per_step": round(rp / steps, 3),
                    "ratio": round(rp / sft, 3),
                    # each round's two arms ran back to back: their ratio is robust to the machine's slow drifts
                    "ratio_per_round": [
                        round(r["train_runtime_s"] / s["train_runtime_s"], 3)
                        for r, s in zip(runs["rpsft"], runs["sft"], strict=True)
                    ],
                }
                result["settings"].append(row)
                print(f"{label} GA {ga}: rpsft / sft = {row['ratio']:.3f} ({rp:.0f} s vs {sft:.0f} s)", flush=True)
                out = Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=1) + "\n")
    finally:
        if args.ref:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "ref")], cwd=REPO, check=False)  # noqa: S603,S607
        shutil.rmtree(tmp, ignore_errors=True)  # each arm left a trainer checkpoint (1.5 GB on the default)
    if args.into:
        into = Path(args.into)
        bare = json.loads(into.read_text()) if into.is_file() else {}
        for row in result["settings"]:
            if row["code"] == "current":
                bare[f"arm_ratio_ga{row['gradient_accumulation_steps']}"] = row["ratio"]
        bare["arm_ratio_source"] = f"{args.out}: {result['what']}"
        into.write_text(json.dumps(bare, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
