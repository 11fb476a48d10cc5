"""The paper's claims read the RPSFT and plain-SFT arms of the run: rpsft vs sft, or, in a sweep whose arms have their
own names, the primary comparison's arms when it sets an rpsft arm against an sft arm."""

from __future__ import annotations

import json

from stages.config import load_config
from stages.report_stats import claim_pair, claims
from tests.conftest import CONFIGS


def _cfg(*overrides: str):
    return load_config(CONFIGS / "tiny.yaml", list(overrides))


def test_default_arms_are_rpsft_and_sft():
    assert claim_pair(_cfg()) == ("rpsft", "sft")


def test_a_sweep_reads_its_primary_rpsft_and_sft_arms():
    sweep = [
        {"arm": "sft-lr2e-4", "method": "sft"},
        {"arm": "rpsft-l1", "method": "rpsft", "overrides": {"sft.rpsft.lambda": 1.0}},
        {"arm": "l2-l1", "method": "l2"},
    ]
    cfg = _cfg(f"sweep={json.dumps(sweep)}", "report.primary.a=rpsft-l1", "report.primary.b=sft-lr2e-4")
    assert claim_pair(cfg) == ("rpsft-l1", "sft-lr2e-4")
    # a primary pair that is not rpsft against sft is not what the claims are about
    cfg = _cfg(f"sweep={json.dumps(sweep)}", "report.primary.a=l2-l1", "report.primary.b=sft-lr2e-4")
    assert claim_pair(cfg) == ("rpsft", "sft")


def test_claims_use_the_pair_they_are_given():
    comp = {"a": "rpsft-l1", "b": "sft-lr2e-4", "seeds": 1, "significant": True}
    data = {
        "n_seeds": 1,
        "comparisons": [
            {**comp, "metric": "ood/mean_accuracy", "diff": 3.0},
            {**comp, "metric": "id/mean_accuracy", "diff": 0.5, "ci_low": -0.01, "significant": False},
            {**comp, "metric": "forgetting/kl_to_base", "diff": -0.05},
        ],
    }
    out = {c["claim"]: c for c in claims(data, ("rpsft-l1", "sft-lr2e-4"))}
    assert out["tradeoff"]["verdict"] == "supported" and out["representation"]["verdict"] == "supported"
    assert "rl-rpsft-l1" not in out["rl_init"]["why"] and out["rl_init"]["verdict"] == "not tested"  # no RL here
    # rpsft vs sft: not in this run; RL: none at all
    assert [c["verdict"] for c in claims(data)] == ["inconclusive", "inconclusive", "not tested"]
