"""What produced an output, and whether two outputs may be combined: one rule for every reader.

Each training stage writes the config it ran with to its arm's ``config.yaml``. The *recipe* of a stage is the part
of that config that changes what the stage computes: for SFT the model, the data, the seed and the ``sft`` section;
for RL the model, the data, the seed and the ``rl`` section. Names, folders, engines' placement, evaluation, report,
tracking and logging cadence are not part of it.

- :func:`check` is the one check of an existing output against what a reader is about to combine it with: its recorded
  recipe against the config given now (SFT and RL, before an arm is resumed or reused: ``--force`` restarts it, so
  one arm never mixes two recipes), and an RL arm's recorded initial weights against the weights its initial
  checkpoint holds now (RL before it resumes; the evaluation before it scores RL runs beside the SFT arms they
  started from). It raises with every difference named.
- :func:`confounds` is what the report calls for every pair of arms it compares: the recipe keys on which they
  differ beyond their method (``sft.method`` and the method's own settings, or RL's ``init``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from stages.checkpointing import checkpoints
from stages.config import ConfigError, dump_config, safe_yaml
from stages.layout import CHECKPOINT, INIT, ArmLayout, RunLayout
from stages.store import FolderLock, LockedError, atomic_write_json, file_sha256, is_done, weights_stamp

log = logging.getLogger(__name__)

# top-level keys that never change what a stage computes
NOT_RECIPE = {
    "run_name",
    "runs_root",
    "cache_dir",
    "seeds",
    "sweep",
    "device",
    "torch_threads",
    "disk_reserve_gb",
    "eval",
    "report",
    "tracking",
    "hub",
}
# the other training stage's section: SFT does not read rl.*, RL reads its init checkpoint, not sft.*
OTHER_STAGE = {"sft": "rl", "rl": "sft"}
# inside a stage section: names, cadence of logs and saves, which seeds get RL
NOT_RECIPE_IN_STAGE = {
    "arm",
    "seeds",
    "in_flow",
    "training.logging_steps",
    "training.save_steps",
    "training.save_total_limit",
    "generation.backend",  # auto / vllm / hf sample the same distribution (docs/rl.md)
}
# what legitimately differs between the arms a comparison sets side by side
METHOD_KEYS = {
    "sft": ("sft.method", "sft.rpsft.", "sft.l2_lambda", "sft.iw.", "sft.lora."),
    "rl": ("rl.init",),
}


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists and scalars are leaves."""
    if isinstance(d, dict):
        return {k2: v2 for k, v in d.items() for k2, v2 in flat(v, f"{prefix}{k}.").items()}
    return {prefix.rstrip("."): d}


