"""``eval.samples_for: rl``: sampled answers (Avg@k) only for the models claim (c) reads. Which models those are, that
a model scored greedy only is scored again once an RL run starts from it, and that the report pools such a metric
over the seed runs that have it and says so."""

from __future__ import annotations

import json

import numpy as np

from stages.config import load_config
from stages.evaluate import _fingerprint, _fingerprints, model_table, sampled_models
from stages.report_plots import PLOTS
from stages.report_stats import aggregate
from stages.report_text import _blocks, render_md
from stages.store import mark_done
from tests.conftest import CONFIGS, write_eval

N = 200
TABLE = [
    {"name": "base", "kind": "base", "init": None},
    {"name": "sft", "kind": "sft", "init": "base"},
    {"name": "rpsft", "kind": "sft", "init": "base"},
    {"name": "lora", "kind": "sft", "init": "base"},
    {"name": "rl-sft", "kind": "rl", "init": "sft"},
    {"name": "rl-rpsft", "kind": "rl", "init": "rpsft"},
]


def test_rl_samples_the_rl_models_and_their_starts_only():
    cfg = load_config(CONFIGS / "tiny.yaml", [])
    assert cfg.eval.samples_for == "all" and sampled_models(cfg, TABLE) == {e["name"] for e in TABLE}
    cfg = load_config(CONFIGS / "tiny.yaml", ["eval.samples_for=rl"])
    assert sampled_models(cfg, TABLE) == {"sft", "rpsft", "rl-sft", "rl-rpsft"}
    assert sampled_models(cfg, TABLE[:4]) == set()  # before RL: nothing is sampled
    assert sampled_models(cfg, [*TABLE[:1], {"name": "rl-base", "kind": "rl", "init": "base"}]) == {"base", "rl-base"}


def test_a_greedy_only_evaluation_is_redone_when_the_model_becomes_an_rl_start(tmp_path):
    path = str(CONFIGS)  # any folder: the fingerprint stamps its weight files (none here)
    sampling = ["eval.benchmarks=[{name: t, source: train_task, domain: in, size: 4, samples: 4}]"]
    all_, rl = (load_config(CONFIGS / "tiny.yaml", [*sampling, f"eval.samples_for={v}"]) for v in ("all", "rl"))
    # the setting itself is not in the fingerprint, whether the model was sampled is: a run evaluated before this
    # setting existed keeps its evaluations
    assert _fingerprint(all_, path, "hf") == _fingerprint(rl, path, "hf") == _fingerprint(rl, path, "hf", True)
    assert _fingerprint(rl, path, "hf", False) != _fingerprint(rl, path, "hf", True)
    greedy_only = load_config(CONFIGS / "tiny.yaml", [sampling[0].replace("samples: 4", "samples: 0")])
    assert _fingerprint(greedy_only, path, "hf", False) == _fingerprint(greedy_only, path, "hf", True)  # nothing to
    # tell apart when no benchmark samples


def test_a_start_is_sampled_when_eval_models_names_it_without_its_rl_model(tmp_path):
    cfg = load_config(
        CONFIGS / "tiny.yaml", [f"runs_root={tmp_path}", "run_name=r", "eval.samples_for=rl", "eval.models=[rpsft]"]
    )
    for arm, metrics in (
        ("rpsft", {}),
        ("rl-rpsft", {"algorithm": "grpo", "init": str(cfg.run_dir / "rpsft" / "checkpoint")}),
    ):
        (cfg.run_dir / arm / "checkpoint").mkdir(parents=True)
        (cfg.run_dir / arm / "checkpoint" / "config.json").write_text("{}")
        (cfg.run_dir / arm / "metrics.json").write_text(json.dumps(metrics))
        mark_done(cfg.run_dir / arm)
    table = model_table(cfg)
    assert [e["name"] for e in table] == ["rpsft"]
    assert sampled_models(cfg, table) == {"rpsft", "rl-rpsft"}  # its RL run exists: its Avg@k is kept and drawn


