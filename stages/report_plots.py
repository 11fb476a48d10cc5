"""The report's plots (matplotlib, Agg): the in-domain / out-of-domain trade-off, the frontier of a sweep, RL reward
and KL curves with a band over seeds, the rotation of the top-k subspaces per layer, and forgetting."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

from stages.config import Config
from stages.report_stats import _rotation
from stages.store import atomic_write

log = logging.getLogger(__name__)


PLOTS = ("tradeoff", "rl_curves", "rotation", "forgetting")


def make_plots(cfg: Config, data: dict[str, Any], plot_dir: Path) -> dict[str, Path]:
    """Draw the report's figures into ``plot_dir``: one function per figure; a figure without data says why."""
    matplotlib.use("Agg")
    # lazy: pyplot only after the Agg backend is chosen, and only when plotting (choosing it at import would switch
    # the backend of every process that imports this module)
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    figures = [
        ("tradeoff", (1, (6.4, 4.8)), _plot_tradeoff),
        ("frontier", (1, (7.2, 5.4)), _plot_frontier),
        ("rl_curves", (3, (15, 4)), _plot_rl_curves),
        ("rotation", (1, (7, 4)), _plot_rotation),
        ("forgetting", (2, (11, 4)), _plot_forgetting),
    ]
    paths = {}
    for name, (panels, size), draw in figures:
        if name == "frontier" and not data.get("frontier"):
            continue  # only a sweep has a frontier
        fig, axes = plt.subplots(1, panels, figsize=size)
        try:
            draw(list(axes) if panels > 1 else [axes], cfg, data)
            path = plot_dir / f"{name}.png"
            atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
        finally:
            plt.close(fig)
        paths[name] = path
    return paths


