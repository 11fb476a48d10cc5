"""What a flow run shows besides its log: each arm's metrics, the report as markdown, tables and images, and links to
the run folder, with paths shown relative to the runs folder or the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from stages.config import Config
from stages.layout import RunLayout
from stages.secrets import scrub


def shown_path(value: str, cfg: Config) -> str:
    """A path as an artifact shows it: relative to the runs folder (``tiny/sft/checkpoint``) or the cache
    (``cache/models/...``), not the absolute path of one machine. Other strings are returned as they are."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    p = Path(value)
    for root, prefix in ((cfg.run_dir.resolve().parent, ""), (Path(cfg.cache_dir).resolve(), "cache/")):
        if p.is_relative_to(root):
            return prefix + str(p.relative_to(root))
    return value


def _metrics_artifact(cfg: Config, folder: str, title: str) -> None:
    from pipeline import files

    f = cfg.layout.arm(folder).metrics
    if not f.is_file():
        return
    m = json.loads(f.read_text())
    keep = {k: v for k, v in m.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
    rows = "\n".join(
        f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {shown_path(v, cfg)} |" for k, v in keep.items()
    )
    base = files.url_for(cfg.run_dir.resolve())
    where = shown_path(str((cfg.run_dir / folder).resolve()), cfg)
    link = f"[{where}]({base}{folder}/)" if base else f"`{where}`"
    create_markdown_artifact(
        key=_key(f"{cfg.run_name}-{folder}"),
        markdown=f"## {title}\n\n| metric | value |\n|---|---|\n{rows}\n\nFolder: {link}",
        description=title,
    )


def _key(raw: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in raw.lower()).strip("-")[:100]


def _cell(name: str, v: dict[str, Any]) -> str:
    """A metric as the report writes it: accuracies in percent, KL and CKA as numbers, with the interval."""
    if name.startswith("forgetting/"):
        return f"{v['value']:.4f} [{v['ci_low']:.4f}, {v['ci_high']:.4f}]"
    return f"{100 * v['value']:.1f}% [{100 * v['ci_low']:.1f}, {100 * v['ci_high']:.1f}]"


def score_tables(report: dict[str, Any]) -> list[list[dict[str, str]]]:
    """The Scores tables of a report.json: one row per metric (the models' init and seeds first), one column per
    model, the models grouped as the report groups them (``score_tables``: a few per table, so the UI's table view
    does not clip a row of every metric); every row has every column ("n/a" where a model lacks the metric)."""
    by_name = {m["name"]: m for m in report["models"]}
    groups = report.get("score_tables") or [list(by_name)]
    out = []
    for names in groups:
        group = [by_name[n] for n in names if n in by_name]
        metrics = list(dict.fromkeys(k for m in group for k in m["metrics"]))
        rows = [
            {"metric": "init", **{m["name"]: m["init"] or "none" for m in group}},
            {"metric": "seeds", **{m["name"]: _seeds(m) for m in group}},
        ]
        rows += [
            {"metric": k, **{m["name"]: _cell(k, m["metrics"][k]) if k in m["metrics"] else "n/a" for m in group}}
            for k in metrics
        ]
        out.append(rows)
    return out


def _seeds(model: dict[str, Any]) -> str:
    return ", ".join(x.removeprefix("seed ") for x in model.get("seed_labels", [])) or "n/a"


def report_artifacts(cfg: Config) -> None:
    """The report as a markdown artifact, the comparison as a table, links to the HTML report and the run folder."""
    from pipeline import files

    run_dir = cfg.run_dir.resolve()
    md = RunLayout(run_dir).report_md
    if not md.is_file():
        return
    base = files.url_for(run_dir)  # http://127.0.0.1:4201/<run>/ when the runs folder is served, else None
    text = scrub(md.read_text())
    if base:  # the report's figures load in the UI from the file server
        text = text.replace("](plots/", f"]({base}plots/")
    create_markdown_artifact(key=_key(f"{cfg.run_name}-report"), markdown=text, description="sft2rl report")
    data = json.loads(RunLayout(run_dir).report_json.read_text())
    tables = score_tables(data)
    for i, rows in enumerate(tables):
        create_table_artifact(
            key=_key(f"{cfg.run_name}-scores" + (f"-{i + 1}" if i else "")),
            table=rows,
            description="Scores with intervals" + (f" ({i + 1} of {len(tables)})" if len(tables) > 1 else ""),
        )
    comps = [
        {
            "pair": f"{c['a']} - {c['b']}",
            "metric": c["metric"],
            "difference": f"{c['diff']:+.4g}",
            "interval": f"[{c['ci_low']:+.4g}, {c['ci_high']:+.4g}]",
            "verdict": c.get("verdict_short", c["verdict"]),  # the sentence is in report.md and report.json
            "level, notes": c.get("notes", ""),
        }
        for c in data["comparisons"]
    ]
    if comps:
        create_table_artifact(key=_key(f"{cfg.run_name}-comparisons"), table=comps, description="Paired comparisons")
    create_link_artifact(
        key=_key(f"{cfg.run_name}-report-html"),
        link=f"{base}{RunLayout(run_dir).report_html.name}" if base else RunLayout(run_dir).report_html.as_uri(),
        link_text="report.html (self-contained)",
        description="The HTML report",
    )
    create_link_artifact(
        key=_key(f"{cfg.run_name}-run-folder"),
        link=base or run_dir.as_uri(),
        link_text=shown_path(str(run_dir), cfg),
        description="Run folder: checkpoints, metrics, plots",
    )
    for plot in sorted(RunLayout(run_dir).plots.glob("*.png")):
        key = _key(f"{cfg.run_name}-plot-{plot.stem}")
        if base:
            create_image_artifact(image_url=f"{base}plots/{plot.name}", key=key, description=f"Plot {plot.stem}")
        else:
            create_link_artifact(key=key, link=plot.as_uri(), link_text=plot.name)
