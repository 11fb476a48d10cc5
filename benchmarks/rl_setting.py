"""Which CPU RL setting moves a model? GRPO from the default's SFT and RPSFT checkpoints over a small grid of settings,
each RL checkpoint evaluated against its own initial checkpoint, paired by item. Writes JSON, read in docs/measured.md
("Does RL move the default's checkpoints?"): which setting moves both initialisations and what it costs.

    python benchmarks/rl_setting.py --config configs/smollm2-cpu.yaml \\
        --init-run runs/smollm2-cpu/seeds/seed-0 --out benchmarks/results/rl_setting.json
    # the same setting from another training seed's arms, in a folder of its own: its rows sit beside seed 0's
    python benchmarks/rl_setting.py --config configs/smollm2-cpu.yaml --init-run runs/smollm2-cpu/seeds/seed-1 \\
        --runs-root runs/rl-setting-seed-1 --runs t0.7-lr3e-5-mixed-8x4-48steps:rpsft,t0.7-lr3e-5-mixed-8x4-48steps:sft

Per setting and initialisation: the reward curve, the share of prompt groups with mixed rewards per step (a group
whose completions are all right or all wrong carries no GRPO gradient), seconds per step split into generation and
training, and the RL checkpoint's gain over its initial checkpoint in domain (greedy accuracy, and Avg@k / pass@k of
k sampled answers at the evaluation temperature, the paper's headline) and out of domain, each with its interval
(items resampled; one training seed, so about these checkpoints). The chosen setting is the cheapest whose in-domain
Avg@k gain excludes 0 from every initialisation of the grid, pooled over the training seeds it ran from.

For every setting run from both sft and rpsft, the difference of their gains per held-out item (claim (c)'s
reading, the SFT checkpoints' own gap removed) with its interval.

Every RL run and evaluation is a stage run as a child process into ``--runs-root`` (default runs/rl-setting), one at
a time: rerunning the script skips what is complete. The init checkpoints are linked into that folder (sft, rpsft),
so the RL arms are named rl-<setting>-<init>.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The grid. Every setting: beta 0 (no reference model), no importance-sampling forward (the CPU engine's log-probs
# equal the trainer's to ~1e-5, docs/rl.md), 32 completions per optimizer step (4 prompts x 8 unless a setting says
# otherwise). What varies: sampling temperature (how many groups have mixed rewards), learning rate (how far Adam
# moves a weight) and how the 32 completions are spread over prompts.
COMMON = [
    "rl.training.beta=0.0",
    "rl.generation.num_generations=8",
    "rl.training.per_device_train_batch_size=16",
    "rl.training.gradient_accumulation_steps=2",
    "rl.training.lr_scheduler_type=constant_with_warmup",
    "rl.training.warmup_steps=2",
    "rl.training.save_steps=100",
    'rl.trl={"vllm_importance_sampling_correction": false}',
]
SETTINGS: dict[str, list[str]] = {
    "t1.0-lr2e-5": ["rl.generation.temperature=1.0", "rl.training.learning_rate=2e-5", "rl.training.max_steps=24"],
    "t0.7-lr2e-5": ["rl.generation.temperature=0.7", "rl.training.learning_rate=2e-5", "rl.training.max_steps=24"],
    "t0.7-lr5e-5": ["rl.generation.temperature=0.7", "rl.training.learning_rate=5e-5", "rl.training.max_steps=24"],
    "t0.7-lr5e-5-12steps": [
        "rl.generation.temperature=0.7",
        "rl.training.learning_rate=5e-5",
        "rl.training.max_steps=12",
    ],
    # the same steps on prompts that carry a gradient: each RL prompt first sampled 8 times from the initial
    # checkpoint, training only on those whose rewards differ (about 40% of the default's prompts at 0.7)
    "t0.7-lr2e-5-mixed": [
        "rl.generation.temperature=0.7",
        "rl.training.learning_rate=2e-5",
        "rl.training.max_steps=24",
        "rl.prompt_filter.samples=8",
        "rl.num_prompts=160",
    ],
    "t0.7-lr3e-5-mixed": [
        "rl.generation.temperature=0.7",
        "rl.training.learning_rate=3e-5",
        "rl.training.max_steps=24",
        "rl.prompt_filter.samples=8",
        "rl.num_prompts=160",
    ],
    # the same 32 completions per step spent on twice the prompts: 8 filtered prompts x 4 completions. A group of 4
    # drawn from a prompt answered right about a third of the time is mixed about 3 times in 4, so about 6 groups
    # per step carry a gradient against about 2 in the row above, at the same cost per step
    "t0.7-lr3e-5-mixed-8x4": [
        "rl.generation.temperature=0.7",
        "rl.training.learning_rate=3e-5",
        "rl.training.max_steps=24",
        "rl.prompt_filter.samples=8",
        "rl.num_prompts=160",
        "rl.generation.num_generations=4",
    ],
    # the 8x4 setting for twice the steps, filtered from all the config's RL prompts (256, about 90 kept) so the 384
    # prompt draws of 48 steps see each kept prompt about four times rather than seven
    "t0.7-lr3e-5-mixed-8x4-48steps": [
        "rl.generation.temperature=0.7",
        "rl.training.learning_rate=3e-5",
        "rl.training.max_steps=48",
        "rl.prompt_filter.samples=8",
        "rl.generation.num_generations=4",
    ],
    # a GPU's budget (scripts/gpu_check/arms.py): the 8x4 setting's temperature, learning rate and prompt filter, with
    # twice the completions per step (8 prompts x 8) and 30 steps, filtered from the config's RL prompts (the ones
    # the evaluation holds out: more prompts would draw past them)
    "t0.7-lr3e-5-mixed-8x8-30steps": [
        "rl.generation.temperature=0.7",
        "rl.training.learning_rate=3e-5",
        "rl.training.max_steps=30",
        "rl.prompt_filter.samples=8",
        "rl.training.per_device_train_batch_size=32",
    ],
    # the work the settings above leave out, put back, for its cost per step (read against the first steps of
    # t0.7-lr5e-5): a reference model for a KL term and the trainer's forward for the engine's log-probs
    "t0.7-lr5e-5-with-ref-and-is": [
        "rl.generation.temperature=0.7",
        "rl.training.learning_rate=5e-5",
        "rl.training.max_steps=6",
        "rl.training.beta=0.01",
        'rl.trl={"vllm_importance_sampling_correction": true}',
    ],
}
# What the checkpoints are read on: held-out chain_sum (greedy, and k samples at the paper's temperature 0.7) and
# the default's out-of-domain probes; no forgetting phase (the default run measures KL for the chosen setting).
SAMPLES = 4
EVAL_TEMPERATURE = 0.7
BENCHMARKS = [
    {
        "name": "chain_sum",
        "source": "train_task",
        "domain": "in",
        "size": 200,
        "max_new_tokens": 96,
        "samples": SAMPLES,
        "temperature": EVAL_TEMPERATURE,
    },
    {"name": "chat_facts", "source": "chat_facts", "domain": "out", "size": 103, "max_new_tokens": 32},
    {"name": "instructions", "source": "instructions", "domain": "out", "size": 100, "max_new_tokens": 64},
    {"name": "agreement", "source": "agreement", "domain": "out", "size": 200},
    {"name": "facts", "source": "facts", "domain": "out", "size": 103},
]
IN_DOMAIN = ["chain_sum/accuracy", f"chain_sum/avg@{SAMPLES}", f"chain_sum/pass@{SAMPLES}"]
OUT_OF_DOMAIN = ["chat_facts/accuracy", "instructions/accuracy", "agreement/accuracy", "facts/accuracy"]


def _gpu() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _machine() -> dict:
    """The machine this invocation's runs are timed on (CPU model and vector flags, cores, GPU)."""
    from stages.backends import machine

    return {**machine(), "arch": platform.machine(), "gpu": _gpu()}


