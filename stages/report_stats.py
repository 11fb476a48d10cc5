"""The report's numbers: every evaluated model's metrics pooled over seed runs, the paired comparisons with their
intervals and Holm-corrected verdicts, the seed control, the paper's three claims (gated, with their minimum
detectable effects) and the RL reading. No text and no plots (stages/report_text.py, stages/report_plots.py)."""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import t as _t

from stages import provenance
from stages.config import SFT_METHODS, Config, ConfigError
from stages.layout import CONFIG, EvalLayout, RunLayout
from stages.metrics import (
    Estimate,
    NonFiniteScores,
    holm,
    minimum_detectable_effect,
    paired_diff,
    seed_item_estimate,
    seeds_needed,
    wilson_ci,
)
from stages.store import is_done, read_json

log = logging.getLogger(__name__)


_LOWER_IS_BETTER = {"forgetting/kl_to_base", "forgetting/kl_to_base_sampled"}


# The sentences at the top of the report; every other comparison is in the comparisons table.
_HEADLINE = ("id/mean_accuracy", "ood/mean_accuracy", "forgetting/kl_to_base")


def _load_run(run_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    eval_dir = RunLayout(run_dir).eval_dir
    if not eval_dir.is_dir():
        return out
    for d in sorted(eval_dir.iterdir()):
        ev = EvalLayout(d)
        if d.is_dir() and is_done(d) and ev.metrics.is_file():
            m = read_json(ev.metrics)
            m["scores"] = read_json(ev.scores) if ev.scores.is_file() else {}
            out[d.name] = m
    return out


def _aligned(per_seed: list[dict[str, Any]], metric: str, names: tuple[str, ...]) -> list[list[list[float]]] | None:
    """Scores of ``metric`` for each model in ``names``, per seed, on the items every model of every seed has (by
    id), in one order: item i is the same item in every seed, which the pooled interval relies on."""
    if any(n not in run or metric not in run[n]["scores"] for run in per_seed for n in names):
        return None
    maps = [
        [dict(zip(run[n]["scores"][metric]["ids"], run[n]["scores"][metric]["scores"], strict=True)) for n in names]
        for run in per_seed
    ]
    common = [i for i in per_seed[0][names[0]]["scores"][metric]["ids"] if all(i in m for ms in maps for m in ms)]
    if not common:
        return None
    return [[[ms[k][i] for i in common] for ms in maps] for k in range(len(names))]


def seed_run_dirs(cfg: Config) -> list[Path]:
    """The run folders whose evaluations the report pools: one per seed of ``seeds`` (or the run itself), then
    ``report.seed_runs``. Each folder once; the run itself never again as a "seed run".

    Raises:
        ConfigError: a seed run that is missing, listed twice, or is this run.
    """
    runs = [cfg.for_seed(s).run_dir for s in cfg.seed_list]
    seen = {r.resolve() for r in runs}
    for raw in cfg.report.seed_runs:
        r = Path(raw)
        if not RunLayout(r).eval_dir.is_dir():
            raise ConfigError(f"report.seed_runs: {r} has no eval/ folder; evaluate that run first")
        if r.resolve() in seen:
            raise ConfigError(
                f"report.seed_runs: {r} is this run or is listed twice; each seed run must be a different run folder"
            )
        _same_setup_but_seed(runs[0], r)
        seen.add(r.resolve())
        runs.append(r)
    return runs


_SEED_KEYS = {"seed", "seeds", "runs_root", "run_name", "cache_dir", "report", "eval"}


def _same_setup_but_seed(run: Path, other: Path) -> None:
    """A seed run must be the same experiment with another seed: the resolved configs of the arms both runs have
    may differ only in seed, names and folders (and the report/eval sections). Raises ConfigError naming the keys."""

    for mine in sorted(run.glob(f"*/{CONFIG}")):
        theirs = RunLayout(other).arm(mine.parent.name).config
        if not theirs.is_file():
            continue
        a = provenance.flat(provenance.read_config(mine.parent) or {})
        b = provenance.flat(provenance.read_config(theirs.parent) or {})
        diff = sorted(k for k in set(a) | set(b) if k.split(".")[0] not in _SEED_KEYS and a.get(k) != b.get(k))
        if diff:
            raise ConfigError(
                f"report.seed_runs: {other} is not the same experiment with another seed: {mine.parent.name}'s "
                f"config differs in {', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}"
            )


def summary_parts(metric: str) -> tuple[str, str] | None:
    """(domain, per-benchmark suffix) of a summary metric over a domain's benchmarks: ``id/mean_accuracy`` ->
    ("in", "accuracy"), ``id/mean_avg@4`` -> ("in", "avg@4"); None for any other metric."""
    for prefix, domain in (("id/mean_", "in"), ("ood/mean_", "out")):
        if metric.startswith(prefix):
            return domain, metric[len(prefix) :]
    return None


def _strata(per_seed: list[dict[str, Any]], name: str, domain: str, suffix: str = "accuracy") -> list[str]:
    """The per-benchmark metrics (``<benchmark>/<suffix>``) of ``domain`` that every seed run of model ``name`` has."""
    if any(name not in r for r in per_seed):
        return []
    first = per_seed[0][name]["metrics"]
    return [
        k
        for k, m in first.items()
        if m.get("domain") == domain
        and k.endswith(f"/{suffix}")
        and not k.startswith(("id/", "ood/"))
        and all(k in r[name]["scores"] for r in per_seed)
    ]


def _nested(per_seed: list[dict[str, Any]], keys: list[str], names: tuple[str, ...]) -> list[list[list[list[float]]]]:
    """``out[model][seed][benchmark]`` = the item scores, aligned by item id across the models."""
    out: list[list[list[list[float]]]] = [[[] for _ in per_seed] for _ in names]
    for k in keys:
        al = _aligned(per_seed, k, names)
        if al is None:
            return []
        for m in range(len(names)):
            for s in range(len(per_seed)):
                out[m][s].append(al[m][s])
    return out


def _proportions(nested: Any) -> bool:
    """Whether every score in ``nested`` (per seed, [per benchmark,] per item) is 0 or 1."""
    if isinstance(nested, list | tuple | np.ndarray):
        return all(_proportions(x) for x in nested)
    return nested in (0, 1)


def _metric_interval(per_seed, name: str, metric: str, boot: dict[str, Any]) -> dict[str, Any] | None:
    """A metric of one model pooled over seeds (:func:`seed_item_estimate`: seeds and items both count); Wilson when
    it is a proportion whose interval has no width (0/n, n/n). A metric with NaN or infinite scores gives no
    interval (``not_evaluated`` says why)."""
    if (parts := summary_parts(metric)) is not None:
        keys = _strata(per_seed, name, *parts)
        nested = _nested(per_seed, keys, (name,)) if keys else []
        if not nested:
            return None
        data, n = nested[0], sum(len(x) for x in nested[0][0])
    else:
        aligned = _aligned(per_seed, metric, (name,))
        if aligned is None:
            return None
        data, n = [[x] for x in aligned[0]], len(aligned[0][0])
    prop = not metric.startswith("forgetting/") and _proportions(data)
    try:
        fixed = level_of(len(data)) == "checkpoint"  # fewer than 3 seeds: about these checkpoints, items drawn
        est = seed_item_estimate(data, **boot, bounds=(0.0, 1.0) if prop else None, seeds_fixed=fixed)
    except NonFiniteScores as e:
        nan = float("nan")
        return {"value": nan, "ci_low": nan, "ci_high": nan, "n": n, "not_evaluated": str(e)}
    lo, hi = est.low, est.high
    if lo == hi and prop and len(data[0]) == 1:  # one benchmark, every item 0 (or 1) in every seed: Wilson's interval
        items = data[0][0]  # of one seed's items (the same items in every seed)
        lo, hi = wilson_ci(int(sum(items)), len(items), boot["confidence"])
    return {"value": est.value, "ci_low": lo, "ci_high": hi, "n": n, "interval": est.method}


def aggregate(cfg: Config) -> dict[str, Any]:
    """Models with metrics (pooled over seed runs), paired comparisons with Holm-corrected verdicts, the seed
    control, benchmark notes."""
    runs = seed_run_dirs(cfg)
    per_seed = [_load_run(r) for r in runs]
    if not per_seed[0]:
        raise ConfigError(f"no evaluated models in {RunLayout(runs[0]).eval_dir}: run the evaluate stage first")
    missing = [str(r) for r, p in zip(runs, per_seed, strict=True) if not p]
    if missing:
        raise ConfigError(f"seed runs without evaluated models: {missing}; evaluate them first")
    ev = cfg.eval
    boot = {"n_boot": ev.bootstrap, "confidence": ev.confidence, "seed": cfg.seed}
    n_seeds = len(runs)
    pairs = [tuple(p) for p in cfg.report.compare]
    primary = (cfg.report.primary.a, cfg.report.primary.b)
    if primary not in pairs:
        pairs.insert(0, primary)
    # Interval ends far out in the tails: Holm over the claims' tests (at most 5) compares p-values with alpha / 5,
    # and a percentile interval read at that level needs resamples beyond it.
    family = 5
    cmp_boot = boot | {"n_boot": max(ev.bootstrap, math.ceil(4 * family / (1 - ev.confidence)))}
    labels = _seed_labels(cfg, runs)
    run_seeds = [f"seed {s}" for s in cfg.seed_list] + [f"seed run {Path(r).name}" for r in cfg.report.seed_runs]
    models = []
    # every model of any seed run (RL may run from some seeds' arms only: rl.seeds), pooled over the runs that have it
    names_all = list(dict.fromkeys(n for r in per_seed for n in r))
    for name in names_all:
        have_model = [r for r in per_seed if name in r]
        first = have_model[0][name]
        metrics: dict[str, Any] = {}
        # each metric over the seed runs that scored it (eval.samples_for: rl samples some seeds' models only)
        all_metrics = dict.fromkeys(k for r in have_model for k in r[name]["metrics"])
        for metric in all_metrics:
            have = [r for r in have_model if metric in r[name]["metrics"]]
            row = dict(have[0][name]["metrics"][metric])
            if len(have) > 1:
                pooled = _metric_interval(have, name, metric, boot)
                if pooled is not None:
                    row.update(pooled)
                else:
                    vals = [r[name]["metrics"][metric] for r in have if metric in r[name]["metrics"]]
                    for key in ("value", "ci_low", "ci_high"):
                        row[key] = sum(v[key] for v in vals) / len(vals)
                    row["note"] = (
                        "mean over seeds of the per-seed values and bounds: no per-item scores, so the interval "
                        "is within-seed only and leaves out run-to-run spread"
                    )
                    row["within_seed"] = True
            row["seeds"] = len(have)
            metrics[metric] = row
        models.append(
            {
                "name": name,
                "init": first.get("init"),
                "kind": first.get("kind"),
                "path": first.get("path"),
                "metrics": metrics,
                "cka_layers": first.get("cka_layers", []),
                "timing": first.get("timing", {}),
                "seed_labels": [lab for lab, r in zip(run_seeds, per_seed, strict=True) if name in r],
                "metric_seed_labels": {  # the metrics scored in fewer of the model's seed runs than the others
                    k: [lab for lab, r in zip(run_seeds, per_seed, strict=True) if k in _metrics_of(r, name)]
                    for k, m in metrics.items()
                    if m["seeds"] < len(have_model)
                },
            }
        )
    order = {"base": 0, "sft": 1, "external": 2, "rl": 3}
    models.sort(key=lambda m: (order.get(m["kind"], 9), m["name"]))
    names = {m["name"] for m in models}
    comparisons = []
    for a, b in pairs:
        if a not in names or b not in names:
            continue
        both = [r for r in per_seed if a in r and b in r]  # the seed runs that have both models
        if not both:
            continue
        # each metric over the seed runs where both models have it (eval.samples_for: rl samples some seeds only)
        for metric in dict.fromkeys(k for r in both for k in r[a]["scores"]):
            runs_m = [r for r in both if metric in r[a]["scores"] and metric in r[b]["scores"]]
            aligned = _aligned(runs_m, metric, (a, b)) if runs_m else None
            if aligned is None:
                continue
            comparisons.append(_comparison(a, b, metric, aligned, len(aligned[0][0]), len(runs_m), cmp_boot))
        summaries = dict.fromkeys(k for r in both for k in r[a]["metrics"] if summary_parts(k) and k in r[b]["metrics"])
        for summary in summaries:
            parts = summary_parts(summary)
            runs_m = [r for r in both if summary in r[a]["metrics"] and summary in r[b]["metrics"]]
            keys = [k for k in _strata(runs_m, a, *parts) if k in _strata(runs_m, b, *parts)]
            nested = _nested(runs_m, keys, (a, b)) if keys else []
            if nested:
                n = sum(len(x) for x in nested[0][0])
                comparisons.append(_comparison(a, b, summary, nested, n, len(runs_m), cmp_boot))
    pair = claim_pair(cfg)
    gain_diff = _gain_diff(per_seed, comparisons, pair, cmp_boot)
    if gain_diff is not None:
        comparisons.append(gain_diff)
    confounded = _confounds(cfg, runs, per_seed, [*pairs, (f"rl-{pair[0]}", f"rl-{pair[1]}"), pair])
    _holm_verdicts(comparisons, cfg, 1 - ev.confidence)
    _confound_notes(comparisons, confounded, pair)
    seed_control = _seed_control(cfg, per_seed, labels, boot, comparisons)
    _seed_spread_notes(comparisons, seed_control)
    bench_file = RunLayout(runs[0]).benchmarks
    benchmarks = read_json(bench_file) if bench_file.is_file() else {}
    data = {
        "run": str(cfg.run_dir),
        "seeds": [*cfg.seed_list, *cfg.report.seed_runs],
        "n_seeds": n_seeds,
        "seed_runs": [str(r) for r in runs],
        "models": models,
        "rl": {k: v for r, s in zip(runs, labels, strict=True) for k, v in _rl_curves(r, s).items()},
        "rl_start": _rl_start(per_seed, models, boot),
        "comparisons": comparisons,
        "seed_control": seed_control,
        "primary": {"a": cfg.report.primary.a, "b": cfg.report.primary.b, "metric": cfg.report.primary.metric},
        "benchmarks": benchmarks,
        "rotation_dir": str(runs[0]),
        "confounds": [
            {"a": a, "b": b, "differs": {k: list(v) for k, v in d.items()}} for (a, b), d in confounded.items()
        ],
    }
    data["seed_labels"] = labels if n_seeds > 1 else []
    data["per_seed_values"] = _per_seed_values(cfg, per_seed, comparisons) if n_seeds > 1 else {}
    data["rl_reading"] = rl_reading(comparisons, pair, gain_diff)
    data["claims"] = claims(data, pair, margin=cfg.report.matched_tolerance, alpha=1 - ev.confidence)
    data["frontier_points"], data["frontier"] = pareto_front(models)
    data["matched"] = _matched(cfg, runs[0], per_seed, models, boot)
    return data


def _metrics_of(run: dict[str, Any], name: str) -> dict[str, Any]:
    """One seed run's metrics of model ``name`` (empty when that run did not evaluate it)."""
    return run[name]["metrics"] if name in run else {}


def _per_seed_values(cfg: Config, per_seed, comparisons: list[dict[str, Any]]) -> dict[str, dict[str, list]]:
    """``{arm: {metric: [value per seed run]}}`` for the arms the claims compare, on the claims' metrics and every
    benchmark's accuracy (and Avg@k): what the pooled rows average, shown so that a reader sees the spread."""
    rp, sf = claim_pair(cfg)
    gate = gate_metric(comparisons, (rp, sf))
    out: dict[str, dict[str, list]] = {}
    for model in (sf, rp):
        have = [r.get(model) for r in per_seed]
        first = next((h for h in have if h), None)
        if first is None:
            continue
        keys = ["id/mean_accuracy", gate, "ood/mean_accuracy", "forgetting/kl_to_base"]
        union = {k: m for h in have if h for k, m in h["metrics"].items()}  # a metric some seeds lack too
        keys += [
            k
            for k, m in union.items()
            if m.get("domain") in ("in", "out")
            and not k.startswith(("id/", "ood/", "forgetting/"))
            and (k.endswith("/accuracy") or "/avg@" in k)
        ]
        rows = {}
        for k in dict.fromkeys(keys):
            vals = [None if h is None or k not in h["metrics"] else h["metrics"][k].get("value") for h in have]
            if any(v is not None for v in vals):
                rows[k] = vals
        out[model] = rows
    return out


def _rl_start(per_seed, models: list[dict[str, Any]], boot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For each RL model, its initial checkpoint's metrics over the same seed runs as the RL model (an SFT arm may
    pool more seeds than RL ran from: ``rl.seeds``), so that a reader sets RL beside its own start."""
    out = {}
    byname = {m["name"]: m for m in models}
    for m in models:
        init = m.get("init")
        if m["kind"] != "rl" or init not in byname:
            continue
        runs = [r for r in per_seed if m["name"] in r and init in r]
        if not runs:
            continue
        metrics = {}
        for metric, row in runs[0][init]["metrics"].items():
            pooled = _metric_interval(runs, init, metric, boot) if len(runs) > 1 else None
            metrics[metric] = {**row, **(pooled or {})}
        out[m["name"]] = {"init": init, "seeds": len(runs), "metrics": metrics}
    return out


def _gain_diff(per_seed, comparisons, pair: tuple[str, str], boot: dict[str, Any]) -> dict[str, Any] | None:
    """The difference of RL gains, per item and seed: (rl-rpsft - rpsft) - (rl-sft - sft) on claim (c)'s metric,
    over the seed runs that have all four models. Removes the gap the two SFT checkpoints had before RL."""
    rp, sf = pair
    metric = gate_metric(comparisons, pair)
    names = (f"rl-{rp}", rp, f"rl-{sf}", sf)
    # the seed runs with all four models scored on the metric (eval.samples_for: rl samples some seeds only)
    runs = [r for r in per_seed if all(n in r and metric in r[n]["metrics"] for n in names)]
    parts = summary_parts(metric)
    if not runs or parts is None:
        return None
    keys = [k for k in _strata(runs, names[0], *parts) if all(k in _strata(runs, n, *parts) for n in names[1:])]
    nested = _nested(runs, keys, names) if keys else []
    if not nested:
        return None

    def gain(after: int, before: int) -> list[list[np.ndarray]]:
        return [
            [np.asarray(x, dtype=float) - np.asarray(y, dtype=float) for x, y in zip(a, b, strict=True)]
            for a, b in zip(nested[after], nested[before], strict=True)
        ]

    n = sum(len(x) for x in nested[0][0])
    return _comparison(f"{names[0]} - {rp}", f"{names[2]} - {sf}", metric, [gain(0, 1), gain(2, 3)], n, len(runs), boot)


def _matched(cfg: Config, run_dir: Path, per_seed, models, boot) -> list[dict[str, Any]]:
    """Arms compared at matched strength: each arm that is not plain SFT against the plain-SFT arm nearest to it in
    in-domain accuracy, out of domain, when the two are within ``report.matched_tolerance``. "Forgets less" then
    cannot mean "learns less". Needs several plain-SFT strengths (a sweep) to find matches."""
    methods = {}
    for m in models:
        f = RunLayout(run_dir).arm(m["name"]).metrics
        if m["kind"] == "sft" and f.is_file():
            methods[m["name"]] = read_json(f).get("method")
    acc = {m["name"]: m["metrics"].get("id/mean_accuracy", {}).get("value") for m in models}
    plain = [n for n, meth in methods.items() if meth == "sft" and acc.get(n) is not None]
    out = []
    for name, meth in methods.items():
        if meth == "sft" or acc.get(name) is None or not plain:
            continue
        nearest = min(plain, key=lambda n: abs(acc[n] - acc[name]))
        gap = acc[name] - acc[nearest]
        row = {"arm": name, "method": meth, "matched_sft": nearest, "id_gap": gap}
        if abs(gap) <= cfg.report.matched_tolerance:
            keys = [k for k in _strata(per_seed, name, "out") if k in _strata(per_seed, nearest, "out")]
            nested = _nested(per_seed, keys, (name, nearest)) if keys else []
            if nested:
                try:
                    fixed = level_of(len(per_seed)) == "checkpoint"
                    est = paired_diff(nested[0], nested[1], **boot, bounds=_diff_bounds(nested), seeds_fixed=fixed)
                    d, lo, hi = est.value, est.low, est.high
                except NonFiniteScores:
                    continue
                row.update(metric="ood/mean_accuracy", diff=d, ci_low=lo, ci_high=hi)
        out.append(row)
    return out


def pareto_front(models: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The SFT-kind models (base included) with both summary accuracies, and the names of those no other model beats
    on both (in-domain and out-of-domain), ordered by in-domain accuracy. Only drawn for a sweep (>= 4 arms)."""
    pts = [
        {
            "name": m["name"],
            "id": m["metrics"]["id/mean_accuracy"]["value"],
            "ood": m["metrics"]["ood/mean_accuracy"]["value"],
        }
        for m in models
        if m["kind"] in ("base", "sft") and "id/mean_accuracy" in m["metrics"] and "ood/mean_accuracy" in m["metrics"]
    ]
    if sum(1 for p in pts if p["name"] != "base") < 4:
        return pts, []
    front = [
        p
        for p in pts
        if not any(
            q["id"] >= p["id"] and q["ood"] >= p["ood"] and (q["id"], q["ood"]) != (p["id"], p["ood"]) for q in pts
        )
    ]
    return pts, [p["name"] for p in sorted(front, key=lambda p: p["id"])]


def _seed_labels(cfg: Config, runs: list[Path]) -> list[str]:
    if len(runs) == 1:
        return [""]
    return [f"seed {s}" for s in cfg.seed_list] + [f"seed run {Path(r).name}" for r in cfg.report.seed_runs]


def level_of(n_seeds: int) -> str:
    """What a verdict is about: methods need at least 3 training seeds; below that it describes these checkpoints."""
    return "method" if n_seeds >= 3 else "checkpoint"


def _diff_bounds(sides) -> tuple[float, float] | None:
    """A difference of proportions lies in [-1, 1]; other differences are unbounded."""
    return (-1.0, 1.0) if all(_proportions(x) for x in sides) else None


def _comparison(a, b, metric, sides, n: int, seeds: int, boot: dict[str, Any]) -> dict[str, Any]:
    """a - b on ``metric``, paired by item within each seed (``sides``: a's and b's scores, per seed [per stratum]).
    Scores that are NaN or infinite give no difference: the comparison is marked not evaluated."""
    row = {"a": a, "b": b, "metric": metric, "n": n, "seeds": seeds, "level": level_of(seeds)}
    row["per_seed"] = [x - y for x, y in zip(_seed_means(sides[0]), _seed_means(sides[1]), strict=True)]
    try:
        fixed = row["level"] == "checkpoint"  # about these checkpoints: the items are what is drawn
        est: Estimate = paired_diff(sides[0], sides[1], **boot, bounds=_diff_bounds(sides), seeds_fixed=fixed)
    except NonFiniteScores as e:
        nan = float("nan")
        return row | {"diff": nan, "ci_low": nan, "ci_high": nan, "p_value": 1.0, "not_evaluated": str(e)}
    return row | {
        "diff": est.value,
        "ci_low": est.low,
        "ci_high": est.high,
        "p_value": est.p_value,
        "interval": est.method,
        "se": est.se,
        "df": est.df if math.isfinite(est.df) else None,  # None: normal (JSON has no infinity)
    }


def _seed_means(side) -> list[float]:
    """Each seed's value of one side of a comparison: the unweighted mean over its strata of the item means."""
    out = []
    for s in side:
        strata = s if len(s) and np.ndim(s[0]) == 1 else [s]
        out.append(float(np.mean([np.mean(np.asarray(g, dtype=float)) for g in strata])))
    return out


def claim_tests(cfg: Config, comparisons: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """The family Holm's correction runs over: the claims' own tests and nothing else. (a) RPSFT - SFT out of domain,
    (b) RPSFT - SFT KL to the base, (c) RL-from-RPSFT - RL-from-SFT and the difference of RL gains on claim (c)'s
    metric; and the configured primary comparison. Every other comparison is descriptive (unadjusted, labelled so):
    a family of every pair and headline metric held 18 tests, and at 2-3 seeds none could pass it."""
    rp, sf = claim_pair(cfg)
    m = gate_metric(comparisons, (rp, sf))
    p = cfg.report.primary
    return {
        (rp, sf, "ood/mean_accuracy"),
        (rp, sf, "forgetting/kl_to_base"),
        (f"rl-{rp}", f"rl-{sf}", m),
        (f"rl-{rp} - {rp}", f"rl-{sf} - {sf}", m),
        (p.a, p.b, p.metric),
    }


def _holm_verdicts(comparisons: list[dict[str, Any]], cfg: Config, alpha: float) -> None:
    """Verdicts in place. In the claims' family (:func:`claim_tests`), significance is Holm-adjusted p < alpha;
    elsewhere the unadjusted interval excluding 0, marked descriptive. "Not distinguishable" claims no equivalence:
    it gives the interval."""
    tests = claim_tests(cfg, comparisons)
    fam = [c for c in comparisons if (c["a"], c["b"], c["metric"]) in tests and "not_evaluated" not in c]
    for c, adj in zip(fam, holm([c["p_value"] for c in fam]), strict=True):
        c["p_holm"] = adj
        c["family"] = "claims"
    for c in comparisons:
        if "not_evaluated" in c:
            c["significant"] = False
            c["verdict"] = f"not evaluated: {c['not_evaluated']}"
            c["verdict_short"] = "not evaluated"
            continue
        in_family = "p_holm" in c
        excludes_0 = c["ci_low"] > 0 or c["ci_high"] < 0
        significant = c["p_holm"] < alpha if in_family else excludes_0
        c["significant"] = bool(significant)
        lower_better = c["metric"] in _LOWER_IS_BETTER
        scale, dp = (100, 2) if _is_pct(c["metric"]) else (1, 4)
        span = f"[{scale * c['ci_low']:+.{dp}f}, {scale * c['ci_high']:+.{dp}f}]"
        if significant and c["diff"] > 0:
            verdict = short = f"{c['a']} is higher" + (" (worse: more drift from the base)" if lower_better else "")
        elif significant:
            verdict = short = f"{c['a']} is lower" + (" (better: closer to the base)" if lower_better else "")
        elif in_family and excludes_0:  # the printed interval is per comparison; the family's correction is not
            short = "not significant after Holm's correction"
            verdict = (
                f"not significant after Holm's correction for {len(fam)} comparisons (p_holm {c['p_holm']:.3f}); "
                f"the uncorrected interval {span} excludes 0"
            )
        else:
            short = "not distinguishable"
            verdict = f"not distinguishable at this size: {span}"
        c["verdict_short"] = short  # the verdict alone, for tables that give interval, level and notes in columns
        if not in_family:
            verdict += " (descriptive, unadjusted)"
        if c["level"] == "checkpoint":
            verdict += f" (about these checkpoints: {c['seeds']} seed{'s' if c['seeds'] > 1 else ''}, not the method)"
        c["verdict"] = verdict


def _seed_pair_diff(pair, model: str, metric: str, boot: dict[str, Any]) -> dict[str, Any] | None:
    """One model in two seed runs on ``metric`` (a summary: its benchmarks as strata), paired by item id."""
    if (parts := summary_parts(metric)) is not None:
        keys = _strata(pair, model, *parts)
    elif all(model in r and metric in r[model]["scores"] for r in pair):
        keys = [metric]
    else:
        keys = []
    a_side, b_side = [], []
    for k in keys:  # paired by item id across the two runs, per benchmark
        sa, sb = (r[model]["scores"][k] for r in pair)
        by_id = dict(zip(sb["ids"], sb["scores"], strict=True))
        common = [(x, by_id[i]) for i, x in zip(sa["ids"], sa["scores"], strict=True) if i in by_id]
        if not common:
            return None
        a_side.append([x for x, _ in common])
        b_side.append([y for _, y in common])
    if not keys:
        return None
    try:
        est = paired_diff([a_side], [b_side], **boot)
    except NonFiniteScores:
        return None
    return {"diff": est.value, "ci_low": est.low, "ci_high": est.high, "p_value": est.p_value}


def _seed_control(
    cfg: Config, per_seed, labels: list[str], boot: dict[str, Any], comparisons: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The run-to-run spread of a multi-seed run: the same model in two seed runs, paired by item, on every metric a
    claim reads and on every benchmark, for the two arms the claims compare. A verdict is read against it: on a
    mean over benchmarks, seed effects of opposite sign cancel (a seed that forgets chat facts and one that forgets
    instructions have about the same mean), so each benchmark is shown and a mean whose parts differ is flagged."""
    if len(per_seed) < 2:
        return []
    rp, sf = claim_pair(cfg)
    p = cfg.report.primary
    claim_metrics = ["ood/mean_accuracy", "id/mean_accuracy", gate_metric(comparisons, (rp, sf))]
    claim_metrics = list(dict.fromkeys([*claim_metrics, "forgetting/kl_to_base", p.metric]))
    out = []
    for model in dict.fromkeys((sf, rp, p.b, p.a)):
        if model == "base":  # evaluated once for all seeds: no run-to-run spread
            continue
        for i in range(len(per_seed)):
            for j in range(i + 1, len(per_seed)):
                pair = [per_seed[i], per_seed[j]]
                if any(model not in r for r in pair):
                    continue
                info = pair[0][model]["metrics"]
                benches = [
                    k
                    for k in pair[0][model]["scores"]
                    if (k.endswith("/accuracy") or "/avg@" in k)
                    and not k.startswith(("id/", "ood/", "forgetting/"))
                    and info.get(k, {}).get("domain") in ("in", "out")
                ]
                for metric, kind in [*((m, "claim") for m in claim_metrics), *((k, "benchmark") for k in benches)]:
                    d = _seed_pair_diff(pair, model, metric, boot)
                    if d is not None:
                        row = {"model": model, "metric": metric, "kind": kind, "runs": [labels[i], labels[j]], **d}
                        row["differs"] = bool(d["ci_low"] > 0 or d["ci_high"] < 0)
                        out.append(row)
    for row in out:  # a mean over benchmarks that hides parts that differ (seed effects cancelling)
        parts = summary_parts(row["metric"])
        if parts is None or row["differs"]:
            continue
        domain, suffix = parts
        hidden = [
            r["metric"]
            for r in out
            if r["kind"] == "benchmark"
            and r["model"] == row["model"]
            and r["runs"] == row["runs"]
            and r["differs"]
            and r["metric"].endswith(f"/{suffix}")
            and _domain_of(per_seed, row["model"], r["metric"]) == domain
        ]
        if hidden:
            row["hides"] = hidden
    return out


def _domain_of(per_seed, model: str, metric: str) -> str | None:
    run = next((r for r in per_seed if model in r), None)
    return None if run is None else run[model]["metrics"].get(metric, {}).get("domain")


def _arm_config(run_dir: Path, model: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The config an evaluated arm was trained with: its arm folder's ``config.yaml`` in the run, else the one beside
    the checkpoint the evaluation read."""
    if RunLayout(run_dir).arm(name).config.is_file() or not (model and model.get("path")):
        return provenance.read_config(RunLayout(run_dir).arm(name).dir)
    return provenance.read_config(Path(model["path"]).parent)


def _confounds(cfg: Config, runs: list[Path], per_seed, pairs) -> dict[tuple[str, str], dict[str, tuple]]:
    """For each compared pair of training arms of one stage (SFT with SFT, RL with RL), the recipe keys on which
    they differ beyond their method in any seed run (:func:`stages.provenance.confounds`).

    Raises:
        ConfigError: ``report.confounds: refuse`` and some compared pair differs.
    """
    out: dict[tuple[str, str], dict[str, tuple]] = {}
    for a, b in dict.fromkeys(tuple(p) for p in pairs):
        if a == "base" or b == "base" or a.startswith("rl-") != b.startswith("rl-"):
            continue
        stage = "rl" if a.startswith("rl-") else "sft"
        for run, models in zip(runs, per_seed, strict=True):
            if a not in models or b not in models:
                continue
            diff = provenance.confounds(_arm_config(run, models[a], a), _arm_config(run, models[b], b), stage)
            if diff:
                out.setdefault((a, b), {}).update(diff)
    if out and cfg.report.confounds == "refuse":
        (a, b), diff = next(iter(out.items()))
        raise ConfigError(
            f"{a} and {b} were trained with different recipes beyond their method ({provenance.shown(diff)}): their "
            "comparison would not be about the method. Retrain one of them with the other's settings (--force), or "
            "set report.confounds=flag to report it with the difference named"
        )
    return out


def _confound_notes(comparisons: list[dict[str, Any]], confounded: dict, pair: tuple[str, str]) -> None:
    """Name, in place, the recipe differences of each comparison's arms (a difference of RL gains reads both the RL
    pair and the SFT pair it started from)."""
    rp, sf = pair
    for c in comparisons:
        diff = dict(confounded.get((c["a"], c["b"]), {}))
        if (c["a"], c["b"]) in ((f"rl-{rp}", f"rl-{sf}"), (f"rl-{rp} - {rp}", f"rl-{sf} - {sf}")):
            diff |= confounded.get((f"rl-{rp}", f"rl-{sf}"), {}) | confounded.get((rp, sf), {})
        if diff:
            c["confounds"] = {k: list(v) for k, v in diff.items()}
            c["verdict"] += f"; confounded: the arms also differ in {provenance.shown(diff)}"


def _seed_spread_notes(comparisons: list[dict[str, Any]], seed_control: list[dict[str, Any]]) -> None:
    """Mark, in place, each checkpoint-level comparison whose effect is not larger than the seed spread of either
    model on the same metric (the largest difference between two seed runs of one model): at 2 seeds such an effect
    may be which seed was drawn, not which method."""
    spread: dict[tuple[str, str], float] = {}
    for r in seed_control:
        key = (r["model"], r["metric"])
        spread[key] = max(spread.get(key, 0.0), abs(r["diff"]))
    for c in comparisons:
        if "not_evaluated" in c or c["seeds"] < 2 or c["level"] != "checkpoint":  # 3+ seeds: spread is in the interval
            continue
        known = [spread[k] for k in ((c["a"], c["metric"]), (c["b"], c["metric"])) if k in spread]
        if not known:
            continue
        c["seed_spread"] = max(known)
        if abs(c["diff"]) <= c["seed_spread"]:
            c["within_seed_spread"] = True
            c["verdict"] += (
                f"; not larger than the seed spread (one model's two seeds differ by up to "
                f"{_scaled(c['metric'], c['seed_spread'])})"
            )


def claim_pair(cfg: Config) -> tuple[str, str]:
    """The RPSFT arm and the plain-SFT arm the paper's claims read: the primary comparison when it sets an rpsft arm
    against an sft arm (a sweep names its arms, e.g. rpsft-l1-k0.25 vs sft-lr2e-4), else the arms rpsft and sft."""
    method = {m: m for m in SFT_METHODS} | {a.arm: a.method for a in cfg.sweep}
    a, b = cfg.report.primary.a, cfg.report.primary.b
    return (a, b) if method.get(a) == "rpsft" and method.get(b) == "sft" else ("rpsft", "sft")


def power_of(c: dict[str, Any] | None, alpha: float, family_size: int, power: float = 0.8) -> dict[str, Any] | None:
    """What a comparison could have detected: the minimum detectable effect (``power`` at Holm's strictest level,
    alpha / family size, with the comparison's own standard error and degrees of freedom) and, from the spread of its
    per-seed differences, how many training seeds a method-level test of the observed effect would need."""
    se = c.get("se", math.nan) if c is not None else math.nan
    if c is None or "not_evaluated" in c or not math.isfinite(se) or se <= 0:  # no spread: nothing to size from
        return None
    level = alpha / max(1, family_size)
    need = seeds_needed(c.get("per_seed", []), c["diff"], level, power)
    df = c.get("df")
    if len(c.get("per_seed", [])) < 2:
        why = "one seed: no seed spread to size from"
    elif c["diff"] == 0:
        why = "the observed effect is 0"
    elif need is None:
        why = "more than 1000"
    else:
        why = f"from the spread of {len(c['per_seed'])} seeds' differences"
    return {
        "mde": minimum_detectable_effect(c["se"], math.inf if df is None else df, level, power),
        "alpha": level,
        "power": power,
        "seeds": c["seeds"],
        "n": c.get("n"),
        "seeds_needed": need,
        "seeds_needed_why": why,
    }


def _cka(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    m = next((m for m in data.get("models", []) if m["name"] == name), None)
    return None if m is None else m["metrics"].get("forgetting/cka_mean")


def claims(
    data: dict[str, Any], pair: tuple[str, str] = ("rpsft", "sft"), margin: float = 0.02, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """The paper's three claims, each supported / contradicted / inconclusive (or "too imprecise", "not tested",
    "confounded") from this run's comparisons of the RPSFT and SFT arms in ``pair``: (a) a better in-domain /
    out-of-domain trade-off than SFT; (b) closer to the base: outputs (KL, the test), hidden states (CKA) beside it;
    (c) RL from RPSFT ends better than RL from SFT. ``level`` says whether that is about methods (>= 3 seeds); each
    claim states the minimum detectable effect of its test and a note when its effect is within the seed spread."""
    rp, sf = pair
    comps = {(c["a"], c["b"], c["metric"]): c for c in data["comparisons"]}
    level = level_of(data["n_seeds"])
    family_size = sum(1 for c in data["comparisons"] if "p_holm" in c) or 1

    def sign(a: str, b: str, metric: str) -> tuple[dict[str, Any] | None, int]:
        c = comps.get((a, b, metric))
        if c is None or "not_evaluated" in c:  # NaN scores: no evidence either way, and the claim says so
            return None, 0
        return c, ((1 if c["diff"] > 0 else -1) if c["significant"] else 0)

    def claim(name: str, verdict: str, why: str, evidence: list) -> dict[str, Any]:
        ev = [e for e in evidence if e]
        lvl = level_of(min(e["seeds"] for e in ev)) if ev else level  # RL may rest on fewer seeds (rl.seeds)
        test = ev[0] if ev else None
        mixed = next((e for e in ev if e.get("confounds")), None)
        if mixed is not None and verdict in ("supported", "contradicted"):
            keys = ", ".join(mixed["confounds"])
            verdict, why = (
                "confounded",
                f"would read {verdict} ({why}), but {mixed['a']} and {mixed['b']} were also trained with different "
                f"settings ({keys}), so the difference is not the method's alone; retrain them on one recipe",
            )
        elif test is not None and test.get("within_seed_spread") and verdict in ("supported", "contradicted"):
            why += (
                f"; but the effect is not larger than one model's seed-to-seed difference on {test['metric']} "
                f"({_scaled(test['metric'], test['seed_spread'])}): at {test['seeds']} seeds it may be the seeds drawn"
            )
        elif test is not None and test["seeds"] == 1:
            why += "; one training seed, so the run-to-run spread of this effect is unknown"
        return {
            "claim": name,
            "verdict": verdict,
            "level": lvl,
            "why": why,
            "evidence": ev,
            "power": power_of(test, alpha, family_size),
        }

    def absent(a: str, b: str, metric: str, otherwise: str) -> str:
        """Why a comparison gives no evidence: not made, or made on NaN / infinite scores."""
        c = comps.get((a, b, metric))
        return (
            f"{a} - {b} on {metric} was not evaluated: {c['not_evaluated']}"
            if c and "not_evaluated" in c
            else otherwise
        )

    ood, s_ood = sign(rp, sf, "ood/mean_accuracy")
    idm, s_id = sign(rp, sf, "id/mean_accuracy")
    # "in-domain no worse" must be shown, not merely not refuted: the in-domain interval's lower end within
    # ``margin`` (report.matched_tolerance) of 0, else "forgets less" may just be "learns less"
    id_ok = idm is not None and "not_evaluated" not in idm and idm["ci_low"] >= -margin
    reason = (
        f"the margin, {100 * margin:g} points (report.matched_tolerance), is the in-domain loss accepted for an "
        "out-of-domain gain"
    )
    if ood is None:
        why = absent(rp, sf, "ood/mean_accuracy", f"{rp} and {sf} were not both evaluated out of domain")
        out = [claim("tradeoff", "inconclusive", why, [idm])]
    elif s_ood == 1 and s_id != -1 and id_ok:
        why = f"RPSFT keeps more out-of-domain accuracy; in-domain no worse (interval above -{100 * margin:g} points)"
        out = [claim("tradeoff", "supported", why + f"; {reason}", [ood, idm])]
    elif s_ood == 1 and s_id != -1 and idm is not None and "not_evaluated" not in idm:
        half = (idm["ci_high"] - idm["ci_low"]) / 2
        if half > margin:  # no outcome of a run this size could show "no worse": say so rather than "inconclusive"
            n = idm.get("n")
            need = f"about {math.ceil(n * (half / margin) ** 2)} in-domain items (or more seeds)" if n else "more items"
            why = (
                f"RPSFT keeps more out-of-domain accuracy, but the in-domain interval (half-width "
                f"{100 * half:.1f} points{f' over {n} items' if n else ''}) is wider than the margin, so no run this "
                f"size can show in-domain no worse; {need} would; {reason}"
            )
            out = [claim("tradeoff", "too imprecise", why, [ood, idm])]
        else:
            why = (
                "RPSFT keeps more out-of-domain accuracy, but in-domain it may learn less: the in-domain "
                f"difference's interval reaches {100 * idm['ci_low']:+.2f} points, past the margin; {reason}"
            )
            out = [claim("tradeoff", "inconclusive", why, [ood, idm])]
    elif s_ood == 1 and s_id != -1:
        why = "RPSFT keeps more out-of-domain accuracy, but in-domain accuracy was not compared"
        out = [claim("tradeoff", "inconclusive", why, [ood, idm])]
    elif s_ood == -1 or (s_id == -1 and s_ood != 1):
        why = "RPSFT is worse out of domain, or loses in-domain accuracy without an out-of-domain gain"
        out = [claim("tradeoff", "contradicted", why, [ood, idm])]
    else:
        why = "the out-of-domain difference is not distinguishable from 0 at this size"
        out = [claim("tradeoff", "inconclusive", why, [ood, idm])]
    kl, s_kl = sign(rp, sf, "forgetting/kl_to_base")
    table = {
        -1: ("supported", "RPSFT's outputs stay closer to the base model (lower KL on general text)"),
        1: ("contradicted", "RPSFT's outputs drift further from the base model (higher KL)"),
        0: ("inconclusive", "the KL difference is not distinguishable from 0 at this size"),
    }
    no_kl = absent(rp, sf, "forgetting/kl_to_base", f"no paired KL-to-base measurement of {rp} and {sf}")
    verdict, why = table[s_kl] if kl else ("inconclusive", no_kl)
    c_rp, c_sf = _cka(data, rp), _cka(data, sf)
    pooled_within = bool(c_rp and c_rp.get("within_seed")) or bool(c_sf and c_sf.get("within_seed"))
    if kl and c_rp and c_sf and "ci_low" in c_rp and "ci_low" in c_sf:
        cka = (
            f"linear CKA of hidden states with the base: {rp} {c_rp['value']:.3f} [{c_rp['ci_low']:.3f}, "
            f"{c_rp['ci_high']:.3f}], {sf} {c_sf['value']:.3f} [{c_sf['ci_low']:.3f}, {c_sf['ci_high']:.3f}]"
        )
        further = c_rp["ci_high"] < c_sf["ci_low"]  # RPSFT's hidden states measurably less like the base's
        closer = c_rp["ci_low"] > c_sf["ci_high"]
        if ((s_kl == -1 and further) or (s_kl == 1 and closer)) and not pooled_within:
            verdict, why = "inconclusive", f"{why}, but the hidden states say the opposite ({cka})"
        else:
            note = "within-seed intervals, mean of the seeds' bounds" if pooled_within else "intervals per model"
            why = f"{why}; {cka} ({note}, not paired: they corroborate, they do not decide)"
    out.append(claim("representation", verdict, why, [kl]))
    reading = data.get("rl_reading") or rl_reading(data["comparisons"], pair)
    out.append(claim("rl_init", *_rl_claim(reading, rp, sf)))
    return out


def moved(c: dict[str, Any] | None) -> bool:
    """Whether a gain comparison (an RL model against its own initial checkpoint) lies beyond its interval."""
    return c is not None and "not_evaluated" not in c and (c["ci_low"] > 0 or c["ci_high"] < 0)


def gate_metric(comparisons: list[dict[str, Any]], pair: tuple[str, str]) -> str:
    """The in-domain metric claim (c) is read on: Avg@k of sampled answers (``id/mean_avg@k``, the paper's headline)
    when both RL runs were compared with their initial checkpoints on it, else greedy ``id/mean_accuracy``."""
    rp, sf = pair
    have = {(c["a"], c["b"], c["metric"]) for c in comparisons}
    for m in sorted({c["metric"] for c in comparisons if c["metric"].startswith("id/mean_avg@")}):
        if (f"rl-{rp}", rp, m) in have and (f"rl-{sf}", sf, m) in have and (f"rl-{rp}", f"rl-{sf}", m) in have:
            return m
    return "id/mean_accuracy"


def rl_reading(
    comparisons: list[dict[str, Any]], pair: tuple[str, str], gain_diff: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the run says about RL from each initialisation, in the order claim (c) reads it: each RL run's gain over
    its own initial checkpoint (the gate), the post-RL difference, the difference of gains, out-of-domain change
    after RL, and pass@k as a diagnostic."""
    rp, sf = pair
    comps = {(c["a"], c["b"], c["metric"]): c for c in comparisons}
    metric = gate_metric(comparisons, pair)
    return {
        "metric": metric,
        "gains": {arm: comps.get((f"rl-{arm}", arm, metric)) for arm in (rp, sf)},
        "post": comps.get((f"rl-{rp}", f"rl-{sf}", metric)),
        "before": comps.get((rp, sf, metric)),
        "gain_diff": gain_diff,
        "ood": {arm: comps.get((f"rl-{arm}", arm, "ood/mean_accuracy")) for arm in (rp, sf)},
        "pass": comps.get((f"rl-{rp}", f"rl-{sf}", metric.replace("/mean_avg@", "/mean_pass@")))
        if "avg@" in metric
        else None,
    }


def _pts(c: dict[str, Any]) -> str:
    return f"{100 * c['diff']:+.1f} points [{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]"


def _rl_claim(r: dict[str, Any], rp: str, sf: str) -> tuple[str, str, list]:
    """Claim (c), "RPSFT is a better starting point for RL": (verdict, why, evidence).

    The gate first: an RL run that did not move its model beyond the interval tested nothing, and if neither moved
    the claim reads "not tested". Past the gate, "supported" needs RL from RPSFT to end higher than RL from SFT *and*
    to have gained more (difference of gains per item): a lead the SFT checkpoints already had, carried through equal
    RL gains, is no evidence about RL."""
    metric, gains, post, gd = r["metric"], r["gains"], r["post"], r["gain_diff"]
    if post is None and all(g is None for g in gains.values()):  # no RL in this run: nothing was tried
        why = (
            f"this run has no RL from {rp} or {sf} (the flow's rl=false, or the config's rl.in_flow: false), so it "
            "says nothing about what RL makes of either starting point"
        )
        return "not tested", why, []
    if any(g is None or "not_evaluated" in g for g in gains.values()) or post is None or "not_evaluated" in post:
        return "inconclusive", f"RL from both {rp} and {sf} was not evaluated on {metric}", [post, *gains.values()]
    evidence = [post, gains[rp], gains[sf], gd]
    said = "; ".join(f"from {arm} {_pts(g)}" for arm, g in gains.items())
    if not any(moved(g) for g in gains.values()):
        why = (
            f"RL did not move either model beyond its interval on {metric} (gain over the initial checkpoint {said}), "
            "so the run cannot say what RL makes of either starting point; RL needs more steps, a higher learning "
            "rate or prompts with mixed rewards (benchmarks/rl_setting.py)"
        )
        return "not tested", why, evidence
    only = [arm for arm, g in gains.items() if not moved(g)]
    note = f" (RL did not move the model from {only[0]}: gain {_pts(gains[only[0]])})" if only else ""
    s_post = (1 if post["diff"] > 0 else -1) if post.get("significant") else 0
    # the difference of gains is one of the claims' tests: its sign counts when it passed Holm's correction
    significant = (
        gd is not None and "not_evaluated" not in gd and gd.get("significant", gd["ci_low"] > 0 or gd["ci_high"] < 0)
    )
    s_gd = (1 if gd["diff"] > 0 else -1) if significant else 0
    gd_txt = "not computed" if gd is None else _pts(gd)
    if s_post == 1 and s_gd == 1:
        return "supported", f"RL from RPSFT ends higher ({_pts(post)}) and gained more ({gd_txt}){note}", evidence
    if s_post == -1:
        return "contradicted", f"RL from RPSFT ends lower than RL from SFT ({_pts(post)}){note}", evidence
    if s_gd == -1 and s_post == 0:
        why = f"RL gained less from RPSFT ({gd_txt}) and does not end higher ({_pts(post)}){note}"
        return "contradicted", why, evidence
    if s_post == 1:
        before = r.get("before")
        had = f"; before RL {rp} - {sf} was {_pts(before)}" if before and "not_evaluated" not in before else ""
        why = (
            f"RL from RPSFT ends higher ({_pts(post)}) but did not gain more than RL from SFT (difference of gains "
            f"{gd_txt}{had}): the lead was there before RL{note}"
        )
        return "inconclusive", why, evidence
    if s_gd == 1:
        why = f"RL gained more from RPSFT ({gd_txt}), but after RL the difference is not distinguishable ({_pts(post)})"
        why += note
        return "inconclusive", why, evidence
    why = f"after RL the difference is not distinguishable from 0 ({_pts(post)}; difference of gains {gd_txt}){note}"
    return "inconclusive", why, evidence


MIN_TREND_STEPS = 36  # the shortest curve whose trend verdict holds its level at lag-1 autocorrelation 0.8


def reward_trend(rows: list[dict[str, Any]], *, confidence: float = 0.95) -> dict[str, Any] | None:
    """Did the reward curve rise? Mean reward of the last third of the steps minus the first third, with an interval
    that allows for autocorrelation: an RL reward curve is no sequence of independent draws (a flat curve with lag-1
    correlation 0.8 over 30 steps read as "rose or fell" in 56% of cases when steps were resampled as independent).
    Each third's mean gets ``k (1 - rho) / (1 + rho)`` effective steps, rho the lag-1 autocorrelation within the
    thirds, corrected for its small-sample bias and raised by 1/sqrt(n) to err wide, then Student's t. On short
    curves rho cannot be estimated well enough: simulated flat AR(1) curves at rho 0.8 read as a trend 17% of the
    time at 9 steps, 8.5% at 18, 5.2% at 30, 4.2% at 36 and 2.6% at 45 (tests/unit/test_seed_statistics.py checks
    36). None below :data:`MIN_TREND_STEPS` steps: no trend verdict at all."""
    r = [row["reward"] for row in rows if isinstance(row.get("reward"), int | float)]
    r = np.asarray([x for x in r if math.isfinite(x)], dtype=float)
    if r.size < MIN_TREND_STEPS:
        return None
    k = r.size // 3
    thirds = [r[:k], r[k : 2 * k], r[-k:]]
    first, last = thirds[0], thirds[2]
    num = sum(float(((t[1:] - t.mean()) * (t[:-1] - t.mean())).sum()) for t in thirds)
    den = sum(float(((t - t.mean()) ** 2).sum()) for t in thirds)
    rho = num / den if den > 0 else 0.0
    # each third is centred on its own mean, so the estimate's bias is about (1 + 3 rho) / k, not / 3k
    rho = float(np.clip(rho + (1 + 3 * rho) / k + 1 / math.sqrt(3 * k), 0.0, 0.95))
    n_eff = max(2.0, k * (1 - rho) / (1 + rho))
    diff = float(last.mean() - first.mean())
    se = math.sqrt((first.var(ddof=1) + last.var(ddof=1)) / n_eff)
    half = float(_t.ppf(0.5 + confidence / 2, max(1.0, 2 * (n_eff - 1)))) * se
    return {
        "steps": k,
        "first": float(first.mean()),
        "last": float(last.mean()),
        "diff": diff,
        "ci_low": diff - half,
        "ci_high": diff + half,
        "autocorrelation": rho,
    }


def reward_lines(curves: dict[str, list[dict[str, Any]]], confidence: float = 0.95) -> list[str]:
    """One sentence per RL run: did its reward curve rise beyond its interval."""
    out = []
    for arm, rows in curves.items():
        t = reward_trend(rows, confidence=confidence)
        if t is None:
            out.append(
                f"{arm}: {len(rows)} steps, too few to read a trend in the reward ({MIN_TREND_STEPS} or more: an RL "
                "reward curve is autocorrelated, and a shorter flat one reads as a trend more than 5% of the time), "
                "so this report makes no claim that the reward rose."
            )
            continue
        rose = (
            "rose beyond its interval"
            if t["ci_low"] > 0
            else ("fell beyond its interval" if t["ci_high"] < 0 else "did not rise beyond its interval")
        )
        out.append(
            f"{arm}: mean reward {t['first']:.3f} over the first {t['steps']} steps, {t['last']:.3f} over the last "
            f"{t['steps']}, {t['diff']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]: the reward {rose}."
        )
    return out


def _rl_curves(run_dir: Path, label: str = "") -> dict[str, list[dict[str, Any]]]:
    """RL arms' per-step rows, keyed by arm (``rl-sft (seed 1)`` in a multi-seed run)."""
    curves = {}
    for d in (a.steps for a in RunLayout(run_dir).arms() if a.steps.is_file()):
        rows = [json.loads(line) for line in d.read_text().splitlines() if line.strip()]
        if rows:
            curves[f"{d.parent.name} ({label})" if label else d.parent.name] = rows
    return curves


def _rotation(run_dir: Path) -> dict[str, dict[int, float]]:
    """Per SFT arm: mean principal angle (degrees, left and right) of the top-k subspaces per layer."""
    out = {}
    for f in (a.metrics for a in RunLayout(run_dir).arms() if a.metrics.is_file()):
        m = read_json(f)
        angles = m.get("principal_angles")
        if not angles:
            continue
        per_layer: dict[int, list[float]] = defaultdict(list)
        for name, a in angles.items():
            parts = name.split(".")
            layer = int(parts[parts.index("layers") + 1]) if "layers" in parts else -1
            per_layer[layer].append((a["principal_angle_left_mean_deg"] + a["principal_angle_right_mean_deg"]) / 2)
        out[f.parent.name] = {k: sum(v) / len(v) for k, v in sorted(per_layer.items())}
    return out


def _is_pct(metric: str) -> bool:
    return not metric.startswith("forgetting/")


def _scaled(metric: str, x: float) -> str:
    return f"{100 * x:.2f} points" if _is_pct(metric) else f"{x:.4f} nats"
