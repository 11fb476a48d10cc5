"""Claim (c), "RPSFT is a better starting point for RL", read by the report from evaluation folders: RL that did not
move reads "not tested"; a lead the SFT checkpoints already had, carried through equal RL gains, is not "supported";
RL that gains more from RPSFT and ends higher is. Synthetic per-item Avg@4 scores, written as the evaluate stage
writes them, go through the report's own aggregation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.config import ConfigError, dump_config, load_config
from stages.report_stats import aggregate
from stages.report_text import _rl_section
from tests.conftest import CONFIGS, write_eval

N = 400  # items


def _avg4(p: np.ndarray, draws: np.ndarray) -> list[float]:
    """Avg@4 per item: the share of 4 sampled answers that are right, each right with probability p. Every model
    uses the same uniform draws (as a seeded engine does): a model RL left unchanged scores exactly as before."""
    return (draws < np.clip(p, 0, 1)[:, None]).mean(axis=1).tolist()


def _write(run_dir, name: str, kind: str, init: str, avg: list[float], greedy: list[float]) -> None:
    ids = [f"task-{i}" for i in range(len(avg))]

    def row(vals, **extra):
        v = float(np.mean(vals))
        return {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": len(vals), "domain": "in", **extra}

    metrics = {
        "task/accuracy": row(greedy, kind="greedy"),
        "task/avg@4": row(avg, kind="avg@4"),
        "id/mean_accuracy": row(greedy),
        "id/mean_avg@4": row(avg),
    }
    scores = {"task/accuracy": {"ids": ids, "scores": greedy}, "task/avg@4": {"ids": ids, "scores": avg}}
    write_eval(run_dir, name, kind, init, metrics, scores)


def _report(tmp_path, p_sft, p_rpsft, gain_sft, gain_rpsft, seed=0, recipes=None, extra=(), rl=True):
    """sft / rpsft with per-item success probabilities, and RL from each adding its gain to every item;
    ``recipes``: {arm: overrides} recorded as that arm's config.yaml."""
    rng = np.random.default_rng(seed)
    over = [f"runs_root={tmp_path}", "run_name=claim", "eval.bootstrap=1000", *extra]
    cfg = load_config(CONFIGS / "tiny.yaml", over)
    for arm, overrides in (recipes or {}).items():
        (cfg.run_dir / arm).mkdir(parents=True)
        (cfg.run_dir / arm / "config.yaml").write_text(dump_config(load_config(CONFIGS / "tiny.yaml", overrides)))
    base_p = rng.uniform(0.05, 0.6, N)
    draws, greedy_draws = rng.random((N, 4)), rng.random(N)
    for name, kind, init, p in (
        ("sft", "sft", "base", base_p + p_sft),
        ("rpsft", "sft", "base", base_p + p_rpsft),
        ("rl-sft", "rl", "sft", base_p + p_sft + gain_sft),
        ("rl-rpsft", "rl", "rpsft", base_p + p_rpsft + gain_rpsft),
    )[: 4 if rl else 2]:
        greedy = (greedy_draws < np.clip(p, 0, 1)).astype(float).tolist()
        _write(cfg.run_dir, name, kind, init, _avg4(p, draws), greedy)
    data = aggregate(cfg)
    return cfg, data, {c["claim"]: c for c in data["claims"]}["rl_init"]


def test_rl_that_did_not_move_reads_not_tested(tmp_path):
    _, data, c = _report(tmp_path, 0.0, 0.15, 0.0, 0.0)
    assert data["rl_reading"]["metric"] == "id/mean_avg@4"  # the paper's headline, sampled answers
    assert c["verdict"] == "not tested"
    assert "did not move either model" in c["why"] and "from rpsft" in c["why"] and "from sft" in c["why"]
    # the same run read on the post-RL difference alone would have said "supported": RPSFT's 15-point SFT lead
    post = data["rl_reading"]["post"]
    assert post["ci_low"] > 0.05


def test_a_run_without_rl_reads_not_tested_and_says_why(tmp_path):
    _, _, c = _report(tmp_path, 0.0, 0.15, 0.0, 0.0, rl=False)
    assert c["verdict"] == "not tested" and "has no RL from rpsft or sft" in c["why"] and c["evidence"] == []