def _stage(module: str, config: str, overrides: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, "--config", config, *overrides], check=True, cwd=REPO)
    return time.perf_counter() - t0


def _scores(eval_dir: Path) -> dict:
    return json.loads((eval_dir / "scores.json").read_text())


def _paired(a: dict, b: dict, metric: str) -> dict | None:
    """a - b on ``metric``, paired by item id, with its interval (items resampled)."""
    from stages.metrics import paired_diff

    if metric not in a or metric not in b:
        return None
    mb = dict(zip(b[metric]["ids"], b[metric]["scores"], strict=True))
    ids = [i for i in a[metric]["ids"] if i in mb]
    ma = dict(zip(a[metric]["ids"], a[metric]["scores"], strict=True))
    est = paired_diff([[ma[i] for i in ids]], [[mb[i] for i in ids]], n_boot=4000, bounds=(-1.0, 1.0))
    mean_a = sum(ma[i] for i in ids) / len(ids)
    return {"diff": est.value, "ci_low": est.low, "ci_high": est.high, "n": len(ids), "after": mean_a}


def _ood_change(a: dict, b: dict) -> dict | None:
    """Unweighted mean of the out-of-domain benchmarks, a - b, paired by item within each benchmark."""
    from stages.metrics import paired_diff

    sa, sb = [], []
    for m in OUT_OF_DOMAIN:
        if m not in a or m not in b:
            return None
        mb = dict(zip(b[m]["ids"], b[m]["scores"], strict=True))
        ma = dict(zip(a[m]["ids"], a[m]["scores"], strict=True))
        ids = [i for i in a[m]["ids"] if i in mb]
        sa.append([ma[i] for i in ids])
        sb.append([mb[i] for i in ids])
    est = paired_diff([sa], [sb], n_boot=4000, bounds=(-1.0, 1.0))
    return {"diff": est.value, "ci_low": est.low, "ci_high": est.high}


