"""Which CPU setting makes plain SFT forget? Candidate SFT settings side by side against the base model: in-domain
strict and lenient accuracy, every out-of-domain probe, KL to the base; each difference to the base paired by item
with its interval. Writes JSON; the default config is chosen from it (docs/measured.md, "What the default run shows").

    python benchmarks/forgetting_setting.py --config configs/smollm2-cpu.yaml \\
        --lrs 2e-5,1e-4,2e-4,4e-4 --no-tag-lrs 2e-4 --out benchmarks/results/forgetting_setting.json

Every candidate is one plain-SFT arm (its own run folder under --runs-root) evaluated with the config's benchmarks
plus the chat probes; the base model is evaluated once. Stages run as child processes, one at a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The out-of-domain suite the candidates are read on: the log-likelihood probes and the chat probes.
PROBES = [
    {"name": "agreement", "source": "agreement", "domain": "out", "size": 200},
    {"name": "facts", "source": "facts", "domain": "out", "size": 200},
    {"name": "chat_facts", "source": "chat_facts", "domain": "out", "size": 60, "max_new_tokens": 32},
    {"name": "instructions", "source": "instructions", "domain": "out", "size": 60, "max_new_tokens": 64},
]
TODAY_KL = 0.019  # nats/token: plain SFT at lr 2e-5, 40 steps (the previous default run)


def _stage(module: str, config: str, overrides: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, "--config", config, *overrides], check=True, cwd=REPO)
    return time.perf_counter() - t0


def _paired(a: dict, b: dict, metric: str) -> dict | None:
    from stages.metrics import paired_diff_ci

    if metric not in a or metric not in b:
        return None
    ids = [i for i in a[metric]["ids"] if i in set(b[metric]["ids"])]
    ma = dict(zip(a[metric]["ids"], a[metric]["scores"], strict=True))
    mb = dict(zip(b[metric]["ids"], b[metric]["scores"], strict=True))
    d, lo, hi = paired_diff_ci([[ma[i] for i in ids]], [[mb[i] for i in ids]], n_boot=2000)
    return {"diff": d, "ci_low": lo, "ci_high": hi, "n": len(ids)}


def metrics_file_timing(path: Path) -> float | None:
    return json.loads(path.read_text()).get("timing", {}).get("total_s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smollm2-cpu.yaml")
    parser.add_argument("--lrs", default="2e-5,1e-4,2e-4,4e-4", help="learning rates, with the SFT system prompt")
    parser.add_argument("--no-tag-lrs", default="", help="learning rates also run without the SFT system prompt")
    parser.add_argument("--steps", type=int, default=None, help="SFT steps (default: the config's)")
    parser.add_argument(
        "--method",
        default="sft",
        help="the method of every candidate (default plain sft; e.g. rpsft with --set "
        "sft.rpsft.lambda=100 to read how much of the forgetting a regulariser keeps)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="extra dotted overrides for every candidate, e.g. "
        "sft.training.per_device_train_batch_size=4 (repeatable; recorded with each candidate)",
    )
    parser.add_argument(
        "--previous",
        default="",
        help="eval folder of the previous default's SFT arm (e.g. runs/forgetting-setting/lr2e-05/eval/sft): each "
        "candidate's in-domain accuracy is also compared with it, paired by item",
    )
    parser.add_argument("--runs-root", default="runs/forgetting-setting")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from stages.config import load_config

    cfg = load_config(REPO / args.config)
    # in-domain greedy only (strict and lenient); Avg@k sampling would triple the time and is not the question here
    benches = [
        {**b, "samples": 0} for b in cfg.eval.model_dump(mode="json")["benchmarks"] if b["domain"] == "in"
    ] + PROBES
    # one training seed per candidate (the default config trains two): the candidates are read against the base
    common = [f"runs_root={args.runs_root}", f"eval.benchmarks={json.dumps(benches)}", "seeds=[]"]
    if args.steps:
        common.append(f"sft.training.max_steps={args.steps}")
    common += args.set
    candidates = [(float(x), True) for x in args.lrs.split(",") if x] + [
        (float(x), False) for x in args.no_tag_lrs.split(",") if x
    ]
    results, base_scores, base_metrics = [], None, None
    for lr, tag in candidates:
        run_name = ("" if args.method == "sft" else f"{args.method}-") + f"lr{lr:g}" + ("" if tag else "-notag")
        over = [*common, f"run_name={run_name}", f"sft.training.learning_rate={lr}", f"sft.method={args.method}"]
        if not tag:
            over.append("data.system_prompt=''")
        sft_s = _stage("stages.sft", args.config, over)
        arm = args.method  # the arm folder is named after its method
        models = f"[{arm}]" if base_scores is not None else f"[base,{arm}]"
        eval_s = _stage("stages.evaluate", args.config, [*over, f"eval.models={models}"])
        eval_dir = REPO / args.runs_root / run_name / "eval"
        if base_scores is None:
            base_scores = json.loads((eval_dir / "base" / "scores.json").read_text())
            base_metrics = json.loads((eval_dir / "base" / "metrics.json").read_text())["metrics"]
        scores = json.loads((eval_dir / arm / "scores.json").read_text())
        metrics = json.loads((eval_dir / arm / "metrics.json").read_text())["metrics"]
        vs_base = {m: _paired(scores, base_scores, m) for m in scores}
        vs_previous = None
        if args.previous:
            prev = json.loads((Path(args.previous) / "scores.json").read_text())
            vs_previous = {m: _paired(scores, prev, m) for m in scores if metrics.get(m, {}).get("domain") == "in"}
        drops = [m for m, d in vs_base.items() if d and m.endswith("/accuracy") and d["ci_high"] < 0]
        ood_drops = [m for m in drops if metrics.get(m, {}).get("domain") == "out"]
        results.append(
            {
                "method": args.method,
                "learning_rate": lr,
                "system_prompt_tag": tag,
                "steps": args.steps or cfg.sft.training.max_steps,
                "overrides": args.set,
                "sft_s": sft_s,  # wall time of the stage processes of this invocation (a few s: complete, skipped)
                "eval_s": eval_s,
                # the persisted measures, the same on a rerun that skips complete stages
                "sft_train_runtime_s": json.loads(
                    (REPO / args.runs_root / run_name / arm / "metrics.json").read_text()
                )["train_runtime_s"],
                "eval_model_s": metrics_file_timing(eval_dir / arm / "metrics.json"),
                "metrics": {m: {k: v[k] for k in ("value", "ci_low", "ci_high", "n")} for m, v in metrics.items()},
                "vs_base": vs_base,
                "vs_previous_default": vs_previous,
                "ood_drops_beyond_interval": ood_drops,
                "kl_ratio_to_previous_default": metrics.get("forgetting/kl_to_base", {}).get("value", 0) / TODAY_KL,
            }
        )
        print(f"{run_name}: OOD drops {ood_drops}; {json.dumps({m: v['value'] for m, v in metrics.items()})}")
    out = {
        "config": args.config,
        "criterion": "plain SFT loses out-of-domain accuracy with an interval that excludes 0 (or KL >= 10x "
        f"{TODAY_KL} with a probe drop), in-domain accuracy not worse than the previous default",
        "base": {m: {k: v[k] for k in ("value", "ci_low", "ci_high", "n")} for m, v in (base_metrics or {}).items()},
        "candidates": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
