"""The `backend: auto` probe with its vLLM engine in each of two layouts, side by side; writes JSON.

On a CPU the probe (``python -m stages.backends``, run once per machine and model before the first RL or evaluation
stage that says ``backend: auto``) measures transformers' and vLLM's sampling speed at the RL step's batch shape.
This times the whole probe process, and reads its figures, with the engine inside the probe's process (``in_process``,
what the probe does on a CPU, as the RL stage's colocated engine runs) and in an engine-core process of its own
(``separate``, vLLM's default), the two interleaved over rounds.

    python benchmarks/probe_layout.py --out benchmarks/results/probe_layout.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LAYOUTS = ("in_process", "separate")
FIGURES = ("hf_tokens_per_s", "vllm_tokens_per_s", "vllm_engine_start_s")


def probe(cfg, layout: str, probe_rounds: int) -> dict:
    """One probe process (:func:`stages.backends.probe_in_child`): its wall time and the figures it printed."""
    from stages.backends import probe_in_child

    t0 = time.perf_counter()
    figures = probe_in_child(cfg, rounds=probe_rounds, layout=layout)
    return {"wall_s": round(time.perf_counter() - t0, 1), **figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="configs/smollm2-cpu.yaml")
    parser.add_argument("--rounds", type=int, default=2, help="probe processes per layout, interleaved")
    parser.add_argument("--probe-rounds", type=int, default=2, help="the probe's own rounds (its default: 2)")
    parser.add_argument("overrides", nargs="*", help="config overrides for the probe")
    args = parser.parse_args(argv)
    from stages.backends import machine
    from stages.config import load_config
    from stages.store import atomic_write_json

    cfg = load_config(args.config, args.overrides)
    runs: dict[str, list[dict]] = {layout: [] for layout in LAYOUTS}
    for r in range(args.rounds):
        for layout in LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]:
            runs[layout].append(probe(cfg, layout, args.probe_rounds))
    median = {
        layout: {k: round(statistics.median(x[k] for x in rows), 1) for k in ("wall_s", *FIGURES)}
        for layout, rows in runs.items()
    }
    result = {
        "what": "wall time of the backend: auto probe process (python -m stages.backends) and its figures, with the "
        "vLLM engine in the probe's process and in an engine-core process of its own, interleaved",
        "config": args.config,
        "overrides": args.overrides,
        "rounds": args.rounds,
        "probe_rounds": args.probe_rounds,
        "machine": machine(),
        "median": median,
        "wall_saved_s": round(median["separate"]["wall_s"] - median["in_process"]["wall_s"], 1),
        "runs": runs,
    }
    atomic_write_json(args.out, result)
    print(json.dumps(median, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