def recipe(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The dotted keys of ``config`` (a dumped Config) that decide what ``stage`` ("sft" or "rl") computes."""
    out = {}
    for key, value in flat(config).items():
        top, _, rest = key.partition(".")
        if top in NOT_RECIPE or top == OTHER_STAGE[stage]:
            continue
        if top == stage and any(rest == k or rest.startswith(k + ".") for k in NOT_RECIPE_IN_STAGE):
            continue
        out[key] = value
    return out


def differences(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """Keys on which two recipes differ (missing counts as None), minus those starting with ``ignore``."""
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and not any(k == p or k.startswith(p) for p in ignore)
    }


def read_config(arm_dir: Path) -> dict[str, Any] | None:
    """The config an arm recorded, or None when it has none (an arm from before configs were recorded)."""
    path = ArmLayout(Path(arm_dir)).config
    if not path.is_file():
        return None
    try:
        data = safe_yaml(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path} is not valid YAML ({str(e).splitlines()[0][:120]}): the record of the config this arm ran with "
            "was damaged or edited. Restore it, or rerun the arm with --force"
        ) from None
    return data if isinstance(data, dict) else None


def shown(diff: dict[str, tuple[Any, Any]], limit: int = 4) -> str:
    """``key: old -> new`` for the first ``limit`` differences."""
    parts = [f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in list(diff.items())[:limit]]
    more = len(diff) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _short(v: Any, limit: int = 120) -> str:
    """``repr(v)``, a long one cut in the middle: a path's end (the arm, the file) is the part that tells two apart."""
    s = repr(v)
    return s if len(s) <= limit else s[: limit // 3] + "..." + s[-(limit - limit // 3 - 3) :]


def check(
    arm_dir: Path,
    stage: str,
    redo_hint: str,
    config: dict[str, Any] | None = None,
    init: tuple[str, dict[str, str]] | None = None,
) -> None:
    """Refuse to combine the output in ``arm_dir`` with what is given now, when what produced it differs.

    ``config`` (a dumped Config): the arm's recorded recipe for ``stage`` must equal this config's, once the arm was
    started (finished, or a trainer checkpoint written); ``redo_hint`` then completes "... or <hint> to restart it".
    ``init`` (path, :func:`weights_digest` of it now): an RL arm's recorded initial weights must be these;
    ``redo_hint`` is then the sentence that says how to redo the arm. An arm with no record passes.

    Raises:
        ConfigError: naming every difference, and how to redo the arm.
    """
    arm_dir = Path(arm_dir)
    out = ArmLayout(arm_dir)
    if config is not None:
        started = out.done.is_file() or bool(checkpoints(out.trainer))
        recorded = read_config(arm_dir) if started else None
        diff = differences(recipe(recorded, stage), recipe(config, stage)) if recorded is not None else {}
        if diff:
            state = "is finished" if out.done.is_file() else "was started"
            raise ConfigError(
                f"{arm_dir} {state} with another {stage.upper()} recipe than the one given now ({shown(diff)}); "
                f"resuming or reusing it would mix two recipes under one name. Give the recorded values back, name "
                f"another arm, or {redo_hint} to restart it from scratch"
            )
    if init is not None:
        before = _read_json(out.init)
        path, digest = init
        if isinstance(before, dict) and before.get("sha256") and before["sha256"] != digest:
            raise ConfigError(
                f"{arm_dir} was started from other weights than {path} has now (sha256 of its safetensors differ: was "
                f"the SFT arm retrained since?); combining them would mix two initialisations. {redo_hint}"
            )


def recorded_init(arm_dir: Path) -> str | None:
    """The initial checkpoint an RL arm recorded in ``init.json`` (None without a readable record)."""
    record = _read_json(ArmLayout(Path(arm_dir)).init)
    return str(record["init"]) if isinstance(record, dict) and record.get("init") else None


def check_rl_inits(layout: RunLayout, names: list[str], seed: int) -> None:
    """Each finished RL arm of ``names`` in the run folder ``layout`` must have started from the weights that this
    run's arm of its initial checkpoint holds now (:func:`check`), since readers compare it with that arm: after an SFT
    arm is retrained (or an RL run started from another run's checkpoint), "RL from sft" would be read against a
    checkpoint it never started from. Files with the recorded names, sizes and mtimes are not hashed again; RL from
    the base model is not checked here (the model cache verifies itself). Called by the evaluation before it builds
    any item and by the report before it reads any score.

    Raises:
        ConfigError: naming the RL arm, the checkpoint and how to redo it.
    """
    main = layout.parent_run
    for name in names:
        arm = layout.arm(name)
        recorded = recorded_init(arm.dir)
        if recorded is None or not is_done(arm.dir) or Path(recorded).name != CHECKPOINT:
            continue
        init_arm = Path(recorded).parent.name
        init = layout.arm(init_arm).checkpoint
        if not init.is_dir():
            continue
        before = _read_json(arm.init) or {}
        if before.get("stamp") and before["stamp"] == weights_stamp(init):
            continue  # the very files it started from, untouched
        seeds = f" rl.seeds=[{seed}]" if layout.is_seed_run else ""
        redo = (
            f"Rerun it from the current checkpoint (sft2rl stage rl --config <this config> --force "
            f"rl.init={main.arm(init_arm).checkpoint}{seeds}; or the flow with force=true), or leave it out with "
            "eval.models, then evaluate again"
        )
        check(arm.dir, "rl", redo, init=(str(init), weights_digest(init)))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_same_recipe(arm_dir: Path, config: dict[str, Any], stage: str, redo_hint: str) -> None:
    """Refuse to resume or reuse an arm whose recorded recipe differs from ``config``'s (:func:`check`).

    Called before a finished arm is returned as it is and before a half-trained one resumes (an arm with no record
    or no trainer state passes).
    """
    check(arm_dir, stage, redo_hint, config=config)


def confounds(a: dict[str, Any] | None, b: dict[str, Any] | None, stage: str) -> dict[str, tuple[Any, Any]]:
    """Recipe keys on which two compared arms differ beyond their method; empty when either has no record."""
    if a is None or b is None:
        return {}
    return differences(recipe(a, stage), recipe(b, stage), METHOD_KEYS[stage])


INIT_FILE = INIT


def weights_digest(folder: str | Path) -> dict[str, str]:
    """sha256 of each safetensors file of a model folder (an SFT checkpoint: about 1 s per 500 MB here)."""
    return {f.name: file_sha256(f) for f in sorted(Path(folder).glob("*.safetensors"))}


def check_same_init(arm_dir: Path, init_path: str, force: bool) -> dict[str, Any]:
    """The exact weights an RL arm starts from: recorded in ``<arm>/init.json`` when it starts; a half-trained arm
    resumes only from the same weights (an SFT arm retrained since would be mixed into it). Returns the record.

    Raises:
        ConfigError: the arm has trainer checkpoints from other initial weights, and ``force`` is off.
    """
    arm_dir = Path(arm_dir)
    record = {"init": str(init_path), "sha256": weights_digest(init_path), "stamp": weights_stamp(init_path)}
    out = ArmLayout(arm_dir)
    started = bool(checkpoints(out.trainer))
    path = out.init
    if started and not force:
        check(
            arm_dir,
            "rl",
            "Pass --force to restart the RL arm from the current checkpoint",
            init=(str(init_path), record["sha256"]),
        )
    if not (started and path.is_file()) or force:
        arm_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
    return record


def rl_arm_name(cfg: Any) -> str:
    """The RL arm's folder name: ``rl.arm``, else ``rl-<sft arm>`` for ``<run_dir>/<sft arm>/checkpoint`` (the last
    folder's name for any other initial checkpoint), ``rl-base`` without one."""
    if cfg.rl.arm:
        return cfg.rl.arm
    if not cfg.rl.init:
        return "rl-base"
    init = Path(cfg.rl.init)
    return f"rl-{init.parent.name if init.name == CHECKPOINT else init.name}"


def training_arm(stage: str, cfg: Any) -> tuple[Path, tuple[str, dict[str, Any]]]:
    """The folder and the recipe of the arm a training stage (``sft`` or ``rl``) makes from ``cfg``."""
    arm_dir = cfg.arm_dir if stage == "sft" else cfg.layout.arm(rl_arm_name(cfg)).dir
    return arm_dir, (stage, safe_yaml(dump_config(cfg)))


def finished_arm(stage: str, cfg: Any) -> Path | None:
    """The arm's folder when :func:`run_arm_once` would return it as it is, without ``--force``: complete, made by
    this recipe, its metrics readable. None in every other case (not finished, another recipe, a damaged file: the
    stage itself then runs and says what it finds). The flow asks this before it starts a stage's process, so a
    finished arm costs no process start (about 7 s for SFT, 11 s for RL on 2 cores, mostly imports)."""
    arm_dir, recipe = training_arm(stage, cfg)
    if not is_done(arm_dir):
        return None
    try:
        check_same_recipe(arm_dir, recipe[1], recipe[0], "")
        json.loads(ArmLayout(arm_dir).metrics.read_text())
    except (ConfigError, OSError, ValueError):
        return None
    return arm_dir


def run_arm_once(
    arm_dir: Path,
    force: bool,
    work: Callable[[], dict[str, Any]],
    redo_hint: str,
    recipe: tuple[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The wrapper of every training stage: a complete arm (``DONE``) returns its ``metrics.json`` unless ``force``;
    otherwise ``work()`` runs under the arm's folder lock (rank 0 only: under torchrun the other ranks do not write).
    ``recipe`` (stage, config as a dict): unless ``force``, a finished or half-trained arm must have been made by the
    same recipe (:func:`check_same_recipe`).

    Raises:
        ConfigError: another process holds this arm's lock, or the arm was made by another recipe.
    """
    arm_dir = Path(arm_dir)
    if recipe is not None and not force:
        check_same_recipe(arm_dir, recipe[1], recipe[0], redo_hint)
    if is_done(arm_dir) and not force:
        log.info("%s is complete; skipping (%s)", arm_dir, redo_hint)
        return json.loads(ArmLayout(arm_dir).metrics.read_text())
    if int(os.environ.get("RANK", "0")) != 0:
        return work()
    try:
        with FolderLock(arm_dir):
            return work()
    except LockedError as e:
        raise ConfigError(str(e)) from None
