"""Stages placed on work pools, meeting only through shared storage: a real Prefect server, two process work pools
each with its own worker and its own run folders (as two machines would have), the SFT stage's deployment on one,
RL, evaluation and the report on the other, and the tiny pipeline started from a third folder with a store. Each
machine's folder holds what it made plus what it pulled from the store; trainer checkpoints never leave the machine
that trained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_prefect_e2e import _free_port, _post, _server_env, _stop

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
POOLS = {"train": ["sft"], "judge": ["rl", "evaluate", "report"]}
FLOW_FUNCS = {"sft": "sft_flow", "rl": "rl_flow", "evaluate": "evaluate_flow", "report": "report_flow"}

DEPLOY = """
import sys
from prefect import flow
for stage, pool in [a.split(":") for a in sys.argv[2:]]:
    fn = {"sft": "sft_flow", "rl": "rl_flow", "evaluate": "evaluate_flow", "report": "report_flow"}[stage]
    flow.from_source(source=sys.argv[1], entrypoint=f"pipeline/flows.py:{fn}").deploy(
        name="tiny-placed", work_pool_name=pool, build=False, push=False, print_next_steps=False
    )
"""


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()


def test_stages_on_two_work_pools_meet_only_through_the_store(tmp_path, cache_dir):
    home, port = tmp_path / "prefect-home", _free_port()
    env = _server_env(home, port, cache_dir)
    store = tmp_path / "store"
    env.update(SFT2RL_ALLOWED_ROOTS=str(tmp_path), SFT2RL_ALLOWED_STORES=f"file://{store}")
    cli = [sys.executable, "-m", "pipeline.cli"]
    out = subprocess.run(
        [*cli, "server", "--background", "--port", str(port)], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    workers, logs = [], []
    try:
        for pool in POOLS:
            r = subprocess.run(
                [sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            assert r.returncode == 0, r.stdout + r.stderr
        spec = [f"{stage}:{pool}" for pool, stages in POOLS.items() for stage in stages]
        r = subprocess.run(
            [sys.executable, "-c", DEPLOY, str(REPO), *spec], env=env, cwd=REPO, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stdout + r.stderr
        for pool in POOLS:  # one worker per pool, each keeping its run folders in a folder of its own
            log = open(tmp_path / f"worker-{pool}.log", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--limit", "1"],
                    env={**env, "SFT2RL_RUNS_ROOT": str(tmp_path / f"machine-{pool}")},
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        place = [a for stage in FLOW_FUNCS for a in ("--place", f"{stage}={stage}/tiny-placed")]
        run = subprocess.run(
            # one arm: a second would place the same two stages on the same pools again (the pipeline runs stages
            # one at a time, so nothing queues on a pool either way)
            [*cli, "run", "--config", "configs/tiny.yaml", "--no-server", "--arms", "rpsft"]
            + ["--store", f"file://{store}", *place],
            env={**env, "SFT2RL_RUNS_ROOT": str(tmp_path / "machine-start")},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        # The pools ran what they were given: each stage's flow run sits on its pool (a subflow of the pipeline run).
        api = env["PREFECT_API_URL"]
        deployments = {d["id"] for d in _post(api, "/deployments/filter", {})}
        flows = {f["id"]: f["name"] for f in _post(api, "/flows/filter", {})}
        ran: dict[str, set] = {}
        for fr in _post(api, "/flow_runs/filter", {}):
            if fr.get("deployment_id") in deployments:
                ran.setdefault(flows[fr["flow_id"]], set()).add((fr["work_pool_name"], fr["state_type"]))
    finally:
        for w in workers:
            _stop(w)
        for log in logs:
            log.close()
        subprocess.run([*cli, "server", "--stop", "--port", str(port)], env=env, cwd=REPO, timeout=120)

    train, judge, start = (_files(tmp_path / f"machine-{m}" / "tiny") for m in ("train", "judge", "start"))
    stored = _files(store / "tiny")
    # The SFT arm was trained on the train pool's machine: its resume state is there and nowhere else.
    assert not any(f.startswith("sft/") for f in train | judge | stored | start)  # only the arm the run asked for
    assert "rpsft/DONE" in train and any(f.startswith("rpsft/trainer/") for f in train)
    assert "rpsft/DONE" in stored and "rpsft/DONE" in judge
    assert not any(f.startswith("rpsft/trainer/") for f in stored | judge | start)
    # RL, evaluation and the report ran on the judge pool's machine; the train machine never saw them.
    assert "rl-rpsft/DONE" in judge and "rl-rpsft/DONE" in stored
    assert not any(f.startswith("rl-rpsft/") for f in train)
    assert "eval/base/metrics.json" in judge and not any(f.startswith("eval/") for f in train)
    assert {"report.md", "report.json"} <= judge & stored & start  # and the starting folder pulled the report
    report = json.loads((tmp_path / "machine-start" / "tiny" / "report.json").read_text())
    assert report["comparisons"]
    assert ran["sft"] == {("train", "COMPLETED")}, ran
    for stage in ("rl", "evaluate", "report"):
        assert ran[stage] == {("judge", "COMPLETED")}, (stage, ran)
