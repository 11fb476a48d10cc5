"""Per-stage wall times of a finished sft-to-rl flow run, read from the Prefect server that ran it. Writes JSON.

    python benchmarks/pipeline_times.py --latest --run-dir runs/smollm2-cpu --out FILE
    python benchmarks/pipeline_times.py --flow-run-id 36aff7fa-... --out FILE

``--run-dir`` (the run's folder) adds what the run's own files hold: each SFT arm's and RL run's training time
(``train_runtime_s`` of its metrics.json, training alone) and each evaluated model's ``timing`` (engine start,
answers, probes, forgetting), per seed run.

PREFECT_API_URL selects the server (default http://127.0.0.1:4200/api, the one `sft2rl run` starts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from datetime import datetime
from pathlib import Path


def _post(api: str, path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(
        f"{api}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - a local server
        return json.loads(r.read())


def _t(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None


def _machine() -> dict:
    """The machine the times belong to (CPU model, vector flags, cores): run this on the machine that ran the flow."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stages.backends import machine  # the same record every benchmark of this project writes

    return machine()


def run_folder_times(run_dir: Path) -> dict:
    """Training and evaluation times from a run folder's files, keyed ``<arm>@seed<s>`` and ``<model>@seed-<s>`` in a
    multi-seed run (as the committed files are), by name otherwise."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stages.layout import RunLayout

    run = RunLayout(run_dir)
    train, evals = {}, {}
    for seed_run in run.seed_runs() or [run]:
        seed = seed_run.dir.name.removeprefix("seed-") if seed_run.is_seed_run else None
        for arm in seed_run.arms():
            if arm.metrics.is_file():
                m = json.loads(arm.metrics.read_text())
                if "train_runtime_s" in m:
                    train[arm.name + (f"@seed{seed}" if seed else "")] = round(m["train_runtime_s"], 1)
        for folder in sorted(seed_run.eval_dir.glob("*")):
            metrics = seed_run.eval_model(folder.name).metrics
            if metrics.is_file():
                timing = json.loads(metrics.read_text()).get("timing", {})
                key = folder.name + (f"@seed-{seed}" if seed else "")
                evals[key] = {k: round(v, 1) for k, v in sorted(timing.items())}
    return {"train_runtime_s": train, "per_model_eval_s": evals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--flow-run-id")
    g.add_argument("--latest", action="store_true", help="the latest completed sft-to-rl flow run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--run-dir", type=Path, help="the run's folder: add its training and evaluation times")
    args = parser.parse_args(argv)
    api = os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api").rstrip("/")
    if args.latest:
        flows = {f["id"]: f["name"] for f in _post(api, "/flows/filter", {})}
        runs = [
            r
            for r in _post(api, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 50})
            if flows.get(r["flow_id"]) == "sft-to-rl" and r["state"]["type"] == "COMPLETED"
        ]
        if not runs:
            print("no completed sft-to-rl flow run on this server", file=sys.stderr)
            return 1
        run = runs[0]
    else:
        run = next(r for r in _post(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [args.flow_run_id]}}}))
    tasks = _post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    stages = {}
    for t in sorted(tasks, key=lambda t: t["start_time"] or ""):
        start, end = _t(t["start_time"]), _t(t["end_time"])
        if start and end:
            stages[t["name"]] = round((end - start).total_seconds(), 1)
    start, end = _t(run["start_time"]), _t(run["end_time"])
    result = {
        "flow_run_id": run["id"],
        "parameters": run["parameters"],
        "state": run["state"]["type"],
        "total_s": round((end - start).total_seconds(), 1) if start and end else None,
        "stages_s": stages,
        "machine": _machine(),
    }
    if args.run_dir:
        result |= run_folder_times(args.run_dir)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