def _curve(arm_dir: Path) -> dict:
    rows = [json.loads(x) for x in (arm_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    mixed = [1.0 - r["frac_reward_zero_std"] for r in rows if "frac_reward_zero_std" in r]
    gen = [r.get("timing/generation_s", 0.0) for r in rows]
    step = [r.get("step_time_s", 0.0) for r in rows]
    return {
        "reward": [r.get("reward") for r in rows],
        "mixed_groups": mixed,
        "mixed_groups_mean": sum(mixed) / len(mixed) if mixed else None,
        "kl": [r.get("kl") for r in rows],
        "completion_length": [r.get("completions/mean_length") for r in rows],
        "step_s_median": sorted(step)[len(step) // 2] if step else None,
        "generation_s_median": sorted(gen)[len(gen) // 2] if gen else None,
    }


def _link_inits(runs_root: Path, init_run: Path, inits: list[str]) -> Path:
    run_dir = runs_root / "rl-setting"
    run_dir.mkdir(parents=True, exist_ok=True)
    for arm in inits:
        src = (init_run / arm).resolve()
        if not (src / "DONE").is_file():
            raise SystemExit(f"{src} is not a finished SFT arm: run the default's SFT stage for it first")
        link = run_dir / arm
        if not link.exists():
            link.symlink_to(src, target_is_directory=True)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smollm2-cpu.yaml")
    parser.add_argument("--init-run", default="runs/smollm2-cpu/seeds/seed-0", help="run folder of the SFT arms")
    parser.add_argument("--inits", default="sft", help="SFT arms RL starts from in every setting (comma-separated)")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"settings to run, in order (of {', '.join(SETTINGS)})"
    )
    parser.add_argument(
        "--runs",
        default="",
        help="explicit SETTING:INIT pairs in the order to run them, instead of --settings x --inits "
        "(e.g. t0.7-lr5e-5:sft,t0.7-lr5e-5:rpsft: the most promising setting from both arms first)",
    )
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="extra dotted overrides for every RL run, after the setting's (repeatable; recorded)",
    )
    parser.add_argument(
        "--stage-set",
        action="append",
        default=[],
        help="dotted overrides for every stage, RL and evaluation (the machine: device, engines, batch; recorded)",
    )
    parser.add_argument("--eval-size", type=int, default=None, help="items per benchmark (default: as listed above)")
    parser.add_argument("--out", default="benchmarks/results/rl_setting.json")
    args = parser.parse_args(argv)

    os.environ.setdefault("SFT2RL_CACHE_DIR", str(REPO / ".cache" / "sft2rl"))
    inits = [x for x in args.inits.split(",") if x]
    pairs = [(s, i) for s in args.settings.split(",") if s for i in inits]
    if args.runs:
        pairs = [tuple(x.split(":", 1)) for x in args.runs.split(",") if x]
    unknown = sorted({s for s, _ in pairs if s not in SETTINGS})
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {sorted(SETTINGS)}")
    all_inits = sorted({i for _, i in pairs})
    run_dir = _link_inits(Path(args.runs_root), Path(args.init_run), all_inits)
    benchmarks = [b | ({"size": args.eval_size} if args.eval_size else {}) for b in BENCHMARKS]
    base = [
        f"runs_root={args.runs_root}",
        "run_name=rl-setting",
        "seed=0",
        "seeds=[]",
        "rl.seeds=[]",
        f"eval.benchmarks={json.dumps(benchmarks)}",
        "eval.forgetting.enabled=false",
        *args.stage_set,
        # last, whatever the config or --stage-set say: every gain is read on sampled answers, so the initial
        # checkpoints are sampled too (samples_for: rl would find no RL arm of theirs in this folder and score them
        # greedily only)
        "eval.samples_for=all",
    ]
    out_path = Path(args.out)
    result: dict = {
        "config": args.config,
        "init_run": args.init_run,
        "common": COMMON,
        "settings": {s: SETTINGS[s] for s in dict.fromkeys(s for s, _ in pairs)},
        "eval": {"benchmarks": benchmarks, "samples": SAMPLES, "temperature": EVAL_TEMPERATURE},
        "extra_overrides": args.set,
        "stage_overrides": args.stage_set,
        "machine": _machine(),
        "runs": [],
    }
    previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
    earlier: dict = {}
    if previous.get("config") == args.config:
        # runs of other (setting, init, SFT run) triples measured before stay in the file, with their settings and
        # the SFT run they started from (the same config's recipe, another training seed or an earlier training of
        # it; each row names its folder)
        kept = [r | {"init_run": r.get("init_run", previous.get("init_run"))} for r in previous.get("runs", [])]
        now = {(s, i, args.init_run) for s, i in pairs}
        result["runs"] = [r for r in kept if (r["setting"], r["init"], r["init_run"]) not in now]
        earlier = {
            (r["setting"], r["init"], r["init_run"]): r for r in kept if (r["setting"], r["init"], r["init_run"]) in now
        }
        for r in result["runs"]:  # per-item gains of rows measured before they were recorded, where the folder has them
            stale = any("after" not in g for g in r.get("item_gains", {}).values())
            if (stale or not r.get("item_gains")) and r["init_run"] == args.init_run:
                try:
                    r["item_gains"] = _item_gains(
                        _scores(run_dir / "eval" / r["arm"]), _scores(run_dir / "eval" / r["init"])
                    )
                except OSError:
                    pass
        result["settings"] = previous.get("settings", {}) | result["settings"]
        # and so do their readings of claim (c), whose evaluations may be gone (recomputed below where they are not)
        result["gain_differences"] = previous.get("gain_differences", {})
    # the initial checkpoints first: every gain is read against them
    evaluated = all((run_dir / "eval" / i / "scores.json").is_file() for i in all_inits)
    t = _stage("stages.evaluate", args.config, [*base, f"eval.models={json.dumps(all_inits)}"])
    # seconds to evaluate the initial checkpoints, per SFT run (a rerun that found them evaluated keeps its time)
    init_eval = previous.get("init_eval_s", {}) if previous.get("config") == args.config else {}
    if not isinstance(init_eval, dict):  # one number, from a file of one SFT run
        init_eval = {previous.get("init_run", args.init_run): init_eval}
    if not (evaluated and args.init_run in init_eval):
        init_eval[args.init_run] = round(t, 1)
    result["init_eval_s"] = init_eval
    for setting, init in pairs:
        arm = f"rl-{setting}-{init}"
        overrides = [*base, *COMMON, *SETTINGS[setting], *args.set]
        overrides += [f"rl.init={run_dir / init / 'checkpoint'}", f"rl.arm={arm}"]
        done_before = (run_dir / arm / "DONE").is_file()
        rl_s = _stage("stages.rl", args.config, overrides)
        eval_s = _stage("stages.evaluate", args.config, [*base, f"eval.models={json.dumps([arm])}"])
        before_row = earlier.get((setting, init, args.init_run)) if done_before else None
        measured_on = result["machine"]
        if before_row:  # a rerun that found the arm complete: the times are the ones it was measured with, where
            rl_s, eval_s = before_row["stage_wall_s"], before_row["eval_wall_s"]
            measured_on = before_row.get("machine")
        after, before = _scores(run_dir / "eval" / arm), _scores(run_dir / "eval" / init)
        summary = json.loads((run_dir / arm / "metrics.json").read_text())
        row = {
            "setting": setting,
            "init": init,
            "init_run": args.init_run,
            "arm": arm,
            "machine": measured_on,
            "steps": summary["steps"],
            "train_runtime_s": round(summary["train_runtime_s"], 1),
            "stage_wall_s": None if rl_s is None else round(rl_s, 1),
            "eval_wall_s": None if eval_s is None else round(eval_s, 1),
            "backend": summary.get("backend"),
            "prompt_filter": summary.get("prompt_filter"),
            "curve": _curve(run_dir / arm),
            "gain": {m: _paired(after, before, m) for m in IN_DOMAIN},
            "item_gains": _item_gains(after, before),
            "ood_change": {m: _paired(after, before, m) for m in OUT_OF_DOMAIN},
            "ood_mean_change": _ood_change(after, before),
            "init_scores": {m: sum(before[m]["scores"]) / len(before[m]["scores"]) for m in IN_DOMAIN if m in before},
        }
        if before_row and before_row.get("times_note"):
            row["times_note"] = before_row["times_note"]
        result["runs"].append(row)
        _pooled_gains(result)
        _choose(result)
        _gain_differences(result)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1) + "\n")
        g = row["gain"][f"chain_sum/avg@{SAMPLES}"]
        print(
            f"{arm}: avg@{SAMPLES} {100 * g['diff']:+.1f} [{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}] "
            f"points, {row['train_runtime_s']:.0f} s of training",
            flush=True,
        )
    return 0