def test_a_lead_from_sft_with_equal_rl_gains_is_not_supported(tmp_path):
    _, data, c = _report(tmp_path, 0.0, 0.15, 0.2, 0.2)
    gains = data["rl_reading"]["gains"]
    assert gains["sft"]["ci_low"] > 0 and gains["rpsft"]["ci_low"] > 0  # RL moved from both: the gate passed
    assert data["rl_reading"]["post"]["ci_low"] > 0  # RL from RPSFT ends higher ...
    gd = data["rl_reading"]["gain_diff"]
    assert gd["ci_low"] < 0 < gd["ci_high"]  # ... but gained no more
    assert c["verdict"] == "inconclusive" and "the lead was there before RL" in c["why"]
    # the difference of gains is a row of the comparisons table, paired by item
    assert any(x["a"] == "rl-rpsft - rpsft" and x["b"] == "rl-sft - sft" for x in data["comparisons"])


def test_rl_that_gains_more_from_rpsft_and_ends_higher_is_supported(tmp_path):
    _, _, c = _report(tmp_path, 0.0, 0.0, 0.05, 0.3)
    assert c["verdict"] == "supported" and c["level"] == "checkpoint"
    assert [e["metric"] for e in c["evidence"]] == ["id/mean_avg@4"] * 4


@pytest.mark.parametrize(("gain_sft", "gain_rpsft"), [(0.3, 0.0), (0.3, 0.05)])
def test_rl_from_rpsft_ending_lower_is_contradicted(tmp_path, gain_sft, gain_rpsft):
    _, data, c = _report(tmp_path, 0.0, 0.0, gain_sft, gain_rpsft)
    assert c["verdict"] == "contradicted"
    if gain_rpsft == 0.0:  # one RL run did not move: the reading says which
        assert "did not move the model from rpsft" in c["why"]


def test_the_report_sets_rl_beside_its_own_start(tmp_path):
    cfg, data, _ = _report(tmp_path, 0.0, 0.15, 0.2, 0.2)
    text = json.dumps(_rl_section(cfg, data))
    assert "RL from each initialisation" in text and "Did RL move each model?" in text
    assert "From sft: id/mean_avg@4" in text and "RL moved it up beyond the interval" in text
    assert set(data["rl_start"]) == {"rl-sft", "rl-rpsft"} and data["rl_start"]["rl-sft"]["init"] == "sft"


def test_arms_trained_on_different_recipes_are_named_and_their_claim_left_undecided(tmp_path):
    recipes = {
        "rl-sft": ["rl.init=runs/claim/sft/checkpoint"],
        "rl-rpsft": ["rl.init=runs/claim/rpsft/checkpoint", "rl.training.learning_rate=0.01"],
    }
    _, data, c = _report(tmp_path, 0.0, 0.0, 0.05, 0.3, recipes=recipes)
    assert c["verdict"] == "confounded"  # it would read "supported" (the test above), but the RL recipes differ
    assert "rl.training.learning_rate" in c["why"] and "would read supported" in c["why"]
    (row,) = data["confounds"]
    assert (row["a"], row["b"]) == ("rl-rpsft", "rl-sft") and set(row["differs"]) == {"rl.training.learning_rate"}
    assert row["differs"]["rl.training.learning_rate"][0] == 0.01
    post = next(x for x in data["comparisons"] if (x["a"], x["b"]) == ("rl-rpsft", "rl-sft"))
    assert "confounded: the arms also differ in rl.training.learning_rate" in post["verdict"]
    with pytest.raises(ConfigError, match="different recipes beyond their method.*report.confounds=flag"):
        _report(tmp_path / "refuse", 0.0, 0.0, 0.05, 0.3, recipes=recipes, extra=["report.confounds=refuse"])
    # the method alone (rl.init) is no confound
    same = {"rl-sft": ["rl.init=a"], "rl-rpsft": ["rl.init=b"]}
    _, data, c = _report(tmp_path / "same", 0.0, 0.0, 0.05, 0.3, recipes=same)
    assert c["verdict"] == "supported" and data["confounds"] == []
