"""The benchmark scripts the docs quote run end to end (on the tiny model here) and write the promised keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(args: list[str], cache_dir) -> None:
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _tiny_sft_init(tmp_path, cache_dir):
    """A tiny plain-SFT arm to start RL from: ``<runs>/init/sft/checkpoint``; returns ``<runs>``."""
    runs = tmp_path / "runs"
    sft = [sys.executable, "-m", "stages.sft", "--config", "configs/tiny.yaml", f"runs_root={runs}", "run_name=init"]
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir)}
    subprocess.run([*sft, "method=sft"], cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    return runs


@pytest.mark.slow
def test_rpsft_overhead_benchmark_writes_its_keys(tmp_path, cache_dir):
    out = tmp_path / "o.json"
    kept = [{"machine": {"cpu_model": "another"}, "ratio_ga1": 1.1}]
    out.write_text(json.dumps({"ratio_ga1": 9.0, "other_machines": kept}))  # a committed file's other machines
    _run(
        [
            "benchmarks/rpsft_overhead.py",
            "--config",
            "configs/tiny.yaml",
            "--out",
            str(out),
            "--rounds-ga1",
            "1",
            "--rounds-ga4",
            "1",
            "--seq",
            "32",
        ],
        cache_dir,
    )
    r = json.loads(out.read_text())
    for key in (
        "ratio_ga1",
        "ratio_ga4",
        "naive_ratio_ga1",
        "naive_ratio_ga4",
        "precompute_s",
        "full_svd_s",
        "cache_hit_s",
        "extra_memory_mb",
        "penalty_step_s",  # the block and its gradient, as after every optimizer step
        "penalty_grad_only_s",  # the gradient from kept blocks
    ):
        assert isinstance(r[key], float) and r[key] > 0, key
    assert r["max_weight_diff_rpsft_vs_naive"] < 1e-4
    assert r["other_machines"] == kept and r["ratio_ga1"] != 9.0  # this run replaced its own figures only
    # make bench's second half: the real arm's ratios added beside the bare step's, in the same file
    arm = tmp_path / "arm.json"
    arm.write_text(json.dumps({"settings": [], "other_machines": kept}))
    args = ["benchmarks/arm_overhead.py", "--config", "configs/tiny.yaml", "--out", str(arm), "--into", str(out)]
    _run([*args, "--steps-ga1", "2", "--steps-ga4", "1"], cache_dir)
    both = json.loads(out.read_text())
    assert both["ratio_ga1"] == r["ratio_ga1"]  # the bare-step figures are kept
    assert both["arm_ratio_ga1"] > 0 and both["arm_ratio_ga4"] > 0 and both["arm_ratio_source"].startswith(str(arm))
    written = json.loads(arm.read_text())
    settings = written["settings"]
    assert [s["gradient_accumulation_steps"] for s in settings] == [1, 4]
    assert all(s["runs"]["sft"][0]["steps"] == s["steps"] for s in settings)
    for s in settings:  # one round: its ratio is the ratio of the medians
        assert s["ratio_per_round"] == [s["ratio"]]
    assert written["machine"]["cores"] >= 1 and "cpu_flags" in written["machine"] and written["commit"]
    assert written["other_machines"] == kept


@pytest.mark.slow
def test_task_accuracy_and_generation_benchmarks(tmp_path, cache_dir):
    out = tmp_path / "acc.json"
    _run(
        [
            "benchmarks/task_accuracy.py",
            "--config",
            "configs/tiny.yaml",
            "--n",
            "8",
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
            f"cache_dir={cache_dir}",
        ],
        cache_dir,
    )
    r = json.loads(out.read_text())
    assert r["n"] == 8 and 0 <= r["strict_accuracy"] <= 1 and len(r["strict_ci95"]) == 2
    out = tmp_path / "gen.json"
    _run(
        [
            "benchmarks/generation.py",
            "--config",
            "configs/tiny.yaml",
            "--out",
            str(out),
            "--rounds",
            "1",
            "--grpo-steps",
            "2",
            "--ppo-steps",
            "2",
        ],
        cache_dir,
    )
    r = json.loads(out.read_text())
    for key in ("vllm_tokens_per_s", "hf_tokens_per_s", "grpo_step_generation_s", "grpo_step_training_s"):
        assert r[key] > 0, key
    assert r["grpo_step_weight_sync_s"] > 0  # vLLM: the weight push is timed apart from generation
    for engine in ("hf", "vllm"):  # one PPO step per engine, split into its phases
        step = r["ppo_step"][engine]
        assert step["generation_s"] > 0 and step["training_s"] > 0, engine
    assert r["ppo_step"]["vllm"]["weight_sync_s"] > 0 and r["ppo_step"]["hf"]["weight_sync_s"] < 0.01
    assert all("sampling/sampling_logp_difference/mean" in row for row in r["ppo_steps"]["vllm"])
    assert r["machine"]["cpu_model"] and r["machine"]["cores"] >= 1  # figures are per machine kind


@pytest.mark.slow
def test_forgetting_setting_benchmark_reads_each_candidate_against_the_base(tmp_path, cache_dir):
    out = tmp_path / "f.json"
    args = ["benchmarks/forgetting_setting.py", "--config", "configs/tiny.yaml", "--lrs", "1e-3", "--steps", "2"]
    args += ["--method", "rpsft", "--set", "sft.rpsft.lambda=10", "--runs-root", str(tmp_path / "runs")]
    _run([*args, "--out", str(out)], cache_dir)
    r = json.loads(out.read_text())
    (c,) = r["candidates"]
    assert c["method"] == "rpsft" and c["steps"] == 2 and c["overrides"] == ["sft.rpsft.lambda=10"]
    assert (tmp_path / "runs" / "rpsft-lr0.001" / "rpsft" / "DONE").is_file()
    for probe in ("chat_facts/accuracy", "instructions/accuracy", "agreement/accuracy", "facts/accuracy"):
        assert probe in r["base"] and probe in c["metrics"], probe
        d = c["vs_base"][probe]
        assert d["ci_low"] <= d["diff"] <= d["ci_high"] and d["n"] > 0
    assert c["sft_train_runtime_s"] > 0 and c["eval_model_s"] > 0
    assert isinstance(c["ood_drops_beyond_interval"], list)


@pytest.mark.slow
def test_rl_setting_benchmark_reads_each_rl_run_against_its_initial_checkpoint(tmp_path, cache_dir):
    runs = _tiny_sft_init(tmp_path, cache_dir)
    out = tmp_path / "rl.json"
    args = ["benchmarks/rl_setting.py", "--config", "configs/tiny.yaml", "--init-run", str(runs / "init")]
    args += ["--runs", "t0.7-lr5e-5-12steps:sft", "--runs-root", str(runs), "--eval-size", "8"]
    args += ["--set", "rl.training.max_steps=2", "--set", "rl.generation.max_completion_length=8"]
    # as the default config says: sampled answers for RL models and their starts only. The starts here have no RL arm
    # of their own in the benchmark's folder, and are still read on sampled answers (Avg@k gains below)
    args += ["--stage-set", "eval.samples_for=rl"]
    _run([*args, "--out", str(out)], cache_dir)
    r = json.loads(out.read_text())
    (row,) = r["runs"]
    assert row["arm"] == "rl-t0.7-lr5e-5-12steps-sft" and row["steps"] == 2 and row["init"] == "sft"
    assert (runs / "rl-setting" / row["arm"] / "DONE").is_file() and (runs / "rl-setting" / "sft").is_symlink()
    for metric in ("chain_sum/accuracy", "chain_sum/avg@4", "chain_sum/pass@4"):
        g = row["gain"][metric]
        assert g["ci_low"] <= g["diff"] <= g["ci_high"] and g["n"] == 8
    assert set(row["ood_change"]) == {"chat_facts/accuracy", "instructions/accuracy", "agreement/accuracy"} | {
        "facts/accuracy"
    }
    assert len(row["curve"]["mixed_groups"]) == 2 and all(0 <= x <= 1 for x in row["curve"]["mixed_groups"])
    # the choice: a setting only when its Avg@k gain excludes 0 from every initialisation it ran from
    moved = row["gain"]["chain_sum/avg@4"]["ci_low"] > 0
    assert r["chosen"] == ("t0.7-lr5e-5-12steps" if moved else None)
    assert r["extra_overrides"] == ["rl.training.max_steps=2", "rl.generation.max_completion_length=8"]


@pytest.mark.slow
def test_eval_cost_benchmark_times_both_engine_layouts_and_both_cka_forms(tmp_path, cache_dir):
    out = tmp_path / "eval_cost.json"
    args = ["benchmarks/eval_cost.py", "--config", "configs/tiny.yaml", "--out", str(out), "--rounds", "1"]
    _run([*args, "--prompts", "4", "--tokens", "96", "--layers", "2"], cache_dir)
    r = json.loads(out.read_text())
    for layout in ("separate", "in_process"):
        e = r["engine"][layout]
        assert e["start_s"] > 0 and e["close_s"] >= 0 and e["tokens_per_s"] > 0, layout
        assert e["rounds"][0]["prompts"] == 4
    assert r["cka"]["copies_s"] > 0 and r["cka"]["weighted_s"] > 0 and r["cka"]["layers"] == 2
    assert r["cka"]["max_abs_diff"] < 1e-9  # the two forms compute the same statistics
    assert r["machine"]["cores"] >= 1


@pytest.mark.slow
def test_eval_batching_benchmark_times_both_forms_of_generation_and_choice_scoring(tmp_path, cache_dir):
    out = tmp_path / "eval_batching.json"
    _run(
        ["benchmarks/eval_batching.py", "--config", "configs/tiny.yaml", "--out", str(out), "--rounds", "1"], cache_dir
    )
    r = json.loads(out.read_text())
    g, c = r["generation"], r["choice"]
    # the tiny config's requests: each generation benchmark's greedy answers, and the sampled ones where it samples
    assert [(q["n"] > 1) for q in g["requests"]] == [False, True, False]
    assert g["answers"] == sum(q["prompts"] * q["n"] for q in g["requests"])
    assert g["one_at_a_time_s"][0] > 0 and g["together_s"][0] > 0 and g["same_greedy_answers"] is True
    assert set(c["benchmarks"]) == {"agreement", "facts"} and c["before_s"][0] > 0 and c["after_s"][0] > 0
    assert c["same_choices"] is True and c["max_abs_score_diff"] < 1e-3
    assert r["machine"]["cores"] >= 1 and r["dtype"] == "float32"


@pytest.mark.slow
def test_grpo_step_benchmark_times_each_variant_and_only_beta0_drops_the_kl(tmp_path, cache_dir):
    runs = _tiny_sft_init(tmp_path, cache_dir)
    out = tmp_path / "grpo_step.json"
    init = runs / "init" / "sft" / "checkpoint"
    _run(
        [
            "benchmarks/grpo_step.py",
            "--config",
            "configs/tiny.yaml",
            "--init",
            str(init),
            "--steps",
            "2",
            "--out",
            str(out),
        ],
        cache_dir,
    )
    r = json.loads(out.read_text())
    assert list(r["variants"]) == ["trl_default", "checkpointing", "default", "beta0"]
    for name, row in r["variants"].items():
        assert row["steps"] == 2 and row["training_s_median"] > 0 and row["generation_s_median"] > 0, name
        assert row["kl_logged"] is (name != "beta0"), name  # tiny.yaml's beta > 0: a reference model but in beta0
    assert r["default_over_trl_default"] > 0 and r["beta0_over_default"] > 0


@pytest.mark.slow
def test_probe_layout_benchmark_runs_the_probe_with_the_engine_in_each_layout(tmp_path, cache_dir):
    out = tmp_path / "probe.json"
    args = ["benchmarks/probe_layout.py", "--config", "configs/tiny.yaml", "--rounds", "1", "--probe-rounds", "1"]
    _run([*args, "--out", str(out), f"cache_dir={cache_dir}"], cache_dir)
    r = json.loads(out.read_text())
    for layout in ("in_process", "separate"):
        (run,) = r["runs"][layout]
        assert run["vllm_layout"] == layout  # the probe ran the engine where it was asked to
        assert run["wall_s"] > 0 and run["hf_tokens_per_s"] > 0 and run["vllm_tokens_per_s"] > 0, layout
        assert r["median"][layout]["vllm_engine_start_s"] == round(run["vllm_engine_start_s"], 1), layout
    assert r["wall_saved_s"] == round(r["median"]["separate"]["wall_s"] - r["median"]["in_process"]["wall_s"], 1)
    assert r["machine"]["cores"] >= 1 and r["overrides"] == [f"cache_dir={cache_dir}"]


def test_process_start_benchmark_times_a_stage_process_both_ways(tmp_path, cache_dir):
    out = tmp_path / "p.json"
    _run(["benchmarks/process_start.py", "--out", str(out), "--rounds", "1", "--stages", "report"], cache_dir)
    r = json.loads(out.read_text())
    s = r["stages"]["report"]
    assert set(s["wall_s_median"]) == {"default_collection", "deferred_and_frozen"} and all(
        v > 0 for v in s["wall_s_median"].values()
    )
    assert s["ratio"] == round(s["wall_s_median"]["deferred_and_frozen"] / s["wall_s_median"]["default_collection"], 3)
    assert r["machine"] and r["rounds"] == 1


def test_suite_time_records_the_suites_wall_time_and_slowest_tests_and_keeps_pytests_exit_code(tmp_path):
    out = tmp_path / "suite.json"
    script = [sys.executable, "benchmarks/suite_time.py", "--out", str(out), "--top", "3"]
    proc = subprocess.run([*script, "--", "tests/unit/test_provenance.py"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["exit_code"] == 0 and r["workers"] == 2 and r["tests"] >= 5 and r["failures"] == r["errors"] == 0
    assert r["wall_s"] > 0 and len(r["slowest"]) == 3 and r["machine"]["cores"] >= 1
    assert r["slowest"][0]["s"] >= r["slowest"][-1]["s"] and "test_provenance" in r["slowest"][0]["test"]
    # no test selected is pytest's exit code 5, passed on (never a silent pass)
    proc = subprocess.run(
        [*script, "--", "tests/unit/test_provenance.py", "-k", "no_such_test"], cwd=REPO, capture_output=True
    )
    assert proc.returncode == 5 and json.loads(out.read_text())["tests"] == 0
