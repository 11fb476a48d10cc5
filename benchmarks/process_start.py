"""What starting a stage process costs, with full garbage collections held off while it imports and its imports
frozen after (stages/startup.py), and with Python's default collection: writes JSON.

Each stage is started as the flows start it, ``python -m stages.<name> --help`` (every import the stage makes at
start, its main up to the command line, then exit), and, for the comparison, as a library import that calls the same
main (``import stages.<name>`` defers nothing: the process collects as Python does by default). The two forms
alternate, one process at a time; each figure is the median wall time of ``--rounds`` processes.

    python benchmarks/process_start.py --out benchmarks/results/process_start.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("sft", "rl", "evaluate")  # the heavy ones; prepare and report can be asked for


def _commands(stage: str) -> dict[str, list[str]]:
    as_library = f"import sys; sys.argv = ['x', '--help']; import stages.{stage} as m; m.main()"
    return {
        "default_collection": [sys.executable, "-c", as_library],
        "deferred_and_frozen": [sys.executable, "-m", f"stages.{stage}", "--help"],
    }


def _wall(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)  # noqa: S603 - our own stages
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or "usage:" not in proc.stdout:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    from stages.backends import machine
    from stages.store import atomic_write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3, help="processes of each form per stage (median reported)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=(*STAGES, "prepare", "report"))
    args = ap.parse_args(argv)
    stages = {}
    for stage in args.stages:
        walls: dict[str, list[float]] = {form: [] for form in _commands(stage)}
        for _ in range(args.rounds):
            for form, cmd in _commands(stage).items():
                walls[form].append(_wall(cmd))
        med = {form: round(statistics.median(v), 2) for form, v in walls.items()}
        stages[stage] = {
            "wall_s_median": med,
            "wall_s": {form: [round(x, 2) for x in v] for form, v in walls.items()},
            "saved_s": round(med["default_collection"] - med["deferred_and_frozen"], 2),
            "ratio": round(med["deferred_and_frozen"] / med["default_collection"], 3),
        }
        print(f"{stage}: {med['default_collection']} s -> {med['deferred_and_frozen']} s")
    result = {
        "what": "wall time of a stage process that imports the stage, runs its main up to the command line (--help) "
        "and exits, with Python's default garbage collection (as a library import) and with full collections held "
        "off during the imports, then the imports frozen (python -m, stages/startup.py)",
        "rounds": args.rounds,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "stages": stages,
        "machine": machine(),
    }
    atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
