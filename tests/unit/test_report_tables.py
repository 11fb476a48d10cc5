"""The report's tables read at a glance: scores with one column per model (a few models per table), comparisons with
a short verdict beside the level and the notes that qualify it; the Prefect table artifacts show the same."""

from __future__ import annotations

from pipeline.artifacts import score_tables
from stages.config import load_config
from stages.report_stats import _holm_verdicts
from stages.report_text import MODELS_PER_TABLE, comparison_notes, model_groups
from tests.conftest import CONFIGS


def _model(name: str, init: str | None, metrics: dict[str, float]) -> dict:
    return {
        "name": name,
        "init": init,
        "seed_labels": ["seed 0", "seed 1"],
        "metrics": {k: {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05} for k, v in metrics.items()},
    }


def test_scores_are_one_column_per_model_and_a_sweep_is_split_into_tables_that_fit():
    models = [_model(f"arm{i}", "base", {"id/mean_accuracy": 0.3, "ood/mean_accuracy": 0.5}) for i in range(14)]
    models[0]["metrics"]["forgetting/kl_to_base"] = {"value": 0.25, "ci_low": 0.2, "ci_high": 0.3}
    groups = model_groups(models)
    assert [len(g) for g in groups] == [MODELS_PER_TABLE, MODELS_PER_TABLE, 14 - 2 * MODELS_PER_TABLE]
    assert [m for g in groups for m in g] == models  # every model once, in order
    tables = score_tables({"models": models, "score_tables": [[m["name"] for m in g] for g in groups]})
    assert len(tables) == 3
    first = tables[0]
    assert [r["metric"] for r in first] == [
        "init",
        "seeds",
        "id/mean_accuracy",
        "ood/mean_accuracy",
        "forgetting/kl_to_base",
    ]
    assert all(set(r) == {"metric", *[f"arm{i}" for i in range(6)]} for r in first)  # every row has every column
    assert first[2]["arm0"] == "30.0% [25.0, 35.0]" and first[3]["arm5"] == "50.0% [45.0, 55.0]"
    assert first[4]["arm0"] == "0.2500 [0.2000, 0.3000]" and first[4]["arm1"] == "n/a"
    assert first[1]["arm0"] == "0, 1"
    # a report.json written before the grouping: one table of every model
    assert len(score_tables({"models": models[:3]})) == 1


def test_a_comparison_table_row_gives_the_verdict_alone_and_the_qualifiers_beside_it():
    cfg = load_config(CONFIGS / "tiny.yaml", [])
    base = {"a": "rpsft", "b": "sft", "n": 200, "seeds": 2, "level": "checkpoint"}
    comps = [
        base | {"metric": "ood/mean_accuracy", "diff": 0.05, "ci_low": 0.02, "ci_high": 0.08, "p_value": 0.001},
        base | {"metric": "chain_sum/accuracy", "diff": -0.01, "ci_low": -0.04, "ci_high": 0.02, "p_value": 0.5},
        base | {"metric": "forgetting/kl_to_base", "diff": -0.02, "ci_low": -0.03, "ci_high": -0.01, "p_value": 0.001},
    ]
    _holm_verdicts(comps, cfg, 0.05)
    comps[1] |= {"within_seed_spread": True, "seed_spread": 0.08}
    assert comps[0]["verdict_short"] == "rpsft is higher"
    assert comps[1]["verdict_short"] == "not distinguishable" and comps[1]["verdict"].startswith(
        "not distinguishable at this size: [-4.00, +2.00]"
    )
    assert comps[2]["verdict_short"] == "rpsft is lower (better: closer to the base)"
    assert comparison_notes(comps[0]) == "checkpoints, 2 seeds"  # a claim's test: Holm-corrected
    assert comparison_notes(comps[1]) == "checkpoints, 2 seeds; descriptive; within the seed spread (8.00 points)"
    assert comparison_notes(base | {"seeds": 5, "level": "method", "p_holm": 0.01}) == "methods, 5 seeds"
    assert comparison_notes({"not_evaluated": "NaN scores"}) == "NaN scores"
