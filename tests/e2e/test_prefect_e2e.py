"""End to end through a real local Prefect server: start it, serve the deployments, trigger the tiny pipeline
deployment with the Prefect CLI, wait, and check the flow run, every stage's outputs, the report and the artifacts
registered on the server. A deployment run with bad parameters fails before any stage, naming the parameter."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(api: str, path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(
        f"{api}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - local server
        return json.loads(r.read())


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory, cache_dir):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = dict(os.environ)
    for k in [k for k in env if k.startswith("PREFECT_")]:
        env.pop(k)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        SFT2RL_CACHE_DIR=str(cache_dir),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    cli = [sys.executable, "-m", "pipeline.cli"]
    out = subprocess.run([*cli, "server", "--background", "--port", str(port)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"http://127.0.0.1:{port}" in out.stdout
    serve_log = open(home / "serve.log", "w")  # noqa: SIM115 - closed in teardown
    serve = subprocess.Popen([*cli, "serve", "--config", "configs/tiny.yaml", "--port", str(port)], env=env,
                             cwd=REPO, stdout=serve_log, stderr=subprocess.STDOUT)  # fmt: skip
    api = env["PREFECT_API_URL"]
    deadline = time.monotonic() + 120
    names: set[str] = set()
    while time.monotonic() < deadline:
        try:
            names = {d["name"] for d in _post(api, "/deployments/filter", {})}
        except OSError:
            names = set()
        if "tiny" in names and len(_post(api, "/deployments/filter", {})) >= 6:
            break
        assert serve.poll() is None, (home / "serve.log").read_text()
        time.sleep(2)
    yield {"env": env, "api": api, "home": home}
    serve.terminate()
    serve.wait(timeout=60)
    serve_log.close()
    subprocess.run([*cli, "server", "--stop", "--port", str(port)], env=env, cwd=REPO, timeout=120)


def _deployment_run(env, name: str, params: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", name, "--params", json.dumps(params), "--watch",
         "--watch-timeout", str(timeout)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout + 60,
    )  # fmt: skip


def test_serve_lists_every_flow_for_the_config(prefect_server):
    deps = _post(prefect_server["api"], "/deployments/filter", {})
    flows = {f["id"]: f["name"] for f in _post(prefect_server["api"], "/flows/filter", {})}
    pairs = {f"{flows[d['flow_id']]}/{d['name']}" for d in deps}
    assert {f"{f}/tiny" for f in ("sft-to-rl", "prepare", "sft", "rl", "evaluate", "report")} <= pairs


def test_tiny_pipeline_deployment_runs_end_to_end(prefect_server, tmp_path):
    env, api = prefect_server["env"], prefect_server["api"]
    runs_root = tmp_path / "runs"
    out = _deployment_run(env, "sft-to-rl/tiny", {"overrides": [f"runs_root={runs_root}"]})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = _post(api, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 5})
    run = next(r for r in runs if r["parameters"].get("overrides") == [f"runs_root={runs_root}"])
    assert run["state"]["type"] == "COMPLETED", run["state"]
    run_dir = runs_root / "tiny"
    for folder in ("prepare", "sft", "rpsft", "rl-sft", "rl-rpsft", "eval/base", "eval/sft", "eval/rl-rpsft"):
        assert (run_dir / folder).is_dir(), folder
    for arm in ("sft", "rpsft", "rl-sft", "rl-rpsft"):
        assert (run_dir / arm / "DONE").is_file() and (run_dir / arm / "checkpoint" / "model.safetensors").is_file()
    for f in ("report.md", "report.html", "report.json", "plots/tradeoff.png", "plots/rl_curves.png"):
        assert (run_dir / f).is_file(), f
    # Every stage is a named task run of this flow run, all completed.
    tasks = _post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    names = {t["name"]: t["state"]["type"] for t in tasks}
    for label in ("prepare", "sft[sft]", "sft[rpsft]", "rl[sft]", "rl[rpsft]", "evaluate", "report"):
        assert names.get(label) == "COMPLETED", (label, names)
    # Artifacts registered on the server for this run: the report, the score and comparison tables, links.
    arts = _post(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    by_key = {a["key"]: a for a in arts}
    for key in ("tiny-report", "tiny-scores", "tiny-comparisons", "tiny-report-html", "tiny-run-folder", "tiny-sft"):
        assert key in by_key, sorted(by_key)
    assert by_key["tiny-report"]["type"] == "markdown" and "What this run shows" in by_key["tiny-report"]["data"]
    assert by_key["tiny-scores"]["type"] == "table"
    # The stage's own log lines reached the server (child process output streamed into the run log).
    logs = _post(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
    assert any("__main__" in log["message"] for log in logs)

    # A second run of the same deployment resumes: every stage finds its outputs complete and skips the work.
    before = (run_dir / "sft" / "metrics.json").stat().st_mtime_ns
    out = _deployment_run(env, "sft-to-rl/tiny", {"overrides": [f"runs_root={runs_root}"]})
    assert out.returncode == 0, out.stdout[-2000:]
    assert (run_dir / "sft" / "metrics.json").stat().st_mtime_ns == before


def test_bad_deployment_parameters_fail_before_any_stage(prefect_server, tmp_path):
    env, api = prefect_server["env"], prefect_server["api"]
    runs_root = tmp_path / "runs"
    out = _deployment_run(env, "sft-to-rl/tiny", {"arms": ["bogus"], "overrides": [f"runs_root={runs_root}"]}, 300)
    assert out.returncode != 0
    runs = _post(api, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 5})
    run = next(r for r in runs if r["parameters"].get("arms") == ["bogus"])
    assert run["state"]["type"] == "FAILED"
    assert "arms" in run["state"]["message"] or "bogus" in json.dumps(
        _post(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}})
    )
    assert not runs_root.exists()  # nothing ran, nothing written
