"""The GPU check (scripts/gpu_check/) runs here on the CPU at tiny shapes, through the same device script the lent GPU
machine runs, so it cannot rot while no GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_the_device_script_runs_every_part_of_the_check_and_the_arms_at_smoke_shapes(tmp_path, cache_dir):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels")}
    env |= {"PYTHON": sys.executable, "ARMS_RUNS_ROOT": str(tmp_path / "runs"), "SFT2RL_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(
        ["bash", "scripts/gpu_check/device.sh", "--run", "--arms", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert r["mode"] == "smoke" and r["machine"]["torch"] and r["total_s"] > 0
    anchors, steps, grpo = (r["parts"][k] for k in ("anchors", "steps", "grpo"))
    for label in ("k16", "k25pct"):  # the paper's absolute k (768 at full size) and 25% of each rank
        a = anchors[label]
        assert a["precompute_s"] > 0 and a["anchors_mib"] > 0 and a["precompute_over_full_svd"] > 0
        for ga in ("ga1", "ga8"):
            assert steps[ga]["ratio_to_sft"][label] > 0 and steps[ga]["step_s"][label] > 0
    assert anchors["max_rel_error_top_k_singular_values"] < 1e-3 and anchors["largest_matrix"]["s1_over_sk"] >= 1
    assert anchors["full_svd_matrices_measured"] == anchors["matrices"]  # smoke: within the SVD budget, none guessed
    assert "imports ok" in proc.stdout  # device.sh tries the check's imports before the run
    assert grpo["steps"] == 2 and grpo["generation_tokens_per_s"] > 0 and len(grpo["step_time_s"]) == 2
    # the penalty alone with split-bf16 block products beside fp32 (CPU: emulated, so only its precision counts here)
    precision = steps["penalty_k25pct"]
    assert precision["fp32"]["s"] > 0 and precision["split_bf16"]["s"] > 0 and precision["fp32"]["penalty"] > 0
    assert precision["penalty_rel_diff"] < 1e-3 and precision["native_bf16_products"] is False
    # the arms: both SFT arms through the product's stages, then RL from each read against its own checkpoint
    arms = json.loads((tmp_path / "out" / "gpu_arms.json").read_text())
    assert arms["mode"] == "smoke" and arms["rl"]["rc"] == 0 and "arms imports ok" in proc.stdout
    assert {m: a["rc"] for m, a in arms["sft"].items()} == {"sft": 0, "rpsft": 0}
    assert arms["sft"]["rpsft"]["summary"]["regularized_matrices"] > 0
    assert arms["sft"]["sft"]["summary"]["regularized_matrices"] == 0
    rl = json.loads((tmp_path / "out" / arms["rl"]["json"]).read_text())
    assert [(x["init"], x["steps"]) for x in rl["runs"]] == [("sft", 2), ("rpsft", 2)]
    assert rl["stage_overrides"] == arms["stage_overrides"] == ["device=cpu"]
    diff = rl["gain_differences"][arms["setting"]]["chain_sum/avg@4"]
    assert diff["ci_low"] <= diff["diff"] <= diff["ci_high"] and diff["n"] == 4


def test_parts_past_the_deadline_are_skipped_and_the_json_is_still_written(tmp_path):
    out = tmp_path / "g.json"
    cmd = [sys.executable, "scripts/gpu_check/run.py", "--smoke", "--deadline-s", "0", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = json.loads(out.read_text())["parts"]
    assert set(parts) == {"anchors", "steps", "grpo"}
    assert all(p["skipped"].startswith("deadline") for p in parts.values())


def test_no_parts_runs_none_so_a_call_can_run_the_arms_alone(tmp_path):
    out = tmp_path / "g.json"
    cmd = [sys.executable, "scripts/gpu_check/run.py", "--smoke", "--parts", "", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["parts"] == {} and r["total_s"] >= 0


def test_the_full_check_refuses_a_machine_without_a_gpu(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU: the full check would run")
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check/run.py", "--out", str(tmp_path / "g.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "--smoke" in proc.stderr
