"""The report's text: the blocks (headings, sentences, tables, plots) of report.md and report.html, the "At a glance"
lines and the glossary, and the two renderers."""

from __future__ import annotations

import base64
import html
import logging
import math
import re
from pathlib import Path
from typing import Any

from stages.config import Config
from stages.report_plots import PLOTS
from stages.report_stats import _HEADLINE, _is_pct, _pts, _scaled, reward_lines

log = logging.getLogger(__name__)


def _fmt(m: dict[str, Any] | None, pct: bool) -> str:
    if not m:
        return "-"
    if "not_evaluated" in m:
        return "not evaluated (NaN or infinite scores)"
    if pct:
        out = f"{100 * m['value']:.1f} [{100 * m['ci_low']:.1f}, {100 * m['ci_high']:.1f}]"
    else:
        out = f"{m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"
    return out + (" (within-seed interval)" if m.get("within_seed") else "")


def _sentences(data: dict[str, Any]) -> list[str]:
    out = []
    for c in data["comparisons"]:
        if c["metric"] not in _HEADLINE:
            continue
        scale, unit, dp = (100, " points", 2) if _is_pct(c["metric"]) else (1, " nats", 4)
        d, lo, hi = (f"{scale * c[k]:+.{dp}f}" for k in ("diff", "ci_low", "ci_high"))
        out.append(
            f"{c['a']} vs {c['b']}, {c['metric']}: {d}{unit} [{lo}, {hi}] over {c['n']} paired items: {c['verdict']}."
        )
    base = next((m for m in data["models"] if m["name"] == "base"), None)
    if base:
        for name, m in base["metrics"].items():
            if m.get("domain") == "out" and m.get("chance") is not None and name.endswith("/accuracy"):
                if m["ci_low"] <= m["chance"]:
                    out.append(
                        f"Caution: the base model is not measurably above chance on {name} "
                        f"({100 * m['value']:.1f}% [{100 * m['ci_low']:.1f}, {100 * m['ci_high']:.1f}] vs chance "
                        f"{100 * m['chance']:.0f}%), so this benchmark cannot show forgetting."
                    )
    return out


def _claim_lines(data: dict[str, Any]) -> list[str]:
    names = {
        "tradeoff": "(a) RPSFT gives a better in-domain / out-of-domain trade-off than SFT",
        "representation": "(b) RPSFT keeps the model closer to the pretrained one (outputs: KL to the base, the "
        "test; hidden states: CKA, beside it)",
        "rl_init": "(c) RL from RPSFT ends better than RL from SFT",
    }
    out = []
    for c in data["claims"]:
        ev = (
            "; ".join(f"{e['a']} - {e['b']} {e['metric']}: {_fmt_diff(e)}, {e['verdict']}" for e in c["evidence"])
            or "no evidence in this run"
        )
        about = "the method" if c["level"] == "method" else "these checkpoints only (fewer than 3 seeds)"
        why = c["why"][:1].upper() + c["why"][1:]
        out.append(f"{names[c['claim']]}: **{c['verdict']}** about {about}. {why}. Evidence: {ev}.{_power_text(c)}")
    return out


SHORT_CLAIMS = {
    "tradeoff": "(a) trade-off (RPSFT vs SFT, in and out of domain)",
    "representation": "(b) closer to the pretrained model (KL to the base)",
    "rl_init": "(c) RL ends better from RPSFT than from SFT",
}


GLOSSARY = (
    "Words used below: **sft** plain supervised fine-tuning; **rpsft** Rotation-Preserving SFT (it penalises changes "
    "of each pretrained weight matrix inside its top-k singular block); **rl-X** RL (GRPO or PPO) started from arm X; "
    "**id** / **ood** in-domain (the trained task) / out-of-domain (skills fine-tuning may erode); **KL to the base** "
    "how far a model's next-token distributions moved from the pretrained model (nats per token, lower is closer); "
    "**CKA** similarity of hidden states to the base (1 is identical); **not distinguishable** the interval includes "
    "no difference, which is not a proof of equality."
)


def _headline(data: dict[str, Any]) -> list[str]:
    """The three claims, one line each: the verdict and the number that decides it."""
    out = []
    for c in data["claims"]:
        ev = c["evidence"][0] if c["evidence"] else None
        number = f"{ev['a']} - {ev['b']} {ev['metric']}: {_fmt_diff(ev)}" if ev else "no evidence in this run"
        level = "" if c["level"] == "method" else " (these checkpoints)"
        out.append(f"{SHORT_CLAIMS.get(c['claim'], c['claim'])}: **{c['verdict']}**{level}, {number}")
    return out


