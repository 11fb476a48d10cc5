"""Report stage: one readable comparison of every evaluated model, with intervals, paired comparisons and plots.

Reads ``<run_dir>/eval/`` (or, with ``seeds``, every ``<run_dir>/seeds/seed-<s>/eval/``, plus ``report.seed_runs``),
the SFT arms' rotation diagnostics and the RL arms' ``metrics.jsonl``; writes ``<run_dir>/report.md``,
``report.html`` (self-contained, images embedded), ``report.json`` and ``<run_dir>/plots/*.png``. Intervals resample
seeds, then items; headline verdicts are Holm-corrected; a non-significant difference is "not distinguishable at
this size: [a, b]", never "the same"; the paper's three claims are each read as supported, contradicted or
inconclusive, about methods only with at least three seeds.

    sft2rl stage report --config configs/smollm2-cpu.yaml
"""

from __future__ import annotations

from stages.startup import defer_collection

defer_collection(__name__)  # no full garbage collection during the imports below (stages/startup.py)

import logging
import sys
from typing import Any

from stages import provenance, tracking
from stages.config import Config, ConfigError
from stages.report_plots import make_plots
from stages.report_stats import aggregate
from stages.report_text import _blocks, _sentences, comparison_notes, model_groups, render_html, render_md
from stages.stage_cli import stage_main
from stages.store import FolderLock, LockedError, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def _track_headline(cfg: Config, comparisons: list[dict[str, Any]]) -> None:
    """The report's headline comparisons beside the run's curves in TensorBoard (``tensorboard/report``): each
    difference with its interval, under ``report/<a>-minus-<b>/<metric>``."""
    w = tracking.scalar_writer(cfg, "report")
    if w is None:
        return
    try:
        for c in comparisons:
            if c.get("family") != "claims":
                continue
            tag = f"report/{c['a']}-minus-{c['b']}/{c['metric']}"
            for key, suffix in (("diff", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
                w.add_scalar(tag + suffix, float(c[key]), 0)
    finally:
        w.close()


def run(cfg: Config, force: bool = False) -> dict[str, Any]:
    """Aggregate, plot and write the report files; return report.json's content. One report of a run folder at a
    time (a second is refused naming the first)."""
    try:
        with FolderLock(cfg.run_dir, ".report.lock"):
            return _write(cfg)
    except LockedError as e:
        raise ConfigError(f"another report of this run is being written: {e}") from None


def _write(cfg: Config) -> dict[str, Any]:
    for run in cfg.layout.seed_runs() or [cfg.layout]:  # RL read against the SFT arm it started from, or refused
        evaluated = [
            a.dir.name for a in run.arms() if a.init.is_file() and run.eval_model(a.dir.name).metrics.is_file()
        ]
        seed = int(run.dir.name.removeprefix("seed-")) if run.is_seed_run else cfg.seed
        provenance.check_rl_inits(run, evaluated, seed)
    data = aggregate(cfg)
    plots = make_plots(cfg, data, cfg.layout.plots)
    blocks = _blocks(cfg, data, plots)
    for c in data["comparisons"]:  # level and qualifiers in words, as the tables show them
        c["notes"] = comparison_notes(c)
    report = {
        "models": [
            {k: m[k] for k in ("name", "init", "kind", "metrics", "cka_layers", "seed_labels")}
            | ({"metric_seed_labels": m["metric_seed_labels"]} if m.get("metric_seed_labels") else {})
            for m in data["models"]
        ],
        "comparisons": data["comparisons"],
        "benchmarks": data["benchmarks"],
        "summary": _sentences(data),
        "seeds": data["seeds"],
        "n_seeds": data["n_seeds"],
        "seed_runs": data["seed_runs"],
        "claims": data["claims"],
        "seed_control": data["seed_control"],
        "frontier": data["frontier"],
        "matched": data["matched"],
        "plots": {k: str(v) for k, v in plots.items()},
        "rl": data["rl"],
        "rl_reading": data["rl_reading"],
        "rl_start": data["rl_start"],
        "score_tables": [[m["name"] for m in g] for g in model_groups(data["models"])],  # models per Scores table
        "seed_labels": data.get("seed_labels") or [],
        "per_seed_values": data.get("per_seed_values") or {},  # the claim arms' value per seed run, per metric
    }
    files = cfg.layout
    atomic_write_json(files.report_json, report)
    atomic_write_text(files.report_md, render_md(blocks, cfg.run_dir))
    atomic_write_text(files.report_html, render_html(blocks, f"sft2rl report: {cfg.run_name}"))
    log.info("report written: %s (.md, .html, .json), plots in %s", files.report_md, files.plots)
    _track_headline(cfg, data["comparisons"])
    for s in report["summary"]:
        log.info("%s", s)
    return report


def main(argv: list[str] | None = None) -> int:
    return stage_main(argv, prog="sft2rl stage report", description="Write the comparison report.", run=run)


if __name__ == "__main__":
    sys.exit(main())
