"""The seed control reads every benchmark, not only the mean: two seeds of plain SFT that forget different things
(one loses chat facts, the other instructions) have about the same out-of-domain mean, and the report must say that
the seeds differ and that their effects cancel in the mean. Synthetic per-item scores, written as the evaluate stage
writes them, go through the report's own aggregation."""

from __future__ import annotations

import numpy as np

from stages.config import load_config
from stages.report_plots import PLOTS
from stages.report_stats import aggregate
from stages.report_text import _blocks, render_md
from tests.conftest import CONFIGS, write_eval

N = 200


def _write(run_dir, name: str, kind: str, scores: dict[str, list[float]], domains: dict[str, str]) -> None:
    metrics, out = {}, {}
    for bench, vals in scores.items():
        v = float(np.mean(vals))
        ids = [f"{bench}-{i}" for i in range(len(vals))]
        metrics[f"{bench}/accuracy"] = {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": len(vals)}
        metrics[f"{bench}/accuracy"]["domain"] = domains[bench]
        out[f"{bench}/accuracy"] = {"ids": ids, "scores": vals}
    for prefix, dom in (("id", "in"), ("ood", "out")):
        vals = [np.mean(scores[b]) for b in scores if domains[b] == dom]
        v = float(np.mean(vals))
        metrics[f"{prefix}/mean_accuracy"] = {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": N}
    write_eval(run_dir, name, kind, "base", metrics, out)


def test_seed_effects_that_cancel_on_the_mean_are_flagged(tmp_path):
    rng = np.random.default_rng(0)
    cfg = load_config(
        CONFIGS / "tiny.yaml", [f"runs_root={tmp_path}", "run_name=seeds", "seeds=[0, 1]", "eval.bootstrap=1000"]
    )
    domains = {"task": "in", "chat_facts": "out", "instructions": "out"}

    def draw(p: float) -> list[float]:
        return (rng.random(N) < p).astype(float).tolist()

    # seed 0 of sft forgets chat facts (4% vs 23%), seed 1 forgets instructions (7% vs 26%): the OOD means agree
    sft = [
        {"task": draw(0.4), "chat_facts": draw(0.04), "instructions": draw(0.26)},
        {"task": draw(0.4), "chat_facts": draw(0.23), "instructions": draw(0.07)},
    ]
    rpsft = [{"task": draw(0.4), "chat_facts": draw(0.2), "instructions": draw(0.2)} for _ in range(2)]
    for s in range(2):
        run_dir = cfg.for_seed(s).run_dir
        _write(run_dir, "sft", "sft", sft[s], domains)
        _write(run_dir, "rpsft", "sft", rpsft[s], domains)
    data = aggregate(cfg)
    rows = {(r["model"], r["metric"]): r for r in data["seed_control"]}
    mean = rows[("sft", "ood/mean_accuracy")]
    assert not mean["differs"] and sorted(mean["hides"]) == ["chat_facts/accuracy", "instructions/accuracy"]
    assert rows[("sft", "chat_facts/accuracy")]["differs"] and rows[("sft", "instructions/accuracy")]["differs"]
    assert "hides" not in rows[("rpsft", "ood/mean_accuracy")]  # rpsft's seeds agree benchmark by benchmark
    # per-seed values side by side, and the words a reader sees
    per = data["per_seed_values"]["sft"]["chat_facts/accuracy"]
    assert per[0] < 0.1 < 0.15 < per[1]
    md = render_md(_blocks(cfg, data, {p: tmp_path / f"{p}.png" for p in PLOTS}), tmp_path)
    assert "their effects cancel in the mean" in md and "| sft | chat_facts/accuracy |" in md
    # a claim's comparison whose effect is inside one model's seed-to-seed difference says so
    ood = next(c for c in data["comparisons"] if (c["a"], c["b"], c["metric"]) == ("rpsft", "sft", "ood/mean_accuracy"))
    chat = next(
        c for c in data["comparisons"] if (c["a"], c["b"], c["metric"]) == ("rpsft", "sft", "chat_facts/accuracy")
    )
    assert chat.get("within_seed_spread") and "not larger than the seed spread" in chat["verdict"]
    assert ood["seed_spread"] >= 0
    claim_a = next(c for c in data["claims"] if c["claim"] == "tradeoff")
    assert claim_a["power"]["mde"] > 0 and claim_a["power"]["seeds"] == 2


def test_report_html_renders_emphasis_and_code_not_literal_markers():
    from stages.report_text import render_html

    page = render_html([("ul", ["(a) claim: **supported** about `rpsft` <b>"])], "t")
    assert "<strong>supported</strong>" in page and "<code>rpsft</code>" in page
    assert "**" not in page and "&lt;b&gt;" in page  # the rest stays escaped


def test_only_checkpoint_level_effects_are_read_against_one_pair_of_seeds():
    from stages.report_stats import _seed_spread_notes

    rows = [{"model": "sft", "metric": "m/accuracy", "diff": 0.05}]
    base = {"a": "rpsft", "b": "sft", "metric": "m/accuracy", "diff": 0.03, "verdict": "rpsft is higher"}
    checkpoint, method = base | {"seeds": 2, "level": "checkpoint"}, base | {"seeds": 3, "level": "method"}
    _seed_spread_notes([checkpoint, method], rows)
    assert checkpoint["within_seed_spread"] and "not larger than the seed spread" in checkpoint["verdict"]
    assert "within_seed_spread" not in method  # with 3+ seeds the spread is inside the interval already
