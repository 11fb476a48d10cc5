"""The RL-setting grid across training seeds: claim (c)'s difference of gains and each initialisation's gain pooled
over the SFT runs a setting ran from, and the choice read on the pooled gain."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("rl_setting", REPO / "benchmarks" / "rl_setting.py")
rl_setting = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rl_setting)

N = 200


def _row(setting: str, init: str, run: str, gain: np.ndarray) -> dict:
    ids = [f"q{i}" for i in range(N)]
    g = {"ids": ids, "gain": [float(x) for x in gain]}
    mean = float(np.mean(gain))
    summary = {"diff": mean, "ci_low": mean - 0.03, "ci_high": mean + 0.03, "n": N}
    return {
        "setting": setting,
        "init": init,
        "init_run": run,
        "arm": f"rl-{setting}-{init}",
        "train_runtime_s": 100.0,
        "gain": {m: summary for m in rl_setting.IN_DOMAIN},
        "item_gains": {m: g for m in rl_setting.IN_DOMAIN},
    }


def _gains(mean: float, seed: int) -> np.ndarray:
    """Per-item Avg@4 gains: multiples of 0.25 in [-1, 1] with the given mean (about)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round((rng.normal(mean, 0.3, N)) * 4) / 4, -1, 1)


def _result(rows: list[dict]) -> dict:
    r = {"runs": rows}
    rl_setting._pooled_gains(r)
    rl_setting._choose(r)
    rl_setting._gain_differences(r)
    return r


def _two_seeds(setting: str) -> list[dict]:
    """Two training seeds, RL from each initialisation: no gain from sft, about 10 points from rpsft."""
    return [
        _row(setting, i, f"seed-{k}", _gains(0.10 if i == "rpsft" else 0.0, 1 + 2 * k + (i == "rpsft")))
        for k in (0, 1)
        for i in ("sft", "rpsft")
    ]


def test_claim_c_pools_the_difference_of_gains_over_training_seeds_with_each_seeds_reading_beside_it():
    s, key = "grid-a", "chain_sum/avg@4"
    rows = _two_seeds(s)
    r = _result(rows)
    d = r["gain_differences"][s][key]
    assert d["seeds"] == 2 and d["init_runs"] == ["seed-0", "seed-1"] and d["n"] == N
    per = d["per_seed"]
    assert set(per) == {"seed-0", "seed-1"} and all(p["seeds"] == 1 for p in per.values())
    # the pooled reading is the mean of the two seeds' per-item differences, inside both seeds' spread
    expect = np.mean([np.mean(rows[1 + 2 * k]["item_gains"][key]["gain"]) for k in (0, 1)]) - np.mean(
        [np.mean(rows[2 * k]["item_gains"][key]["gain"]) for k in (0, 1)]
    )
    assert d["diff"] == pytest.approx(expect, abs=1e-9)
    assert min(p["diff"] for p in per.values()) <= d["diff"] <= max(p["diff"] for p in per.values())
    assert d["ci_low"] > 0  # a 10-point gap over 2 x 200 items
    # one seed's reading alone equals what a one-seed file would say (the pooling changes nothing for it)
    one = _result(rows[:2])["gain_differences"][s][key]
    assert one["diff"] == pytest.approx(per["seed-0"]["diff"]) and one["ci_low"] == pytest.approx(
        per["seed-0"]["ci_low"]
    )
    assert one["seeds"] == 1 and "per_seed" not in one


def test_a_seed_with_only_one_initialisation_does_not_enter_claim_c_and_rows_without_item_gains_keep_the_old_reading():
    s, key = "grid-b", "chain_sum/avg@4"
    rows = [
        _row(s, "sft", "seed-0", _gains(0.0, 1)),
        _row(s, "rpsft", "seed-0", _gains(0.05, 2)),
        _row(s, "sft", "seed-1", _gains(0.0, 3)),  # its rpsft run not yet measured
    ]
    r = _result(rows)
    assert r["gain_differences"][s][key]["seeds"] == 1
    assert r["pooled_gains"][s]["sft"]["init_runs"] == ["seed-0", "seed-1"] and "rpsft" not in r["pooled_gains"][s]
    old = {"old-setting": {key: {"diff": 0.01, "ci_low": -0.02, "ci_high": 0.04, "n": N}}}
    legacy = {k: v for k, v in _row("old-setting", "sft", "seed-0", _gains(0.0, 5)).items() if k != "item_gains"}
    r = {"runs": [legacy], "gain_differences": old}
    rl_setting._gain_differences(r)
    assert r["gain_differences"] == old


def test_the_choice_reads_each_initialisations_gain_pooled_over_its_seeds():
    s, key = "grid-c", "chain_sum/avg@4"
    # both seeds' rows say "moved" on their own summaries, but the per-item gains pooled over the seeds do not
    flat = [_row(s, i, f"seed-{k}", _gains(0.0, 10 + 2 * k + (i == "sft"))) for k in (0, 1) for i in ("sft", "rpsft")]
    for row in flat:
        row["gain"][key] = {"diff": 0.05, "ci_low": 0.01, "ci_high": 0.09, "n": N}
    r = _result(flat)
    assert r["pooled_gains"][s]["sft"][key]["ci_low"] < 0 < r["pooled_gains"][s]["sft"][key]["ci_high"]
    assert r["chosen"] is None
    # real gains from both initialisations in both seeds: chosen
    up = [_row(s, i, f"seed-{k}", _gains(0.15, 20 + 2 * k + (i == "sft"))) for k in (0, 1) for i in ("sft", "rpsft")]
    assert _result(up)["chosen"] == s


def test_seeds_are_pooled_item_by_item_whatever_order_each_seeds_evaluation_listed_its_items():
    s, key = "grid-d", "chain_sum/avg@4"
    rows = _two_seeds(s)
    straight = _result(rows)
    order = np.random.default_rng(7).permutation(N)
    for row in rows[2:]:  # seed 1's evaluation listed the same items in another order
        for g in row["item_gains"].values():
            g["ids"] = [g["ids"][j] for j in order]
            g["gain"] = [g["gain"][j] for j in order]
    shuffled = _result(rows)
    for field in ("diff", "ci_low", "ci_high"):
        assert shuffled["gain_differences"][s][key][field] == pytest.approx(straight["gain_differences"][s][key][field])
        for init in ("sft", "rpsft"):
            a, b = shuffled["pooled_gains"][s][init][key], straight["pooled_gains"][s][init][key]
            assert a[field] == pytest.approx(b[field]), (init, field)


def test_the_post_rl_reading_compares_where_rl_ended_and_differs_from_the_difference_of_gains_by_the_sft_gap():
    s, key = "grid-e", "chain_sum/avg@4"
    rows = _two_seeds(s)
    for row in rows:  # rpsft's checkpoints start 0.25 higher on every item; RL adds the row's gains to that
        start = 0.5 if row["init"] == "rpsft" else 0.25
        for g in row["item_gains"].values():
            g["after"] = [start + x for x in g["gain"]]
    r = _result(rows)
    post, gains = r["post_rl_differences"][s][key], r["gain_differences"][s][key]
    assert post["diff"] == pytest.approx(gains["diff"] + 0.25, abs=1e-9) and post["seeds"] == 2
    assert set(post["per_seed"]) == {"seed-0", "seed-1"}