def _item_gains(after: dict, before: dict) -> dict:
    """Each held-out item's in-domain score after RL, and after minus before, by item id: what claim (c) and the
    pooling over training seeds are read from, kept in the file so that they outlive the run folders."""
    out = {}
    for m in IN_DOMAIN:
        if m in after and m in before:
            b = dict(zip(before[m]["ids"], before[m]["scores"], strict=True))
            rows = [(i, x, x - b[i]) for i, x in zip(after[m]["ids"], after[m]["scores"], strict=True) if i in b]
            out[m] = {
                "ids": [i for i, _, _ in rows],
                "gain": [round(g, 6) for _, _, g in rows],
                "after": [round(x, 6) for _, x, _ in rows],
            }
    return out


def _by_id(g: dict, field: str = "gain") -> dict:
    return dict(zip(g["ids"], g[field], strict=True))


def _common(per: list[dict]) -> list:
    """The item ids every one of ``per`` has, in the first one's order."""
    return [i for i in per[0] if all(i in g for g in per[1:])]


def _estimate(a: list[list[float]], b: list[list[float]], bound: float) -> dict:
    """a - b paired by item within each training seed; with several seeds, about these checkpoints (the seeds held
    fixed, as the report reads fewer than 3 seeds)."""
    from stages.metrics import paired_diff

    est = paired_diff(a, b, n_boot=4000, bounds=(-bound, bound), seeds_fixed=len(a) > 1)
    return {"diff": est.value, "ci_low": est.low, "ci_high": est.high, "n": min(len(x) for x in a), "seeds": len(a)}


