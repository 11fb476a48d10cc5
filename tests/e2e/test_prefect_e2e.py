"""End to end through a real local Prefect server: start it, serve the deployments, trigger the tiny pipeline
deployment with the Prefect CLI, wait, and check the flow run, every stage's outputs, the report and the artifacts
registered on the server. A deployment run with bad parameters fails before any stage, naming the parameter."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
CANARY = "hf_canary_e2e_0123456789"  # a fake HF_TOKEN: it must never reach a log, an artifact or a file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """Stop a long-running helper (a Prefect worker or ``serve``) once its test is done with it: SIGTERM, and SIGKILL
    if it has not exited after ``grace`` seconds. How fast Prefect shuts its own processes down is not what these tests
    check: a worker idle for a minute was seen taking over 60 s to exit after SIGTERM, which failed a passing test."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _post(api: str, path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(
        f"{api}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - local server
        return json.loads(r.read())


def _server_env(home: Path, port: int, cache_dir: Path) -> dict[str, str]:
    """This process's environment for a Prefect server of its own in ``home`` on ``port`` (no PREFECT_* inherited,
    analytics off, offline hubs) and its file server on a free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        SFT2RL_CACHE_DIR=str(cache_dir),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        SFT2RL_FILES_PORT=str(_free_port()),
        # workers and served deployments look for scheduled runs every 10 s by default: each deployment run of these
        # tests waited up to that long to start; how soon a run is picked up is not what they check
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    return env


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory, cache_dir):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = _server_env(home, port, cache_dir)
    env.update(
        SFT2RL_ALLOWED_ROOTS=str(tmp_path_factory.getbasetemp()),  # the tests' run folders live there
        HF_TOKEN=CANARY,
    )
    cli = [sys.executable, "-m", "pipeline.cli"]
    out = subprocess.run(
        # the file server shows the tests' run folders (under the base temp folder) to the UI
        [*cli, "server", "--background", "--port", str(port), "--runs-root", str(tmp_path_factory.getbasetemp())],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert f"http://127.0.0.1:{port}" in out.stdout
    serve_log = open(home / "serve.log", "w")  # noqa: SIM115 - closed in teardown
    serve = subprocess.Popen(
        [*cli, "serve", "--config", "configs/tiny.yaml", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=serve_log,
        stderr=subprocess.STDOUT,
    )
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
        time.sleep(0.5)
    yield {"env": env, "api": api, "home": home}
    _stop(serve)
    serve_log.close()
    subprocess.run([*cli, "server", "--stop", "--port", str(port)], env=env, cwd=REPO, timeout=120)


def _deployment_run(env, name: str, params: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "deployment",
            "run",
            name,
            "--params",
            json.dumps(params),
            "--watch",
            "--watch-timeout",
            str(timeout),
        ],
        env={**env, "COLUMNS": "400"},  # --watch prints through rich: no wrapping inside the cause
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )


def _all_logs(api: str, run_id: str) -> list[dict]:
    """Every log line of a flow run (and its task runs), page by page."""
    out: list[dict] = []
    while True:
        query = {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200, "offset": len(out)}
        page = _post(api, "/logs/filter", query)
        out += page
        if len(page) < 200:
            return out


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
    # ... tagged for filtering, in a flow run named after its config and start time
    tags = {t["name"]: set(t["tags"]) for t in tasks}
    assert {"stage:sft", "arm:rpsft"} <= tags["sft[rpsft]"] and {"stage:rl", "arm:sft"} <= tags["rl[sft]"], tags
    assert re.fullmatch(r"tiny/sft-to-rl \d\d-\d\d \d\d:\d\d", run["name"]), run["name"]
    # Artifacts registered on the server for this run: the report, the score and comparison tables, links.
    arts = _post(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    by_key = {a["key"]: a for a in arts}
    for key in ("tiny-report", "tiny-scores", "tiny-comparisons", "tiny-report-html", "tiny-run-folder", "tiny-sft"):
        assert key in by_key, sorted(by_key)
    assert by_key["tiny-report"]["type"] == "markdown" and "What this run shows" in by_key["tiny-report"]["data"]
    assert by_key["tiny-scores"]["type"] == "table"
    # Tables that fit the UI: scores one row per metric and one column per model; verdicts a few words each
    scores, comps = (
        json.loads(d) if isinstance(d, str) else d
        for d in (by_key[k]["data"] for k in ("tiny-scores", "tiny-comparisons"))
    )
    assert set(scores[0]) == {"metric", "base", "sft", "rpsft", "rl-sft", "rl-rpsft"} and scores[0]["metric"] == "init"
    assert comps and all("about these checkpoints" not in c["verdict"] and "level, notes" in c for c in comps), comps[
        :3
    ]
    header = next(line for line in by_key["tiny-report"]["data"].splitlines() if line.startswith("| metric |"))
    assert sorted(header.strip("| ").split(" | ")) == ["base", "metric", "rl-rpsft", "rl-sft", "rpsft", "sft"], header
    # The report's figures load in the UI: http links to the read-only file server, which serves the PNG files.
    files_url = f"http://127.0.0.1:{env['SFT2RL_FILES_PORT']}/"
    assert f"]({files_url}" in by_key["tiny-report"]["data"] and "](plots/" not in by_key["tiny-report"]["data"]
    plot = by_key["tiny-plot-tradeoff"]
    assert plot["type"] == "image" and files_url in plot["data"], plot
    with urllib.request.urlopen(plot["data"], timeout=30) as r:  # noqa: S310 - local server
        assert r.read(8) == b"\x89PNG\r\n\x1a\n"
    assert files_url in by_key["tiny-report-html"]["data"]
    # Progress inside the stages: one progress artifact per stage that reports it, at 100% once done.
    progress = [a for a in arts if a["type"] == "progress"]
    assert len(progress) >= 5 and all(float(a["data"]) == 100.0 for a in progress), [
        (a["data"], a.get("description")) for a in progress
    ]
    assert any("optimizer steps" in (a.get("description") or "") for a in progress)
    assert any("models evaluated" in (a.get("description") or "") for a in progress)
    # The stage's own log lines reached the server (child process output streamed into the run log).
    logs = _all_logs(api, run["id"])
    assert any("__main__" in log["message"] for log in logs)
    # The log as a user reads it: no traceback in a run that completed, no third-party warning at WARNING, each line
    # stamped once (by Prefect), and trainer metrics and progress a minority of what is shown.
    shown = [log for log in logs if log["level"] >= 20]
    assert not [x["message"] for x in shown if "Traceback" in x["message"]]
    assert not [x["message"] for x in shown if x["level"] == 30 and "site-packages" in x["message"]]
    assert not [x["message"] for x in shown if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", x["message"])]
    noise = [x for x in shown if x["message"].startswith(("train ", "progress ", "{'"))]
    assert len(noise) <= 0.3 * len(shown), "\n".join(x["message"][:100] for x in shown)
    # The fake HF_TOKEN of the serving process appears in no output file, log line or artifact.
    for f in run_dir.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".md", ".html", ".yaml", ".txt", ""):
            assert CANARY not in f.read_text(errors="ignore"), f
    assert CANARY not in json.dumps(logs) and CANARY not in json.dumps(arts)

    # A second run of the same deployment resumes: every stage finds its outputs complete and skips the work.
    before = (run_dir / "sft" / "metrics.json").stat().st_mtime_ns
    out = _deployment_run(env, "sft-to-rl/tiny", {"overrides": [f"runs_root={runs_root}"]})
    assert out.returncode == 0, out.stdout[-2000:]
    assert (run_dir / "sft" / "metrics.json").stat().st_mtime_ns == before
    # ... and the finished training arms start no stage process at all (each would spend seconds on imports to say so)
    runs = _post(api, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 5})
    again = next(r for r in runs if r["parameters"].get("overrides") == [f"runs_root={runs_root}"])
    assert again["id"] != run["id"] and again["state"]["type"] == "COMPLETED"
    lines = [x["message"] for x in _all_logs(api, again["id"])]
    for label in ("sft[sft]", "sft[rpsft]", "rl[sft]", "rl[rpsft]"):
        assert any(m.startswith(f"{label}: ") and "is complete with this recipe; skipped" in m for m in lines), label
    assert not [m for m in lines if "-m stages.sft" in m or "-m stages.rl" in m], lines
    # In the browser, as a user sees it: the report artifact's page shows every figure (each image loaded).
    ui = api.removesuffix("/api")
    shots = os.environ.get("SFT2RL_SCREENSHOTS")  # a folder: refresh the docs/ screenshots from this run
    page = _browse(
        f"{ui}/artifacts/artifact/{by_key['tiny-report']['id']}",
        lambda st: sum(1 for i in st["images"] if i["complete"] and i["width"] > 0) >= 4,
        Path(shots) / "ui-report-artifact.png" if shots else None,
    )
    figures = [i for i in page["images"] if files_url in i["src"]]
    assert len(figures) >= 4 and all(i["width"] > 0 for i in figures), page["images"]
    assert "What this run shows" in page["text"]
    if shots:
        _browse(f"{ui}/runs/flow-run/{run['id']}", lambda st: "report" in st["text"], Path(shots) / "ui-flow-run.png")
        with urllib.request.urlopen(f"{api}/deployments/name/sft-to-rl/tiny", timeout=30) as r:  # noqa: S310
            dep = json.loads(r.read())
        _browse(  # the documented run form: every parameter with its description and default
            f"{ui}/deployments/deployment/{dep['id']}/run",
            lambda st: "Dotted key=value overrides" in st["text"],
            Path(shots) / "ui-run-form.png",
        )


def test_pipeline_times_benchmark_reads_the_finished_run(prefect_server, tmp_path):
    out = tmp_path / "times.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/pipeline_times.py", "--latest", "--out", str(out)],
        env=prefect_server["env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["state"] == "COMPLETED" and data["total_s"] > 0
    # every stage's task run; the latest run may be a rerun, whose finished arms the flow skipped in well under 0.1 s
    for stage in ("prepare", "sft[sft]", "sft[rpsft]", "rl[sft]", "rl[rpsft]", "evaluate", "report"):
        assert data["stages_s"][stage] >= 0, stage
    assert data["stages_s"]["prepare"] > 0 and data["stages_s"]["report"] > 0  # these start a process every time
    assert sum(data["stages_s"].values()) <= data["total_s"] + 1
    # with the run's folder: each arm's training time and each evaluated model's timing, from the run's own files
    (root,) = [o.removeprefix("runs_root=") for o in data["parameters"]["overrides"] if o.startswith("runs_root=")]
    run_dir = Path(root) / "tiny"
    args = ["--flow-run-id", data["flow_run_id"], "--run-dir", str(run_dir), "--out", str(out)]
    cmd = [sys.executable, "benchmarks/pipeline_times.py", *args]
    proc = subprocess.run(cmd, env=prefect_server["env"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    for arm in ("sft", "rpsft", "rl-sft", "rl-rpsft"):
        expected = json.loads((run_dir / arm / "metrics.json").read_text())["train_runtime_s"]
        assert data["train_runtime_s"][arm] == round(expected, 1) > 0, arm
    assert {"base", "sft", "rpsft", "rl-sft", "rl-rpsft"} <= set(data["per_model_eval_s"])
    assert all(t["answers_s"] > 0 and t["total_s"] > 0 for t in data["per_model_eval_s"].values())


def test_a_bad_choice_is_refused_before_a_run_is_created(prefect_server, tmp_path):
    """The run form's choices are enums in the deployment's parameter schema, which the server enforces."""
    env, api = prefect_server["env"], prefect_server["api"]
    runs_root = tmp_path / "runs"
    before = len(_post(api, "/flow_runs/filter", {}))
    out = _deployment_run(env, "sft-to-rl/tiny", {"arms": ["bogus"], "overrides": [f"runs_root={runs_root}"]}, 300)
    assert out.returncode != 0
    said = " ".join((out.stdout + out.stderr).split())  # rich wraps long lines
    assert "bogus" in said and "rpsft" in said, said[-3000:]  # the bad value and the choices
    assert len(_post(api, "/flow_runs/filter", {})) == before  # no run created
    assert not runs_root.exists()  # nothing ran, nothing written


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["model.trust_remote_code=true"], "trust_remote_code=true is refused for deployment runs"),
        (["runs_root=/var/tmp/sft2rl-elsewhere"], "outside the folders a deployment run may use"),
        (["cache_dir=/var/tmp/sft2rl-cache-elsewhere"], "cache_dir=/var/tmp/sft2rl-cache-elsewhere is outside"),
    ],
)
def test_a_deployment_run_cannot_enable_remote_code_or_leave_the_project_roots(
    prefect_server, tmp_path, overrides, words
):
    env, api = prefect_server["env"], prefect_server["api"]
    runs_root = tmp_path / "runs"
    params = {"overrides": [*overrides] if "runs_root" in overrides[0] else [f"runs_root={runs_root}", *overrides]}
    out = _deployment_run(env, "sft-to-rl/tiny", params, 300)
    assert out.returncode != 0
    runs = _post(api, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 5})
    run = next(r for r in runs if r["parameters"].get("overrides") == params["overrides"])
    assert run["state"]["type"] == "FAILED"
    logs = json.dumps(_post(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}}))
    assert words in run["state"]["message"] or words in logs
    assert words in out.stdout, out.stdout[-3000:]  # what `prefect deployment run --watch` printed
    task_runs = _post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    assert not task_runs  # refused before any stage
    assert not runs_root.exists() and not Path("/var/tmp/sft2rl-elsewhere").exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            ["sft.training.learning_rate=1e10", "sft.training.max_grad_norm=0"],
            ("numerical fault", "lower the learning rate"),
        ),
        (["disk_reserve_gb=1000000"], ("not enough disk", "disk_reserve_gb")),  # as a full disk looks to the stage
    ],
    ids=["nan", "disk-full"],
)
def test_a_fault_names_its_cause_in_the_run_state_and_is_not_retried(prefect_server, tmp_path, extra, words):
    env, api = prefect_server["env"], prefect_server["api"]
    over = [f"runs_root={tmp_path / 'runs'}", *extra]
    out = _deployment_run(env, "sft/tiny", {"method": "sft", "overrides": over}, 300)
    assert out.returncode != 0
    runs = _post(api, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 5})
    run = next(r for r in runs if r["parameters"].get("overrides") == over)
    # the run's state message (the run list, the run page) names the fault and its cause
    assert run["state"]["type"] == "FAILED" and all(w in run["state"]["message"] for w in words), run["state"]
    # and `prefect deployment run --watch` prints it (the stage's ERROR line streamed from the server)
    assert all(w in out.stdout for w in words), out.stdout[-3000:]
    # and the run's page in the browser shows it
    page = _browse(f"{api.removesuffix('/api')}/runs/flow-run/{run['id']}", lambda st: words[0] in st["text"])
    assert words[0] in page["text"], page["text"][-2000:]
    tasks = _post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    assert [t["run_count"] for t in tasks] == [1]  # a refusal or fault is never retried


def _browse(url: str, until, screenshot: Path | None = None) -> dict:
    """The page in headless Chromium (.ci/run installs it; required under CI, skipped elsewhere without it)."""
    from tests.e2e.browser import Page, chromium

    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed: the browser checks need it (apt-get install -y chromium)")
    return Page(url, until, timeout=90, screenshot=screenshot).state


def _cli_run(env, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", "configs/tiny.yaml", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_same_run_name_is_refused_and_other_runs_do_not_interfere(prefect_server, tmp_path):
    env, api = prefect_server["env"], prefect_server["api"]
    runs = tmp_path / "runs"
    common = ["--no-rl", "--no-eval", "--arms", "sft", f"runs_root={runs}"]
    first = _cli_run(env, *common, "run_name=shared")
    deadline = time.monotonic() + 120
    while not (runs / "shared" / ".flow.lock").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read() if first.stdout else ""
        time.sleep(0.5)
    other = _cli_run(env, *common, "run_name=other")
    second = _cli_run(env, *common, "run_name=shared")
    out2, _ = second.communicate(timeout=300)
    assert second.returncode != 0
    assert "'shared' is already running" in out2 and "is being written by process" in out2, out2[-2000:]
    out1, _ = first.communicate(timeout=600)
    outo, _ = other.communicate(timeout=600)
    assert first.returncode == 0, out1[-2000:]
    assert other.returncode == 0, outo[-2000:]
    for name in ("shared", "other"):
        d = runs / name
        assert (d / "sft" / "DONE").is_file() and not (d / ".flow.lock").exists()
        assert f"run_name: {name}" in (d / "sft" / "config.yaml").read_text()
    # The refused run started no stage.
    refused = [
        r
        for r in _post(api, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 10})
        if r["state"]["type"] == "FAILED" and f"runs_root={runs}" in r["parameters"].get("overrides", [])
    ]
    assert refused
    assert not _post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [refused[0]["id"]]}}})


def test_a_killed_stage_is_retried_by_the_flow_and_resumes(prefect_server, tmp_path):
    env = prefect_server["env"]
    runs = tmp_path / "runs"
    args = [
        "--no-rl",
        "--no-eval",
        "--arms",
        "rpsft",
        f"runs_root={runs}",
        "sft.training.max_steps=6",
        "sft.training.save_steps=2",
        "sft.training.save_total_limit=10",
    ]
    # The stage is SIGKILLed right after its step-4 checkpoint: Prefect retries the crashed task once, and the
    # retry resumes from that checkpoint; the flow completes without the user doing anything.
    crashed = _cli_run({**env, "SFT2RL_FAULT_KILL_AFTER_SAVE": "4"}, *args)
    out, _ = crashed.communicate(timeout=600)
    assert crashed.returncode == 0 and "exit -9, crash" in out and "resuming" in out, out[-3000:]
    arm = runs / "tiny" / "rpsft"
    history = json.loads((arm / "metrics.json").read_text())["log_history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]  # steps 5-6 only were trained by the retry
    # A rerun by hand finds the arm complete and trains nothing.
    again = _cli_run(env, *args)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and "complete" in out, out[-2000:]


def test_secrets_are_scrubbed_from_flow_logs(prefect_server, tmp_path):
    env, api = prefect_server["env"], prefect_server["api"]
    # A path that happens to contain the token (as a pasted URL might): the stage fails naming the path.
    bad = ["model.source=local", f"model.path={tmp_path}/{CANARY}", f"runs_root={tmp_path / 'runs'}"]
    out = _deployment_run(env, "prepare/tiny", {"overrides": bad}, 300)
    assert out.returncode != 0
    run = next(
        r
        for r in _post(api, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 5})
        if r["parameters"].get("overrides", [None])[-1] == bad[-1]
    )
    logs = _post(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
    text = json.dumps(logs) + json.dumps(run["state"])
    assert "***" in text  # the path was logged, with the token replaced
    assert CANARY not in text


def test_local_server_binds_to_loopback_only(prefect_server):
    from pipeline import server

    port = int(prefect_server["api"].rsplit(":", 1)[1].split("/")[0])
    assert "127.0.0.1" in prefect_server["api"]
    # This machine's address on its network interface (a UDP "connect" sends nothing; it only picks the route).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 1))
            ip = s.getsockname()[0]
        except OSError:
            ip = "127.0.0.1"
    if not ip.startswith("127."):  # not reachable from the network side
        with pytest.raises(OSError), socket.create_connection((ip, port), timeout=3):
            pass
    env_before = dict(os.environ)
    try:
        for k in ("PREFECT_SERVER_API_HOST", "PREFECT_API_URL", "PREFECT_SERVER_API_PORT"):
            os.environ.pop(k, None)
        server.configure(home=prefect_server["home"])
        assert server.server_command()[-4:-2] == ["--host", "127.0.0.1"]
    finally:
        os.environ.clear()
        os.environ.update(env_before)


def test_a_stage_flow_runs_alone(prefect_server, tmp_path):
    """README: prefect deployment run 'sft/<config>' --params '{"method": "l2"}' trains that one arm."""
    env, api = prefect_server["env"], prefect_server["api"]
    runs_root = tmp_path / "runs"
    out = _deployment_run(env, "sft/tiny", {"method": "l2", "overrides": [f"runs_root={runs_root}"]}, 600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    arm = runs_root / "tiny" / "l2"
    assert (arm / "DONE").is_file() and json.loads((arm / "metrics.json").read_text())["method"] == "l2"
    assert not (runs_root / "tiny" / "sft").exists()  # only the requested stage ran
    arts = _post(api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["tiny-l2"]}}})
    assert arts and arts[0]["type"] == "markdown"


def test_a_server_restarted_mid_run_loses_nothing(tmp_path, cache_dir):
    """The Prefect server stopped and started again while a stage trains: the stage (a process of its own) goes on,
    the flow's client retries through the outage, and the run completes with its outputs and its state on the
    restarted server (same database)."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = _free_port()
    env = _server_env(home, port, cache_dir)
    cli = [sys.executable, "-m", "pipeline.cli"]

    def server(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*cli, "server", *args, "--port", str(port)], env=env, cwd=REPO, capture_output=True, text=True, timeout=180
        )

    assert server("--background").returncode == 0
    runs = tmp_path / "runs"
    args = ["--no-rl", "--no-eval", "--arms", "sft", "--port", str(port), f"runs_root={runs}"]
    run = subprocess.Popen(
        [*cli, "run", "--config", "configs/tiny.yaml", *args, "sft.training.max_steps=40"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (runs / "tiny" / "sft").is_dir():  # the SFT stage has started
            assert run.poll() is None and time.monotonic() < deadline, run.stdout.read() if run.stdout else ""
            time.sleep(0.5)
        assert server("--stop").returncode == 0
        time.sleep(5)
        assert server("--background").returncode == 0
        out, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    api = env["PREFECT_API_URL"]
    flow_runs = _post(api, "/flow_runs/filter", {})
    server("--stop")
    assert run.returncode == 0, out[-3000:]
    assert (runs / "tiny" / "sft" / "DONE").is_file() and (runs / "tiny" / "sft" / "checkpoint").is_dir()
    assert [r["state"]["type"] for r in flow_runs] == ["COMPLETED"], flow_runs


def test_two_runs_of_a_stage_deployment_on_one_arm_at_once_train_it_once(prefect_server, tmp_path):
    """Concurrent stages through the Prefect server: two flow runs of sft/tiny on the same arm, started together. The
    served deployments take one flow run at a time (sft2rl serve --limit 1), so the second waits, finds the arm
    finished and skips it (without starting the stage's process); the arm is trained once, whole (two processes on
    one arm are refused by its lock: test_same_run_name_is_refused_and_other_runs_do_not_interfere)."""
    env = prefect_server["env"]
    over = [f"runs_root={tmp_path / 'runs'}", "sft.training.max_steps=30"]
    cmd = [sys.executable, "-m", "prefect", "deployment", "run", "sft/tiny", "--params"]
    cmd += [json.dumps({"method": "sft", "overrides": over}), "--watch", "--watch-timeout", "600"]
    procs = [
        subprocess.Popen(
            cmd, env={**env, "COLUMNS": "400"}, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=1300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    # the second finds it finished before starting a stage process
    assert sum("is complete with this recipe; skipped" in o for o in outs) == 1, [o[-2000:] for o in outs]
    arm = tmp_path / "runs" / "tiny" / "sft"
    assert (arm / "DONE").is_file() and json.loads((arm / "metrics.json").read_text())["steps"] == 30