def _power_text(c: dict[str, Any]) -> str:
    """What the claim's test could detect, and what the observed effect would need."""
    pw, ev = c.get("power"), c.get("evidence") or []
    if not pw or not ev or not math.isfinite(pw["mde"]):
        return ""
    metric = ev[0]["metric"]
    seeds = f"{pw['seeds']} seed{'s' if pw['seeds'] > 1 else ''}"
    text = (
        f" Minimum detectable effect of {metric} at {seeds} and {pw['n']} items: {_scaled(metric, pw['mde'])} "
        f"({100 * pw['power']:.0f}% power at alpha {pw['alpha']:.3g}, Holm's strictest level)"
    )
    if pw["seeds_needed"] is not None:
        text += (
            f"; the observed effect ({_scaled(metric, abs(ev[0]['diff']))}) would need {pw['seeds_needed']} seeds "
            f"at the method level ({pw['seeds_needed_why']})"
        )
    else:
        text += f"; seeds the observed effect would need: not estimable ({pw['seeds_needed_why']})"
    return text + "."


def _seed_control_lines(data: dict[str, Any]) -> list[str]:
    """The seed control in words: which metrics a model's two seeds differ on, and means that hide differing parts."""
    out = []
    rows = data["seed_control"]
    for r in rows:
        if r["kind"] != "claim" and not r["differs"]:
            continue
        line = f"{r['model']}, {r['runs'][0]} vs {r['runs'][1]}, {r['metric']}: {_fmt_diff(r)}"
        line += " (the seeds differ; unadjusted, one of many such checks)" if r["differs"] else ""
        if r.get("hides"):
            line += (
                f": not distinguishable on the mean, but the seeds differ on {', '.join(r['hides'])}; their effects "
                "cancel in the mean, so 'both seeds forget alike' does not follow"
            )
        out.append(line)
    for model in dict.fromkeys(r["model"] for r in rows):
        quiet = [r["metric"] for r in rows if r["model"] == model and r["kind"] == "benchmark" and not r["differs"]]
        if quiet:
            out.append(f"{model}: its seeds do not differ measurably on {', '.join(dict.fromkeys(quiet))}.")
    within = [c for c in data["comparisons"] if c.get("within_seed_spread") and c.get("family") == "claims"]
    for c in within:
        out.append(
            f"{c['a']} - {c['b']} on {c['metric']} ({_fmt_diff(c)}) is not larger than one model's seed-to-seed "
            f"difference ({_scaled(c['metric'], c['seed_spread'])}): at this number of seeds the effect may be "
            "which seeds were drawn."
        )
    return out


def _per_seed_table(data: dict[str, Any]) -> tuple | None:
    """Each claim arm's value per seed run, side by side, on the metrics the claims read and every benchmark."""
    per = data.get("per_seed_values") or {}
    labels = data.get("seed_labels") or []
    if len(labels) < 2 or not per:
        return None
    rows = []
    for model, metrics in per.items():
        for metric, vals in metrics.items():
            pct = _is_pct(metric)
            cells = ["-" if v is None else (f"{100 * v:.1f}" if pct else f"{v:.4f}") for v in vals]
            rows.append([model, metric, *cells])
    return ("table", ["model", "metric", *labels], rows)


def comparison_notes(c: dict[str, Any]) -> str:
    """A comparison's level and what qualifies its verdict, in a few words: "checkpoints, 2 seeds; descriptive;
    within the seed spread (8.00 points)"."""
    if "not_evaluated" in c:
        return c["not_evaluated"]
    seeds = c.get("seeds", 1)
    notes = [f"{'methods' if c.get('level') == 'method' else 'checkpoints'}, {seeds} seed{'s' if seeds != 1 else ''}"]
    if "p_holm" not in c:
        notes.append("descriptive")
    if c.get("within_seed_spread"):
        notes.append(f"within the seed spread ({_scaled(c['metric'], c['seed_spread'])})")
    if c.get("confounds"):
        notes.append("confounded: the arms also differ in " + ", ".join(c["confounds"]))
    return "; ".join(notes)