def _by_setting(result: dict) -> dict[str, dict[str, dict[str, dict]]]:
    """setting -> SFT run (training seed) -> init -> row, for the rows that carry per-item gains."""
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for r in result["runs"]:
        if r.get("item_gains"):
            out.setdefault(r["setting"], {}).setdefault(r["init_run"], {})[r["init"]] = r
    return out


def _pooled_gains(result: dict) -> None:
    """Each setting's in-domain gain per initialisation pooled over the SFT runs (training seeds) it ran from, where
    there are several: per seed the per-item gain, the seeds held fixed (a statement about these checkpoints)."""
    out = {}
    for setting, runs in _by_setting(result).items():
        for init in ("sft", "rpsft"):
            rows = [by_init[init] for by_init in runs.values() if init in by_init]
            if len(rows) < 2:
                continue
            gains = {}
            for m in IN_DOMAIN:
                if all(m in r["item_gains"] for r in rows):
                    per = [_by_id(r["item_gains"][m]) for r in rows]
                    ids = _common(per)
                    a = [[g[i] for i in ids] for g in per]
                    gains[m] = _estimate(a, [[0.0] * len(ids) for _ in a], 1.0)
            out.setdefault(setting, {})[init] = gains | {"init_runs": [r["init_run"] for r in rows]}
    result["pooled_gains"] = out