def _note(ax, text: str) -> None:
    """What a figure shows when it has no data."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


def _plot_tradeoff(axes, cfg: Config, data: dict[str, Any]) -> None:
    """In-domain vs out-of-domain accuracy of every model, with intervals."""
    ax = axes[0]
    pts = [(m, m["metrics"].get("id/mean_accuracy"), m["metrics"].get("ood/mean_accuracy")) for m in data["models"]]
    pts = [p for p in pts if p[1] and p[2]]
    if not pts:
        _note(ax, "needs at least one in-domain and one out-of-domain benchmark")
        return
    for m, x, y in pts:
        ax.errorbar(x["value"], y["value"], xerr=_err([x]), yerr=_err([y]), fmt="o", capsize=3, label=m["name"])
    ax.set_xlabel("in-domain accuracy (mean of in-domain benchmarks)")
    ax.set_ylabel("out-of-domain accuracy (mean of OOD benchmarks)")
    ax.set_title(f"In-domain vs out-of-domain ({int(cfg.eval.confidence * 100)}% intervals)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _plot_frontier(axes, cfg: Config, data: dict[str, Any]) -> None:
    """The trade-off frontier of a sweep: every SFT-kind arm, the Pareto front drawn and named."""
    ax, front = axes[0], data["frontier"]
    byname = {m["name"]: m for m in data["models"]}
    for name in [p["name"] for p in data["frontier_points"]]:
        x, y = byname[name]["metrics"]["id/mean_accuracy"], byname[name]["metrics"]["ood/mean_accuracy"]
        on = name in front
        ax.errorbar(
            x["value"],
            y["value"],
            xerr=_err([x]),
            yerr=_err([y]),
            fmt="o" if on else ".",
            capsize=2,
            alpha=1.0 if on else 0.5,
        )
        ax.annotate(name, (x["value"], y["value"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fx = [byname[n]["metrics"]["id/mean_accuracy"]["value"] for n in front]
    fy = [byname[n]["metrics"]["ood/mean_accuracy"]["value"] for n in front]
    ax.plot(fx, fy, "-", color="black", alpha=0.6, label="Pareto front")
    ax.set_xlabel("in-domain accuracy")
    ax.set_ylabel("out-of-domain accuracy")
    ax.set_title("Trade-off frontier of the sweep (points off the front faded)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _rl_groups(curves: dict[str, list[dict[str, Any]]]) -> dict[str, list[list[dict[str, Any]]]]:
    """RL curves grouped by RL arm over seeds (``rl-sft (seed 1)`` -> ``rl-sft``)."""
    groups: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for key, rows in curves.items():
        groups[key.split(" (", 1)[0]].append(rows)
    return dict(groups)


def _plot_rl_curves(axes, cfg: Config, data: dict[str, Any]) -> None:
    """Per RL arm and step: reward, the share of prompt groups with mixed rewards (the groups that carry a GRPO
    gradient) and KL to the initial policy; the mean over seeds with a band from the lowest to the highest seed."""
    curves = data["rl"]
    if not curves:
        _note(axes[0], "no RL runs in this run folder")
        for ax in axes[1:]:
            ax.set_axis_off()
        return
    series = (
        ("reward", lambda r: r.get("reward"), "reward (mean over completions)"),
        ("mixed", lambda r: 1 - r["frac_reward_zero_std"] if "frac_reward_zero_std" in r else None, "share"),
        ("kl", lambda r: r.get("kl"), "KL to the initial policy"),
    )
    titles = ["RL reward per step", "Prompt groups with mixed rewards", "KL to the initial policy per step"]
    drawn = [False, False, False]
    for arm, runs in _rl_groups(curves).items():
        for i, (_, get, _) in enumerate(series):
            by_step: dict[int, list[float]] = defaultdict(list)
            for rows in runs:
                for r in rows:
                    v = get(r)
                    if isinstance(v, int | float) and math.isfinite(v):
                        by_step[int(r["step"])].append(float(v))
            if not by_step:
                continue
            steps = sorted(by_step)
            mean = [sum(by_step[t]) / len(by_step[t]) for t in steps]
            label = f"{arm} ({len(runs)} seeds)" if len(runs) > 1 else arm
            (line,) = axes[i].plot(steps, mean, marker=".", label=label)
            if len(runs) > 1:
                lo, hi = [min(by_step[t]) for t in steps], [max(by_step[t]) for t in steps]
                axes[i].fill_between(steps, lo, hi, alpha=0.2, color=line.get_color())
            drawn[i] = True
    for i, ax in enumerate(axes):
        if not drawn[i]:
            _note(ax, "KL not logged: rl.training.beta is 0 (no reference model)" if i == 2 else "not logged")
            continue
        ax.set_title(titles[i])
        ax.set_xlabel("step")
        ax.set_ylabel(series[i][2])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def _plot_rotation(axes, cfg: Config, data: dict[str, Any]) -> None:
    """Mean principal angle of the top-k singular subspaces vs the base, per layer, per SFT arm."""
    ax = axes[0]
    rot = _rotation(Path(data["rotation_dir"]))
    if not rot:
        _note(ax, "no SFT arm recorded rotation diagnostics")
        return
    for arm, per_layer in rot.items():
        layers = [k for k in per_layer if k >= 0]
        ax.plot(layers, [per_layer[k] for k in layers], marker=".", label=arm)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean principal angle of top-k subspaces vs base (deg)")
    ax.set_title("Rotation of the top-k singular subspaces per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _plot_forgetting(axes, cfg: Config, data: dict[str, Any]) -> None:
    """Forgetting: KL to the base on general text, and linear CKA of hidden states with the base per layer."""
    kl = [(m["name"], m["metrics"].get("forgetting/kl_to_base")) for m in data["models"]]
    kl = [(n, k) for n, k in kl if k]
    if not kl:
        _note(axes[0], "forgetting measurement disabled (eval.forgetting.enabled=false)")
        axes[1].set_axis_off()
        return
    axes[0].bar(range(len(kl)), [k["value"] for _, k in kl], yerr=_err([k for _, k in kl]), capsize=3)
    axes[0].set_xticks(range(len(kl)), [n for n, _ in kl], rotation=30, ha="right")
    axes[0].set_ylabel("KL(base || model) per token (nats)")
    axes[0].set_title("KL to the base on general text")
    for m in data["models"]:
        if m["cka_layers"]:
            cka = [c["value"] for c in m["cka_layers"]]
            axes[1].plot(range(len(cka)), cka, marker=".", label=m["name"])
    axes[1].set_xlabel("layer")
    axes[1].set_ylabel("linear CKA with the base")
    axes[1].set_title("Representation similarity to the base")
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=8)


def _err(points: list[dict[str, Any]]) -> list[list[float]]:
    """Error-bar lengths below and above each value. A pooled value can sit a hair outside its percentile interval
    (a mean of seeds against a resampled distribution; round-off for an interval of zero width): never negative."""
    return [[max(0.0, p["value"] - p["ci_low"]) for p in points], [max(0.0, p["ci_high"] - p["value"]) for p in points]]
