"""Experiment tracking through transformers' own integrations (``tracking.report_to``): the trainer arguments that
name each arm's tracked run, and the evaluation's metrics written beside the training curves in TensorBoard.

Names: the run folder ``runs/<run>`` is the project; each arm is the tracked run ``<run>/<arm>`` (in a multi-seed run
``<run>/seed-<s>/<arm>``), so SFT and RPSFT curves, every seed, and the RL runs sit side by side.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from stages.config import Config, ConfigError
from stages.store import atomic_write_text


def main_run_dir(cfg: Config) -> Path:
    """The run folder the user named: a seed run ``<run>/seeds/seed-<s>`` belongs to ``<run>``."""
    return cfg.layout.parent_run.dir


def tracked_name(cfg: Config, arm: str) -> str:
    main = main_run_dir(cfg)
    return f"{main.name}/{cfg.run_name}/{arm}" if main != cfg.run_dir else f"{cfg.run_name}/{arm}"


def tensorboard_dir(cfg: Config, arm: str) -> Path:
    """``<run>/tensorboard/<arm>`` (``<run>/tensorboard/seed-<s>/<arm>`` for a seed run)."""
    main = main_run_dir(cfg)
    root = main / "tensorboard"
    return root / cfg.run_name / arm if main != cfg.run_dir else root / arm


def check_installed(cfg: Config) -> None:
    """Every integration of ``tracking.report_to`` importable here, checked before the stage loads a model.

    Raises:
        ConfigError: one is missing, with the package to install.
    """
    if not cfg.tracking.report_to:
        return
    # lazy: the report stage imports this module without torch (transformers.integrations loads it); tests patch
    # get_available_reporting_integrations on transformers.integrations, so it is looked up at call time
    from transformers.integrations import get_available_reporting_integrations

    missing = [x for x in cfg.tracking.report_to if x not in get_available_reporting_integrations()]
    if missing:
        hint = {"tensorboard": "tensorboardX (or tensorboard)"}
        raise ConfigError(
            f"tracking.report_to={cfg.tracking.report_to}: {missing} not installed here; install "
            f"{', '.join(hint.get(m, m) for m in missing)} or remove it from tracking.report_to"
        )


def trainer_args(cfg: Config, arm: str) -> dict[str, Any]:
    """``report_to``, ``run_name`` and ``project`` for a TRL config. TensorBoard's folder is read by transformers
    from TENSORBOARD_LOGGING_DIR when the trainer is built, so it is set here, in the stage process."""
    if not cfg.tracking.report_to:
        return {"report_to": "none"}
    check_installed(cfg)
    if "tensorboard" in cfg.tracking.report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(tensorboard_dir(cfg, arm).resolve())
    return {
        "report_to": list(cfg.tracking.report_to),
        "run_name": tracked_name(cfg, arm),
        "project": cfg.tracking.project or main_run_dir(cfg).name,
    }


def log_eval_metrics(cfg: Config, model: str, metrics: dict[str, dict[str, Any]]) -> Path | None:
    """The evaluation's metrics of one model as TensorBoard scalars (``eval/<metric>``, with ``_ci_low`` and
    ``_ci_high``) in ``<run>/tensorboard/[seed-<s>/]eval-<model>``; None when TensorBoard is not tracked."""
    if "tensorboard" not in cfg.tracking.report_to:
        return None
    folder = tensorboard_dir(cfg, f"eval-{model}")
    w = scalar_writer(cfg, f"eval-{model}")
    try:
        for name, m in metrics.items():
            for key, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
                if isinstance(m.get(key), int | float):
                    w.add_scalar(f"eval/{name}{suffix}", float(m[key]), 0)
    finally:
        w.close()
    return folder


def scalar_writer(cfg: Config, arm: str):
    """A TensorBoard SummaryWriter on the arm's folder (for loops that are not a transformers Trainer: PPO, the
    evaluation), or None when TensorBoard is not tracked. torch's writer when tensorboard is installed, else
    tensorboardX's (the same choice transformers makes)."""
    if "tensorboard" not in cfg.tracking.report_to:
        return None
    check_installed(cfg)
    try:  # lazy: optional, whichever TensorBoard writer is installed (tensorboard, else the tracking extra)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from tensorboardX import SummaryWriter
    return SummaryWriter(str(tensorboard_dir(cfg, arm)))


def write_model_card(trainer, folder: Path, cfg: Config, arm: str, facts: dict[str, Any]) -> Path:
    """``<folder>/README.md``: the model card TRL drafts for the trainer (base model, trainer, framework versions,
    citation) followed by what sft2rl knows about the checkpoint: method and its settings, data, the run's numbers.
    ``trainer`` None (PPO): the sft2rl section alone."""
    head = f"# {tracked_name(cfg, arm)}\n"
    if trainer is not None:
        trainer.create_model_card(model_name=tracked_name(cfg, arm), tags=["sft2rl", facts.get("method", arm)])
        drafted = Path(trainer.args.output_dir) / "README.md"
        if drafted.is_file():
            head = drafted.read_text(encoding="utf-8")
    lines = ["", "## sft2rl", ""]
    lines += [f"- **{k}**: {v}" for k, v in facts.items() if v is not None]
    lines += ["", "The resolved config that produced this checkpoint is `config.yaml` in the arm's folder.", ""]
    return atomic_write_text(Path(folder) / "README.md", head.rstrip("\n") + "\n" + "\n".join(lines))


def push_to_hub(cfg: Config, arm: str, folder: Path) -> dict[str, Any] | None:
    """Upload a finished checkpoint folder (weights, tokenizer, model card) to ``<hub.repo_prefix>-<run>-<arm>``
    when ``hub.push`` is on. The checkpoint is complete on disk before this runs, so a failed upload loses nothing:
    it is logged and recorded (``{"repo": ..., "error": ...}``) and the stage ends normally."""
    if not cfg.hub.push:
        return None
    name = re.sub(r"[^\w.-]+", "-", tracked_name(cfg, arm)).strip("-")
    repo = f"{cfg.hub.repo_prefix}-{name}"[:96]
    try:
        api = HfApi()
        api.create_repo(repo, private=cfg.hub.private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=f"sft2rl: {tracked_name(cfg, arm)}")
        return {"repo": repo, "pushed": True}
    except Exception as e:  # noqa: BLE001 - any hub failure: the local checkpoint stands, the failure is recorded
        logging.getLogger(__name__).warning("hub push of %s to %s failed: %s: %s", folder, repo, type(e).__name__, e)
        return {"repo": repo, "pushed": False, "error": f"{type(e).__name__}: {e}"[:500]}