def _rpsft_minus_sft(per: dict[str, list[dict]], ids: list, bound: float) -> dict:
    """``per``: SFT run -> [rpsft's, sft's] per-item values by id. Their difference on ``ids``, pooled over the runs,
    and each run's own reading beside it when there are several."""
    a = [[r[i] for i in ids] for r, _ in per.values()]
    b = [[s[i] for i in ids] for _, s in per.values()]
    out = _estimate(a, b, bound) | {"init_runs": list(per)}
    if len(per) > 1:
        out["per_seed"] = {run: _estimate([x], [y], bound) for run, x, y in zip(per, a, b, strict=True)}
    return out


def _gain_differences(result: dict) -> None:
    """Claim (c)'s reading for every setting run from both sft and rpsft: (gain from rpsft) - (gain from sft) per
    held-out item, each gain over its own initial checkpoint, so the SFT checkpoints' own gap cancels; pooled over
    the SFT runs (training seeds) that have both, each seed's own reading beside it. In ``post_rl_differences``, the
    primary reading beside it: where RL ended, rl-rpsft - rl-sft on the same items. Kept from an earlier write for
    rows without per-item gains (measured before they were recorded)."""
    out = dict(result.get("gain_differences") or {})
    post = dict(result.get("post_rl_differences") or {})
    for setting, runs in _by_setting(result).items():
        both = {run: rows for run, rows in runs.items() if {"sft", "rpsft"} <= set(rows)}
        if not both:
            continue
        diffs: dict = {}
        for metric in IN_DOMAIN:
            if not all(metric in rows[i]["item_gains"] for rows in both.values() for i in ("sft", "rpsft")):
                continue
            # the items every seed and both initialisations were read on, in one order (seeds crossed with items)
            per = {run: [_by_id(rows[i]["item_gains"][metric]) for i in ("rpsft", "sft")] for run, rows in both.items()}
            ids = _common([g for pair in per.values() for g in pair])
            diffs[metric] = _rpsft_minus_sft(per, ids, 2.0)
            if all("after" in rows[i]["item_gains"][metric] for rows in both.values() for i in ("sft", "rpsft")):
                # the primary reading beside it: where RL ended, rl-rpsft - rl-sft on the same items
                after = {
                    run: [_by_id(rows[i]["item_gains"][metric], "after") for i in ("rpsft", "sft")]
                    for run, rows in both.items()
                }
                post.setdefault(setting, {})[metric] = _rpsft_minus_sft(after, ids, 1.0)
        out[setting] = diffs
    result["gain_differences"] = out
    result["post_rl_differences"] = post


def _choose(result: dict) -> None:
    """The cheapest setting (training seconds summed over its runs) whose Avg@k gain excludes 0 from every
    initialisation it ran from (pooled over the training seeds it ran from, where there are several); None when no
    setting moved."""
    key = f"chain_sum/avg@{SAMPLES}"
    by_setting: dict[str, list[dict]] = {}
    for r in result["runs"]:
        by_setting.setdefault(r["setting"], []).append(r)
    inits = {r["init"] for r in result["runs"]}
    pooled = result.get("pooled_gains", {})

    def moved_from(setting: str, init: str) -> bool:
        g = pooled.get(setting, {}).get(init, {}).get(key)
        if g is None:
            rows = [r for r in by_setting[setting] if r["init"] == init]
            return all(r["gain"][key] and r["gain"][key]["ci_low"] > 0 for r in rows)
        return g["ci_low"] > 0

    moved = {
        s: sum(r["train_runtime_s"] for r in rows) / len(rows)
        for s, rows in by_setting.items()
        if {r["init"] for r in rows} == inits and all(moved_from(s, i) for i in inits)
    }
    result["chosen"] = min(moved, key=moved.get) if moved else None
    result["chosen_rule"] = (
        f"cheapest mean training time among settings whose in-domain {key} gain over the initial checkpoint "
        "excludes 0 from every initialisation of the grid, pooled over the training seeds it ran from (a setting "
        "not run from all of them is not chosen)"
    )


if __name__ == "__main__":
    sys.exit(main())