def _fmt_diff(c: dict[str, Any]) -> str:
    scale, dp = (100, 2) if _is_pct(c["metric"]) else (1, 4)
    return f"{scale * c['diff']:+.{dp}f} [{scale * c['ci_low']:+.{dp}f}, {scale * c['ci_high']:+.{dp}f}]"


MODELS_PER_TABLE = 6


def model_groups(models: list[dict[str, Any]], size: int = MODELS_PER_TABLE) -> list[list[dict[str, Any]]]:
    """Models in groups of at most ``size`` (as they come): the score tables have one column per model and one row
    per metric, so a run of many models (a sweep) gets several tables of a readable width instead of one that a
    page or the Prefect UI clips."""
    return [models[i : i + size] for i in range(0, len(models), size)]


def _blocks(cfg: Config, data: dict[str, Any], plots: dict[str, Path]) -> list[tuple]:
    metric_names: list[str] = []
    for m in data["models"]:
        for k in m["metrics"]:
            if k not in metric_names:
                metric_names.append(k)
    conf = int(cfg.eval.confidence * 100)
    blocks: list[tuple] = [("h1", f"sft2rl report: {cfg.run_name}")]
    if data.get("claims"):
        blocks.append(("h2", "At a glance"))
        blocks.append(("ul", _headline(data)))
    blocks.append(("p", GLOSSARY))
    blocks.append(
        (
            "p",
            f"Run folder `{data['run']}`; {len(data['models'])} models; {data['n_seeds']} training seed(s) "
            f"({', '.join(map(str, data['seeds']))}). Accuracies in percent with {conf}% intervals"
            + (
                (
                    " (Student's t over the seeds' estimates plus the items' variance: the intervals include "
                    f"run-to-run spread over {data['n_seeds']} seeds, and verdicts are about the methods)"
                    if data["n_seeds"] >= 3
                    else " over items, each arm's two checkpoints held fixed: with 2 seeds the verdicts are about "
                    "these checkpoints, and the seed control below shows the run-to-run spread (3 or more seeds put "
                    "it into the intervals)"
                )
                if data["n_seeds"] > 1
                else " over items (Wilson for proportions); one training seed, so every verdict is about these "
                "checkpoints, not the methods"
            )
            + "; KL in nats per token; CKA in [0, 1]. Verdicts on the headline metrics are Holm-corrected; "
            "'not distinguishable' gives the interval and claims no equivalence.",
        )
    )
    blocks.append(("h2", "What this run shows"))
    sentences = _sentences(data)
    blocks.append(("ul", sentences or ["No pairs to compare: evaluate at least two of the models in report.compare."]))
    blocks.append(("h2", "The paper's claims, on this run"))
    blocks.append(("ul", _claim_lines(data)))
    if data["seed_control"]:
        blocks.append(("h2", "Seed control (the same model, two training seeds)"))
        blocks.append(("ul", _seed_control_lines(data)))
        table = _per_seed_table(data)
        if table is not None:
            blocks.append(("p", "Per-seed values of the arms the claims compare (percent; KL in nats per token):"))
            blocks.append(table)
    if data.get("matched"):
        blocks.append(("h2", "At matched in-domain accuracy (each arm vs the nearest plain-SFT arm)"))
        rows = []
        for r in data["matched"]:
            ood = _fmt_diff(r) if "diff" in r else f"no match within {100 * cfg.report.matched_tolerance:.0f} points"
            rows.append([r["arm"], r["method"], r["matched_sft"], f"{100 * r['id_gap']:+.2f}", ood])
        blocks.append(("table", ["arm", "method", "plain SFT arm", "in-domain gap (points)", "OOD difference"], rows))
    blocks.append(("h2", "Scores"))
    for group in model_groups(data["models"]):  # one column per model, at most MODELS_PER_TABLE: tables that fit
        rows = [
            ["init", *[m["init"] or "-" for m in group]],
            ["seeds", *[", ".join(x.removeprefix("seed ") for x in m.get("seed_labels", [])) or "-" for m in group]],
            *[[k, *[_fmt(m["metrics"].get(k), _is_pct(k)) for m in group]] for k in metric_names],
        ]
        blocks.append(("table", ["metric", *[m["name"] for m in group]], rows))
    fewer = sorted(
        {
            f"{k} of {m['name']} ({', '.join(x.removeprefix('seed ') for x in labs) or 'no seed'})"
            for m in data["models"]
            for k, labs in (m.get("metric_seed_labels") or {}).items()
            if k in metric_names
        }
    )
    if fewer:
        blocks.append(
            (
                "p",
                "Scored in fewer seed runs than the model's other rows (sampled answers go only to the models claim "
                "(c) reads when eval.samples_for is rl; a '-' is a model not sampled): " + "; ".join(fewer) + ".",
            )
        )
    unmatched = [
        f"{name}: {start['seeds']} seed{'s' if start['seeds'] > 1 else ''}"
        for name, start in data.get("rl_start", {}).items()
        if start["seeds"] < len(next(m for m in data["models"] if m["name"] == start["init"]).get("seed_labels", []))
    ]
    if unmatched:
        blocks.append(
            (
                "p",
                "The SFT rows above pool more seeds than RL ran from ("
                + ", ".join(unmatched)
                + "): read RL against its own starting checkpoint in 'RL from each initialisation', where both come "
                "from the same seeds.",
            )
        )
    blocks.append(("h2", "Benchmarks"))
    brows = []
    for name, b in data["benchmarks"].items():
        base = next((m for m in data["models"] if m["name"] == "base"), None)
        bm = base["metrics"].get(f"{name}/accuracy") if base else None
        chance = bm.get("chance") if bm else b.get("chance")
        excl = b.get("excluded", b.get("excluded_templates", 0))
        brows.append(
            [
                name,
                b["source"],
                "in-domain" if b["domain"] == "in" else "out-of-domain",
                str(b.get("n", "-")),
                f"{excl} ({b.get('why') or '-'})",
                "-" if chance is None else f"{100 * chance:.0f}%",
                _fmt(bm, True),
            ]
        )
    blocks.append(("table", ["benchmark", "source", "domain", "items", "excluded", "chance", "base score"], brows))
    blocks.append(("h2", "Comparisons (paired by item and seed)"))
    blocks.append(
        (
            "p",
            "The claims' tests (a p value with Holm's in brackets) are corrected for their number; every other row "
            "is descriptive (its unadjusted interval). Level: about the methods from 3 seeds on, else about these "
            "checkpoints. report.json gives each verdict as a sentence.",
        )
    )
    crows = [
        [
            f"{c['a']} - {c['b']}",
            c["metric"],
            _fmt_diff(c),
            str(c["n"]),
            f"{c['p_value']:.3f}" + (f" ({c['p_holm']:.3f})" if "p_holm" in c else ""),
            c.get("verdict_short", c["verdict"]),
            comparison_notes(c),
        ]
        for c in data["comparisons"]
    ]
    blocks.append(("table", ["pair", "metric", "difference", "items", "p (Holm)", "verdict", "level, notes"], crows))
    blocks += _rl_section(cfg, data)
    blocks.append(("h2", "Plots"))
    captions = {
        "tradeoff": "In-domain vs out-of-domain accuracy, one point per model, with intervals.",
        "rl_curves": "RL per step from each initialisation: reward, the share of prompt groups with mixed rewards "
        "(only those carry a GRPO gradient) and KL to the initial policy; bands span the seeds.",
        "rotation": "Mean principal angle between the base's and the fine-tuned top-k singular subspaces, per layer.",
        "forgetting": "KL(base || model) per token on general text, and linear CKA with the base per layer.",
    }
    for name in PLOTS:
        blocks.append(("img", plots[name], captions[name]))
    if "frontier" in plots:
        caption = "Trade-off frontier: every arm of the sweep; the Pareto front (" + ", ".join(data["frontier"]) + ")."
        blocks.insert(
            3, ("p", f"Pareto front of the sweep (in-domain vs out-of-domain): {', '.join(data['frontier'])}.")
        )
        blocks.append(("img", plots["frontier"], caption))
    return blocks


