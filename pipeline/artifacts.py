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
    rows: list[dict[str, Any]] = []
    for m in data["models"]:
        row: dict[str, Any] = {"model": m["name"], "init": m["init"] or "none"}
        row["seeds"] = ", ".join(x.removeprefix("seed ") for x in m.get("seed_labels", [])) or "n/a"
        for name, v in m["metrics"].items():
            row[name] = _cell(name, v)
        rows.append(row)
    names = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{k: r.get(k, "n/a") for k in names} for r in rows]  # every row has every column
    create_table_artifact(key=_key(f"{cfg.run_name}-scores"), table=rows, description="Scores with intervals")
    comps = [
        {
            "pair": f"{c['a']} - {c['b']}",
            "metric": c["metric"],
            "difference": f"{c['diff']:+.4g}",
            "interval": f"[{c['ci_low']:+.4g}, {c['ci_high']:+.4g}]",
            "verdict": c["verdict"],
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
