"""Evaluation and the report from small real runs on the tiny model: SFT and RPSFT arms, GRPO from each, every
benchmark source, forgetting measures, resume, seed aggregation, and the report files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stages.config import ConfigError
from stages.data import DataError
from stages.eval_items import build_benchmark, gsm8k_problems, gsm_symbolic_to_gsm8k
from stages.evaluate import run as eval_run
from stages.report import run as report_run
from stages.report_plots import PLOTS
from stages.rl import run as rl_run
from stages.sft import run as sft_run


def _eval_overrides(tmp_path):
    choice = tmp_path / "mc.jsonl"
    choice.write_text(
        "".join(
            json.dumps({"q": f"Which number is larger, {a} or {b}?", "opts": [str(a), str(b)], "gold": str(max(a, b))})
            + "\n"
            for a, b in [(3, 9), (12, 4), (7, 8), (20, 2), (5, 6), (1, 11)]
        )
    )
    gen = tmp_path / "sums.jsonl"
    gen.write_text("".join(json.dumps({"problem": f"{a} + {a}", "solution": 2 * a}) + "\n" for a in range(1, 7)))
    benches = [
        {"name": "task", "source": "train_task", "size": 12, "max_new_tokens": 12, "samples": 2},
        {"name": "gsm8k", "source": "gsm8k", "size": 4, "max_new_tokens": 8},
        {"name": "gsm_sym", "source": "gsm_symbolic", "size": 3, "max_new_tokens": 8},
        {"name": "rg_gcd", "source": "reasoning_gym", "task": "gcd", "domain": "out", "size": 4, "max_new_tokens": 8},
        {
            "name": "sums",
            "source": "file",
            "path": str(gen),
            "fields": {"question": "problem", "answer": "solution"},
            "max_new_tokens": 8,
        },
        {"name": "agreement", "source": "agreement", "domain": "out", "size": 30},
        {"name": "facts", "source": "facts", "domain": "out", "size": 20},
        {"name": "chat_facts", "source": "chat_facts", "domain": "out", "size": 8, "max_new_tokens": 8},
        {"name": "instr", "source": "instructions", "domain": "out", "size": 8, "max_new_tokens": 8},
        {
            "name": "larger",
            "source": "file",
            "domain": "out",
            "path": str(choice),
            "fields": {"question": "q", "answer": "gold", "choices": "opts"},
        },
    ]
    return [
        f"eval.benchmarks={json.dumps(benches)}",
        "eval.forgetting.num_prompts=6",
        "eval.forgetting.max_new_tokens=8",
        "eval.forgetting.cka_bootstrap=20",
        "eval.bootstrap=200",
    ]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir):
    """base + sft + rpsft + rl-sft + rl-rpsft on the tiny model, evaluated and reported."""
    from stages.config import load_config
    from tests.conftest import CONFIGS

    tmp = tmp_path_factory.mktemp("evalrun")

    def cfg(*o):
        return load_config(
            CONFIGS / "tiny.yaml", [f"runs_root={tmp / 'runs'}", f"cache_dir={cache_dir}", *_eval_overrides(tmp), *o]
        )

    for method in ("sft", "rpsft"):
        sft_run(cfg(f"sft.method={method}", "sft.training.max_steps=3"))
    base = cfg()
    for arm in ("sft", "rpsft"):
        rl_run(cfg(f"rl.init={base.run_dir / arm / 'checkpoint'}", "rl.training.max_steps=2"))
    results = eval_run(base)
    report = report_run(base)
    return cfg, base, results, report


def test_every_model_is_scored_with_intervals(finished_run):
    _, cfg, results, _ = finished_run
    assert set(results) == {"base", "sft", "rpsft", "rl-sft", "rl-rpsft"}
    assert results["rl-rpsft"]["init"] == "rpsft" and results["rl-sft"]["init"] == "sft"
    for name, r in results.items():
        m = r["metrics"]
        for key in (
            "task/accuracy",
            "task/avg@2",
            "task/pass@2",
            "gsm8k/accuracy",
            "gsm_sym/accuracy",
            "rg_gcd/accuracy",
            "sums/accuracy",
            "agreement/accuracy",
            "facts/accuracy",
            "larger/accuracy",
            "chat_facts/accuracy",
            "instr/accuracy",
            "forgetting/kl_to_base",
            "forgetting/kl_to_base_sampled",
            "forgetting/cka_mean",
            "id/mean_accuracy",
            "ood/mean_accuracy",
        ):
            assert key in m, (name, key)
            assert m[key]["ci_low"] <= m[key]["value"] <= m[key]["ci_high"], (name, key, m[key])
            assert m[key]["n"] >= 1
        assert m["task/pass@2"]["value"] >= m["task/avg@2"]["value"] - 1e-9  # pass@k >= avg@k per item
        assert m["facts/accuracy"]["chance"] == pytest.approx(0.25)
        assert m["agreement/accuracy"]["chance"] == pytest.approx(0.5)
        assert m["larger/accuracy"]["chance"] == pytest.approx(0.5)
        assert (cfg.run_dir / "eval" / name / "DONE").is_file()
        assert len(r["cka_layers"]) == 2  # one per transformer layer of the tiny model
    # The base compared with itself: KL exactly 0, CKA 1 in every layer.
    base = results["base"]
    assert base["metrics"]["forgetting/kl_to_base"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert base["metrics"]["forgetting/kl_to_base_sampled"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert "chat_facts/accuracy_lenient" not in base["metrics"]  # scored by their own checkers only
    sampled = json.loads((cfg.run_dir / "eval" / "general_text_sampled.json").read_text())["sequences"]
    greedy = json.loads((cfg.run_dir / "eval" / "general_text.json").read_text())["sequences"]
    assert sampled != greedy  # the base's sampled answers, not its greedy ones again
    assert all(c["value"] == pytest.approx(1.0, abs=1e-6) for c in base["cka_layers"])
    # Training moved the SFT arm away from the base: KL > 0 with an interval above 0.
    assert results["sft"]["metrics"]["forgetting/kl_to_base"]["ci_low"] > 0


def test_eval_items_exclude_training_and_rl_questions(finished_run):
    _, cfg, _, _ = finished_run
    from stages.eval_items import training_questions

    seen = training_questions(cfg)
    items = [json.loads(x) for x in (cfg.run_dir / "eval" / "items" / "task.jsonl").read_text().splitlines()]
    assert len(items) == 12 and not {x["question"] for x in items} & seen
    sft_q = {json.loads(x)["question"] for x in (cfg.run_dir / "data" / "sft_train.jsonl").read_text().splitlines()}
    assert sft_q <= seen


def test_rerun_skips_complete_models_and_force_redoes(finished_run):
    _, cfg, _, _ = finished_run
    f = cfg.run_dir / "eval" / "sft" / "metrics.json"
    before = f.stat().st_mtime_ns
    eval_run(cfg)
    assert f.stat().st_mtime_ns == before
    eval_run(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"models": ["sft"]})}), force=True)
    assert f.stat().st_mtime_ns != before


def test_report_files_hold_every_model_and_plot(finished_run):
    _, cfg, _, report = finished_run
    run_dir = cfg.run_dir
    for name in ("report.md", "report.html", "report.json"):
        assert (run_dir / name).is_file()
    data = json.loads((run_dir / "report.json").read_text())
    assert {m["name"] for m in data["models"]} == {"base", "sft", "rpsft", "rl-sft", "rl-rpsft"}
    for m in data["models"]:
        for v in m["metrics"].values():
            assert {"value", "ci_low", "ci_high", "n"} <= set(v)
    pairs = {(c["a"], c["b"]) for c in data["comparisons"]}
    assert {("rpsft", "sft"), ("rl-rpsft", "rl-sft"), ("sft", "base"), ("rpsft", "base")} <= pairs
    for c in data["comparisons"]:
        assert c["ci_low"] <= c["diff"] <= c["ci_high"]
        assert c["level"] == "checkpoint" and "about these checkpoints" in c["verdict"]  # one training seed
        if c.get("family") == "claims":  # Holm within the claims' own tests
            assert c["significant"] == (c["p_holm"] < 0.05) and c["p_holm"] >= c["p_value"]
        else:
            assert (
                c["significant"] == (c["ci_low"] > 0 or c["ci_high"] < 0)
                and "(descriptive, unadjusted)" in c["verdict"]
            )
        if not c["significant"]:  # an interval, never a claim of equivalence; Holm's correction named when it decides
            assert c["verdict"].startswith(("not distinguishable at this size: [", "not significant after Holm's"))
    assert [c["claim"] for c in data["claims"]] == ["tradeoff", "representation", "rl_init"]
    assert all(
        c["level"] == "checkpoint"
        and c["verdict"] in ("supported", "contradicted", "inconclusive", "too imprecise", "not tested")
        for c in data["claims"]
    )
    # every claim whose test ran states what it could have detected
    assert all(c["power"] is None or c["power"]["mde"] > 0 for c in data["claims"])
    assert (
        any(c["power"] for c in data["claims"]) and "Minimum detectable effect" in (run_dir / "report.md").read_text()
    )
    # claim (c) is gated on RL having moved a model: 3 GRPO steps on the tiny model move nothing measurable, and
    # then the claim is "not tested", never a reading of the SFT checkpoints' own gap
    from stages.report_stats import moved

    gains = [c for c in data["comparisons"] if (c["a"], c["b"]) in {("rl-sft", "sft"), ("rl-rpsft", "rpsft")}]
    gains = [c for c in gains if c["metric"] == "id/mean_avg@2"]
    assert len(gains) == 2
    rl_claim = next(c for c in data["claims"] if c["claim"] == "rl_init")
    assert (rl_claim["verdict"] == "not tested") == (not any(moved(c) for c in gains))
    assert "## RL from each initialisation" in (run_dir / "report.md").read_text()
    assert "## The paper's claims, on this run" in (run_dir / "report.md").read_text()
    md = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    for plot in PLOTS:
        png = run_dir / "plots" / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{plot}.png" in md
    assert html.count("data:image/png;base64,") == len(PLOTS)
    for model in ("base", "sft", "rpsft", "rl-sft", "rl-rpsft"):
        assert f"| {model} |" in md and f"<td>{model}</td>" in html
    assert "## What this run shows" in md and data["summary"]
    # A reader's first screen: the three claims, one line each with the number that decides it, then the words.
    glance = md.split("## At a glance", 1)[1].split("\n\n", 2)[1].splitlines()
    assert len(glance) == 3 and all(" **" in line and "** " in line for line in glance), glance
    assert glance[2].startswith("- (c) RL ends better from RPSFT than from SFT: **" + rl_claim["verdict"] + "**")
    assert md.index("## At a glance") < md.index("Words used below") < md.index("## What this run shows")
    assert "<strong>" + rl_claim["verdict"] + "</strong>" in html and "**" not in html
    assert set(data["rl"]) == {"rl-sft", "rl-rpsft"}


def test_report_aggregates_seed_runs(finished_run, tmp_path):
    make, cfg, _, single = finished_run
    other = tmp_path / "seed1"
    shutil.copytree(cfg.run_dir, other)
    agg = report_run(make(f"report.seed_runs=[{other}]"))
    assert agg["n_seeds"] == 2 and len(agg["seeds"]) == 2
    one = {m["name"]: m for m in single["models"]}["sft"]["metrics"]["agreement/accuracy"]
    two = {m["name"]: m for m in agg["models"]}["sft"]["metrics"]["agreement/accuracy"]
    assert two["n"] == one["n"] and two["seeds"] == 2
    assert two["value"] == pytest.approx(one["value"])  # the copy has the same scores
    control = agg["seed_control"]  # the same model in two runs with identical scores: no spread at all
    assert control and all(c["diff"] == 0 and c["ci_low"] == c["ci_high"] == 0 for c in control)
    for bad in (f"[{cfg.run_dir}]", f"[{other}, {other}]"):  # the run itself, or one run twice, is refused
        with pytest.raises(ConfigError, match="this run or is listed twice"):
            report_run(make(f"report.seed_runs={bad}"))
    report_run(cfg)  # restore the single-seed report


def test_an_rl_run_from_an_sft_arm_retrained_since_is_refused_before_any_evaluation(finished_run, tmp_path):
    """Provenance at evaluation: rl-sft started from sft's weights of that time; once sft is retrained, scoring them
    side by side would read RL against a checkpoint it never started from. Refused, naming the arm and the redo
    command, and the run folder is left as it was."""
    import hashlib

    make, cfg, _, _ = finished_run
    copy = tmp_path / "runs" / cfg.run_name
    shutil.copytree(cfg.run_dir, copy)
    weights = next((copy / "sft" / "checkpoint").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")  # what a retrained sft arm looks like to the check: other bytes

    def digest() -> dict[str, str]:
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(copy.rglob("*")) if p.is_file()}

    before = digest()
    with pytest.raises(ConfigError, match=r"rl-sft was started from other weights than .*sft/checkpoint has now") as e:
        eval_run(make(f"runs_root={tmp_path / 'runs'}"))
    assert f"--force rl.init={copy / 'sft' / 'checkpoint'}" in str(e.value)
    assert digest() == before  # nothing evaluated, nothing rewritten


def test_gsm8k_holdout_by_source_problem(tiny_cfg):
    mapping = gsm_symbolic_to_gsm8k()
    # reasoning-gym 0.1.25 enables 85 of its 100 templates; each maps to a different real GSM8K problem.
    assert len(mapping) == 85 and len(set(mapping.values())) == 85
    assert set(mapping.values()) <= {p["gsm8k_id"] for p in gsm8k_problems()}
    cfg = tiny_cfg("data.tasks=[{name: gsm_symbolic}]", "data.size=40")
    from stages.config import BenchmarkSpec
    from stages.eval_items import training_source_ids

    used = training_source_ids(cfg)
    items, note = build_benchmark(cfg, BenchmarkSpec(name="g", source="gsm8k", size=100))
    assert used and note["excluded"] == len({mapping[i] for i in used}) and len(items) == 100 - note["excluded"]
    assert not {x["source_id"] for x in items} & {mapping[i] for i in used}
    sym, _ = build_benchmark(cfg, BenchmarkSpec(name="s", source="gsm_symbolic", size=30))
    assert not {x["source_id"] for x in sym} & used


@pytest.mark.parametrize(
    ("overrides", "exc", "match"),
    [
        (["eval.models=[nosuch]"], ConfigError, "neither 'base'"),
        (["eval.benchmarks=[{name: a, source: facts}, {name: a, source: agreement}]"], ConfigError, "unique"),
        (["eval.benchmarks=[{name: x, source: file}]"], ConfigError, "path is required"),
        (["eval.benchmarks=[{name: x, source: reasoning_gym}]"], ConfigError, "task"),
        (["eval.benchmarks=[{name: 'a/b', source: facts}]"], ConfigError, "plain name"),
        (["eval.benchmarks=[{name: x, source: reasoning_gym, task: nosuchtask}]"], DataError, "nosuchtask"),
    ],
)
def test_bad_eval_input_is_named_before_work(tiny_cfg, overrides, exc, match):
    with pytest.raises(exc, match=match):
        eval_run(tiny_cfg(*overrides))


def test_bad_custom_benchmark_rows(tiny_cfg, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer": "five"}) + "\n")
    with pytest.raises(DataError, match="neither an option index"):
        eval_run(tiny_cfg(f"eval.benchmarks=[{{name: b, source: file, path: {bad}, fields: {{choices: choices}}}}]"))
    with pytest.raises(ConfigError, match="no evaluated models"):
        report_run(tiny_cfg("run_name=never-evaluated"))


def test_cli_evaluate_and_report_commands(finished_run):
    """The README's commands: sft2rl stage evaluate (models=...) and sft2rl stage report."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    _, cfg, _, _ = finished_run
    common = [f"runs_root={cfg.runs_root}", f"cache_dir={cfg.cache_dir}", *_eval_overrides(Path(cfg.runs_root).parent)]
    env = {**os.environ, "SFT2RL_CACHE_DIR": cfg.cache_dir}
    stderr = {}
    for stage, extra in (("evaluate", ["models=[base,rpsft]"]), ("report", [])):
        cmd = [sys.executable, "-m", "pipeline.cli", "stage", stage, "--config", "configs/tiny.yaml", *common, *extra]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        stderr[stage] = proc.stderr
    assert (
        "eval base: complete, skipped" in stderr["evaluate"] and "eval rpsft: complete, skipped" in stderr["evaluate"]
    )
    assert "report written" in stderr["report"]
    help_ = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "stage", "evaluate", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_.returncode == 0 and "--config" in help_.stdout


def test_a_disk_that_fills_during_an_evaluation_ends_it_with_exit_4_and_the_rerun_finishes(
    tiny_cfg, monkeypatch, capfd
):
    """Disk filling during evaluation: the write of a model's outputs fails, the stage stops with exit 4 and one
    message, the model is not marked evaluated, and the same command with room again evaluates it."""
    import errno
    import os

    from stages.evaluate import main as eval_main
    from tests.conftest import CONFIGS

    cfg = tiny_cfg()
    args = ["--config", str(CONFIGS / "tiny.yaml"), f"runs_root={cfg.runs_root}", f"cache_dir={cfg.cache_dir}"]
    args += ["eval.models=[base]", "eval.forgetting.enabled=false"]
    real = os.replace

    def full(src, dst):
        if "/eval/base/" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    code = eval_main(args)
    monkeypatch.setattr(os, "replace", real)
    err = capfd.readouterr().err
    base = cfg.layout.eval_model("base")
    assert code == 4 and "the disk filled during the stage" in err and "Traceback" not in err, err[-2000:]
    assert not (base.dir / "DONE").exists() and not [p for p in base.dir.rglob("*") if ".tmp" in p.name]
    assert eval_main(args) == 0 and (base.dir / "DONE").is_file()
