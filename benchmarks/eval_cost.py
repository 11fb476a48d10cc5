"""What one model's evaluation pays for two of its fixed costs, measured side by side. Writes JSON.

    python benchmarks/eval_cost.py --out benchmarks/results/eval_cost.json

1. The generation engine's layout on a CPU: vLLM with its engine-core and worker processes (vLLM's default) vs the
   engine inside the evaluating process (``VLLMGenerator(in_process=True)``, what the evaluation stage uses on a CPU).
   Each round starts a fresh child process per layout (alternating, so drift hits both), starts the engine, generates
   greedy answers to the first ``--prompts`` in-domain evaluation items of the config at the benchmark's length,
   and closes the engine: start, generation (tokens per second) and close are timed apart.
2. The CKA bootstrap of the forgetting phase at the default's shape (``--tokens`` pooled tokens, one Gram per layer,
   ``eval.forgetting.cka_bootstrap`` resamples): the resampled Grams copied per resample vs all resamples from
   weighted products of the full Grams (stages/metrics.py), with the largest difference of their statistics.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def engine_round(config: str, overrides: list[str], in_process: bool, prompts: int) -> dict:
    """One engine's start, greedy generation and close (run in a child process: the layout is process-wide)."""
    from stages import evaluate as ev
    from stages.config import load_config
    from stages.eval_items import build_benchmark, training_items
    from stages.models import load_tokenizer

    cfg = load_config(config, overrides)
    spec = next(b for b in cfg.eval.benchmarks if b.domain == "in" and not b.is_choice)
    items, _ = build_benchmark(cfg, spec, training_items(cfg))
    path = ev._base_path(cfg)
    tok = load_tokenizer(path, cfg.model)
    texts = [ev.item_prompt(tok, cfg, spec, x) for x in items[:prompts]]
    t = time.perf_counter()
    gen = ev.VLLMGenerator(path, cfg, 2048, in_process=in_process)
    start = time.perf_counter() - t
    t = time.perf_counter()
    out = gen.generate(texts, n=1, temperature=0.0, max_new_tokens=spec.max_new_tokens, seed=0)
    generate = time.perf_counter() - t
    tokens = sum(len(tok(o[0], add_special_tokens=False).input_ids) for o in out)
    t = time.perf_counter()
    gen.close()
    close = time.perf_counter() - t
    return {"start_s": start, "generate_s": generate, "close_s": close, "tokens": tokens, "prompts": len(texts)}


def cka_cost(tokens: int, layers: int, width: int, n_boot: int) -> dict:
    import numpy as np

    from stages import metrics as M

    def by_copies(kx, ky, groups):
        ids = np.unique(groups)
        members = [np.flatnonzero(groups == g) for g in ids]
        rng = np.random.default_rng(0)
        out = []
        for _ in range(n_boot):
            idx = np.concatenate([members[j] for j in rng.integers(0, len(ids), size=len(ids))])
            out.append(M.cka_from_grams(kx[np.ix_(idx, idx)], ky[np.ix_(idx, idx)]))
        return np.asarray(out)

    rng = np.random.default_rng(0)
    groups = np.sort(rng.integers(0, 40, size=tokens))  # 40 general-text answers of uneven length
    copies_s = weighted_s = 0.0
    worst = 0.0
    for _ in range(layers):
        x = rng.normal(size=(tokens, width))
        x[:, :3] += 50.0  # a few large constant channels, as real hidden states have
        y = x + 0.5 * rng.normal(size=(tokens, width))
        kx, ky = x @ x.T, y @ y.T
        t = time.perf_counter()
        a = by_copies(kx, ky, groups)
        copies_s += time.perf_counter() - t
        t = time.perf_counter()
        _, _, _, b = M.cka_bootstrap(kx, ky, groups, n_boot=n_boot, seed=0)
        weighted_s += time.perf_counter() - t
        worst = max(worst, float(np.max(np.abs(a - b))))
    return {
        "tokens": tokens,
        "layers": layers,
        "width": width,
        "resamples": n_boot,
        "copies_s": copies_s,
        "weighted_s": weighted_s,
        "speedup": copies_s / weighted_s,
        "max_abs_diff": worst,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="configs/smollm2-cpu.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--child", choices=["separate", "in_process"], help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides for every measurement")
    args = parser.parse_args(argv)
    if args.child:
        r = engine_round(args.config, args.overrides, args.child == "in_process", args.prompts)
        print("RESULT " + json.dumps(r))
        return 0
    from stages.backends import machine
    from stages.config import load_config

    cfg = load_config(args.config, args.overrides)
    rounds: dict[str, list[dict]] = {"separate": [], "in_process": []}
    for _ in range(args.rounds):
        for layout in rounds:
            cmd = [sys.executable, __file__, "--out", args.out, "--config", args.config, "--child", layout]
            cmd += ["--prompts", str(args.prompts), *args.overrides]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"{layout} round failed: {proc.stderr[-3000:]}")
            rounds[layout].append(json.loads(lines[-1].removeprefix("RESULT ")))
    engine = {}
    for layout, rows in rounds.items():
        engine[layout] = {
            "start_s": statistics.median(r["start_s"] for r in rows),
            "close_s": statistics.median(r["close_s"] for r in rows),
            "tokens_per_s": statistics.median(r["tokens"] / r["generate_s"] for r in rows),
            "rounds": rows,
        }
    sep, inp = engine["separate"], engine["in_process"]
    result = {
        "model": cfg.model.source,
        "machine": machine(),
        "engine": engine,
        "start_and_close_saved_s": sep["start_s"] + sep["close_s"] - inp["start_s"] - inp["close_s"],
        "tokens_per_s_ratio": inp["tokens_per_s"] / sep["tokens_per_s"],
        "cka": cka_cost(args.tokens, args.layers, cfg_width(cfg), cfg.eval.forgetting.cka_bootstrap),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "engine"}, indent=2))
    return 0


def cfg_width(cfg) -> int:
    """The model's hidden size (the width of the hidden states CKA compares)."""
    from transformers import AutoConfig

    from stages import evaluate as ev

    return int(AutoConfig.from_pretrained(ev._base_path(cfg)).hidden_size)


if __name__ == "__main__":
    sys.exit(main())