def _rl_section(cfg: Config, data: dict[str, Any]) -> list[tuple]:
    """'RL from each initialisation': the gate (did RL move each model), then per initialisation its start and end
    on the same seeds, the gain with its interval and out-of-domain after RL; the reward curves' trend last."""
    curves, r = data["rl"], data.get("rl_reading")
    if not curves and not data.get("rl_start"):
        return []
    out: list[tuple] = [("h2", "RL from each initialisation")]
    comps = {(c["a"], c["b"], c["metric"]): c for c in data["comparisons"]}
    metric = r["metric"] if r else "id/mean_accuracy"
    gate = []
    for name, start in data.get("rl_start", {}).items():
        g = comps.get((name, start["init"], metric))
        if g is None or "not_evaluated" in g:
            gate.append(f"{name}: no paired {metric} against {start['init']}.")
            continue
        state = (
            "RL moved it up beyond the interval"
            if g["ci_low"] > 0
            else "RL moved it down beyond the interval"
            if g["ci_high"] < 0
            else "RL did not move it beyond the interval: this run cannot say what RL makes of it"
        )
        gate.append(f"From {start['init']}: {metric} {_pts(g)} against its starting checkpoint; {state}.")
    if gate:
        out.append(("p", f"Did RL move each model? (the gate of claim (c), on {metric}, paired by item and seed)"))
        out.append(("ul", gate))
    rows = []
    for name, start in data.get("rl_start", {}).items():
        rl_model = next((m for m in data["models"] if m["name"] == name), None)
        if rl_model is None:
            continue
        for m in dict.fromkeys((metric, "id/mean_accuracy", "ood/mean_accuracy")):
            before, after, g = start["metrics"].get(m), rl_model["metrics"].get(m), comps.get((name, start["init"], m))
            if before is None or after is None:
                continue
            rows.append(
                [
                    start["init"],
                    m,
                    f"{start['seeds']}",
                    _fmt(before, True),
                    _fmt(after, True),
                    _fmt_diff(g) if g and "not_evaluated" not in g else "-",
                ]
            )
    if rows:
        out.append(("table", ["initialisation", "metric", "seeds", "before RL", "after RL", "change (points)"], rows))
    if curves:
        rrows = []
        for arm, rows_ in curves.items():
            r0, r1 = rows_[0], rows_[-1]
            mixed = [1 - x["frac_reward_zero_std"] for x in rows_ if "frac_reward_zero_std" in x]
            kls = [x["kl"] for x in rows_ if isinstance(x.get("kl"), int | float)]
            rrows.append(
                [
                    arm,
                    str(r1["step"]),
                    f"{r0.get('reward', float('nan')):.3f}",
                    f"{r1.get('reward', float('nan')):.3f}",
                    f"{sum(mixed) / len(mixed):.2f}" if mixed else "-",
                    f"{sum(kls) / len(kls):.4f}" if kls else "- (beta 0)",
                    f"{sum(x.get('step_time_s', 0.0) for x in rows_) / len(rows_):.1f}",
                ]
            )
        header = ["RL run", "steps", "reward first", "reward last", "groups with mixed rewards", "mean KL", "s/step"]
        out.append(("table", header, rrows))
        rl_seeds = {c["seeds"] for c in data["comparisons"] if c["a"].startswith("rl-") or c["b"].startswith("rl-")}
        if rl_seeds and max(rl_seeds) < data["n_seeds"]:
            out.append(
                (
                    "p",
                    f"RL ran from the arms of {max(rl_seeds)} of the {data['n_seeds']} training seeds (rl.seeds): "
                    "its comparisons rest on those seeds only and are labelled at that level.",
                )
            )
        for line in reward_lines(curves, cfg.eval.confidence):
            out.append(("p", line))
    return out


def render_md(blocks: list[tuple], rel_to: Path) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"\n## {b[1]}\n")
        elif kind == "p":
            out.append(b[1] + "\n")
        elif kind == "ul":
            out += [f"- {s}" for s in b[1]] + [""]
        elif kind == "table":
            out.append("| " + " | ".join(b[1]) + " |")
            out.append("|" + "---|" * len(b[1]))
            out += ["| " + " | ".join(r) + " |" for r in b[2]] + [""]
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1].relative_to(rel_to).as_posix()})\n\n*{b[2]}*\n")
    return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Markdown's inline emphasis and code, as the report's markdown uses them, in escaped HTML."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def render_html(blocks: list[tuple], title: str) -> str:
    e = _inline
    body = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(b[1])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{e(s)}</li>" for s in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(b[1].read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}"/>'
                f"<figcaption>{e(b[2])}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:4px 8px}"
        "th{background:#f3f3f3}img{max-width:100%}figcaption{font-style:italic;color:#555}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
        f"</head><body>{''.join(body)}</body></html>\n"
    )