def test_a_sampled_evaluation_serves_a_greedy_only_model_never_the_reverse():
    path, sampling = str(CONFIGS), ["eval.benchmarks=[{name: t, source: train_task, domain: in, size: 4, samples: 4}]"]
    cfg = load_config(CONFIGS / "tiny.yaml", [*sampling, "eval.samples_for=rl"])
    sampled, greedy = _fingerprint(cfg, path, "hf", True), _fingerprint(cfg, path, "hf", False)
    assert sampled in _fingerprints(cfg, path, "hf", False)  # switching to samples_for: rl redoes nothing
    assert greedy not in _fingerprints(cfg, path, "hf", True)  # a start needs its sampled answers


def _write(run_dir, name: str, kind: str, init: str, greedy: list[float], avg: list[float] | None) -> None:
    ids = [f"task-{i}" for i in range(N)]

    def row(vals, **extra):
        v = float(np.mean(vals))
        return {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": N, "domain": "in", **extra}

    metrics = {"task/accuracy": row(greedy, kind="greedy"), "id/mean_accuracy": row(greedy)}
    scores = {"task/accuracy": {"ids": ids, "scores": greedy}}
    if avg is not None:
        metrics |= {"task/avg@4": row(avg, kind="avg@4"), "id/mean_avg@4": row(avg)}
        scores["task/avg@4"] = {"ids": ids, "scores": avg}
    write_eval(run_dir, name, kind, init, metrics, scores)


def test_the_report_pools_a_metric_over_the_seed_runs_that_scored_it_and_says_so(tmp_path):
    rng = np.random.default_rng(0)
    cfg = load_config(
        CONFIGS / "tiny.yaml", [f"runs_root={tmp_path}", "run_name=s", "seeds=[0, 1]", "eval.bootstrap=1000"]
    )

    def draw(p: float) -> list[float]:
        return (rng.random(N) < p).astype(float).tolist()

    def avg(p: float) -> list[float]:
        return (rng.random((N, 4)) < p).mean(axis=1).tolist()

    seed0, seed1 = cfg.for_seed(0).run_dir, cfg.for_seed(1).run_dir
    for name, kind, init, p in (
        ("sft", "sft", "base", 0.3),
        ("rpsft", "sft", "base", 0.3),
        ("rl-sft", "rl", "sft", 0.5),
        ("rl-rpsft", "rl", "rpsft", 0.5),
    ):
        _write(seed0, name, kind, init, draw(p), avg(p))
    for name in ("sft", "rpsft"):  # seed 1: no RL, so greedy only
        _write(seed1, name, "sft", "base", draw(0.3), None)
    data = aggregate(cfg)
    sft = next(m for m in data["models"] if m["name"] == "sft")
    assert sft["metrics"]["task/accuracy"]["seeds"] == 2 and sft["metrics"]["task/avg@4"]["seeds"] == 1
    assert sft["metric_seed_labels"] == {"task/avg@4": ["seed 0"], "id/mean_avg@4": ["seed 0"]}
    # seed 0's own value and interval, not a mean with a missing seed
    assert "within_seed" not in sft["metrics"]["task/avg@4"]
    comps = {(c["a"], c["b"], c["metric"]): c for c in data["comparisons"]}
    assert comps[("rpsft", "sft", "task/accuracy")]["seeds"] == 2
    assert comps[("rpsft", "sft", "task/avg@4")]["seeds"] == 1  # compared where both have it, labelled 1 seed
    # claim (c)'s gate reads the sampled metric on the seed RL ran from, and RL moved here
    assert data["rl_reading"]["metric"] == "id/mean_avg@4"
    assert data["rl_reading"]["gains"]["sft"]["ci_low"] > 0
    md = render_md(_blocks(cfg, data, {p: tmp_path / f"{p}.png" for p in PLOTS}), tmp_path)
    assert "Scored in fewer seed runs than the model's other rows" in md and "task/avg@4 of sft (0)" in md
