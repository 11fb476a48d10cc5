"""The flows' parameters (pydantic models the run forms are drawn from) and their validation before any stage: the
config file and overrides loaded, the launcher checked, and what a deployment run may touch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from stages import engines
from stages.config import SFT_METHODS, Config, ConfigError, load_config
from stages.stage_cli import DEFAULT_CONFIG

REPO = Path(__file__).resolve().parents[1]


DEFAULT_ARMS = ("sft", "rpsft")  # the comparison the product exists for


class Launcher(BaseModel):
    """How training stages start: one process, or ``accelerate launch`` with a config from configs/accelerate/."""

    num_processes: int = Field(1, ge=1, description="Processes (GPUs) per training stage.")
    accelerate_config: str | None = Field(
        None, description="accelerate config file (configs/accelerate/*.yaml) used when num_processes > 1."
    )


class StageParams(BaseModel):
    """What every flow takes: a config file, dotted overrides, and whether to recompute finished outputs."""

    config: str = Field(DEFAULT_CONFIG, description="Config file (relative to the project folder).")
    overrides: list[str] = Field(default_factory=list, description="Dotted key=value overrides, e.g. seed=1.")
    force: bool = Field(False, description="Recompute stages whose outputs are already complete.")
    launcher: Launcher = Field(default_factory=Launcher)
    store: str | None = Field(
        None,
        description="Shared storage the run folder is mirrored to (an fsspec URL: file:///mnt/shared/runs, "
        "s3://bucket/runs): the stage pulls its inputs from it first and pushes its outputs after.",
    )

    @field_validator("overrides")
    @classmethod
    def _kv(cls, v: list[str]) -> list[str]:
        bad = [o for o in v if "=" not in o or o.startswith("=")]
        if bad:
            raise ValueError(f"overrides must be key=value strings (example: seed=1); bad: {bad}")
        return v


PLACEABLE = ("sft", "rl", "evaluate", "report")


class PipelineParams(StageParams):
    """Parameters of the ``sft-to-rl`` flow."""

    arms: list[str] = Field(default_factory=lambda: list(DEFAULT_ARMS), description=f"SFT methods, of {SFT_METHODS}.")
    rl: bool | None = Field(None, description="Run RL from every arm (default: yes, except for a sweep).")
    evaluate: bool = Field(True, description="Evaluate base, arms and RL runs, and write the report.")
    sweep: bool | None = Field(
        None, description="Train the config's sweep arms instead of arms (default: when the config has a sweep)."
    )
    parallel_arms: bool = Field(False, description="Train arms concurrently (only with the resources for it).")
    placement: dict[str, str] = Field(
        default_factory=dict,
        description="Stages run as deployments on other work pools, e.g. {sft: sft/qwen2.5-7b-paper}: stage "
        f"({', '.join(PLACEABLE)}) -> <flow>/<deployment> of that stage's flow; needs a store.",
    )

    @field_validator("placement")
    @classmethod
    def _placement(cls, v: dict[str, str]) -> dict[str, str]:
        for stage, name in v.items():
            if stage not in PLACEABLE:
                raise ValueError(f"placement: stage {stage!r} cannot be placed; choose from {list(PLACEABLE)}")
            flow_name, _, deployment = name.partition("/")
            if flow_name != stage or not deployment:
                raise ValueError(
                    f"placement.{stage}={name!r}: name a deployment of the {stage} flow as {stage}/<deployment> "
                    f"(e.g. {stage}/qwen2.5-7b-paper)"
                )
        return v

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: list[str]) -> list[str]:
        unknown = [a for a in v if a not in SFT_METHODS]
        if unknown or not v:
            raise ValueError(f"arms {unknown or '[]'}: choose one or more of {list(SFT_METHODS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"arms {v} has repeats")
        return v


def resolve(params: StageParams, runs_rl: bool | None = None) -> Config:
    """Load and validate the config before any work; ``runs_rl`` (default: the whole pipeline does) also checks the
    RL stage against the launcher.

    Raises:
        ConfigError: the file, an override or the launcher settings are wrong (the message names which).
    """
    path = Path(params.config)
    if not path.is_absolute() and not path.exists() and (REPO / path).exists():
        path = REPO / path
    cfg = load_config(path, params.overrides)
    deployment_guard(path, cfg)
    if params.store is not None:
        store_guard(params.store)
    placement = getattr(params, "placement", None)
    if placement:
        if params.store is None:
            raise ConfigError(
                f"placement {dict(placement)} needs a store: stages on other machines meet only through shared "
                "storage (store=s3://bucket/runs, or file:///mnt/shared/runs)"
            )
        if len(cfg.seed_list) > 1:
            raise ConfigError(
                f"placement runs one training seed per run; this run has seeds {cfg.seed_list}: start one run per "
                "seed (seeds=[] seed=<s> run_name=<name>-seed<s>)"
            )
        if cfg.sweep and getattr(params, "sweep", None) is not False:
            raise ConfigError("placement does not run a sweep's arms: pass sweep=false and arms, or no placement")
    if params.launcher.num_processes > 1:
        acc = params.launcher.accelerate_config
        if not acc or not (Path(acc).is_file() or (REPO / acc).is_file()):
            raise ConfigError(
                f"launcher.num_processes={params.launcher.num_processes} needs launcher.accelerate_config, an existing "
                f"file such as configs/accelerate/ddp.yaml (got {acc!r})"
            )
        methods = getattr(params, "arms", None) or [cfg.sft.method]
        if cfg.sweep and getattr(params, "sweep", None) is not False:
            methods = [a.method for a in cfg.sweep]
        if runs_rl is None:
            runs_rl = isinstance(params, PipelineParams)
        algorithm = cfg.rl.algorithm if runs_rl else None
        acc_path = acc if Path(acc).is_file() else str(REPO / acc)
        engines.check(engines.engine_from_file(acc_path), acc, methods, algorithm, cfg.sft.rpsft.mode)
    return cfg


def _in_deployment() -> bool:
    from prefect.runtime import deployment

    return bool(deployment.id)


def allowed_roots() -> list[Path]:
    """Where a deployment run may read configs and write: the project, the model cache, and the folders the worker's
    operator lists in SFT2RL_ALLOWED_ROOTS (os.pathsep-separated)."""
    roots = [REPO, Path(os.environ.get("SFT2RL_CACHE_DIR", Path.home() / ".cache" / "sft2rl"))]
    roots += [Path(p) for p in os.environ.get("SFT2RL_ALLOWED_ROOTS", "").split(os.pathsep) if p]
    return [r.expanduser().resolve() for r in roots]


def store_guard(store: str) -> None:
    """A deployment run writes only to the stores its worker's operator lists in SFT2RL_ALLOWED_STORES (URL
    prefixes, comma-separated); a local store (a path or file://) may also sit inside :func:`allowed_roots`.

    Raises:
        ConfigError: naming the store and the variable that allows it.
    """
    if not _in_deployment():
        return
    allowed = [p.strip() for p in os.environ.get("SFT2RL_ALLOWED_STORES", "").split(",") if p.strip()]
    if any(store.startswith(p) for p in allowed):
        return
    local = store[len("file://") :] if store.startswith("file://") else (store if "://" not in store else None)
    if local is not None:
        path = Path(local).expanduser().resolve()
        if any(path == r or r in path.parents for r in allowed_roots()):
            return
    raise ConfigError(
        f"store {store!r} is refused for deployment runs: the worker's operator lists the stores deployments may "
        "write in SFT2RL_ALLOWED_STORES (URL prefixes, comma-separated)"
    )


def deployment_guard(config_path: Path, cfg: Config) -> None:
    """What a deployment parameter may not do: whoever can trigger a deployment must not be able to run code on the
    worker. Remote model code stays off (unless the worker sets SFT2RL_ALLOW_REMOTE_CODE=1), and the config file, the
    run folders and the cache stay inside :func:`allowed_roots`. Runs started by hand (``sft2rl run``) are the
    user's own and are not restricted.

    Raises:
        ConfigError: naming the parameter and the way to allow it on the worker.
    """
    if not _in_deployment():
        return
    if cfg.model.trust_remote_code and os.environ.get("SFT2RL_ALLOW_REMOTE_CODE") != "1":
        raise ConfigError(
            "model.trust_remote_code=true is refused for deployment runs: it would run code from the checkpoint on "
            "this worker. The worker's operator may allow it with SFT2RL_ALLOW_REMOTE_CODE=1"
        )
    roots = allowed_roots()
    for label, raw in (("config", config_path), ("runs_root", cfg.runs_root), ("cache_dir", cfg.cache_dir)):
        path = Path(raw).expanduser()
        path = (path if path.is_absolute() else Path.cwd() / path).resolve()
        if not any(path == r or r in path.parents for r in roots):
            raise ConfigError(
                f"{label}={raw} is outside the folders a deployment run may use ({', '.join(map(str, roots))}); the "
                "worker's operator can add folders with SFT2RL_ALLOWED_ROOTS"
            )


def _params(model: type[StageParams], **kw: Any) -> Any:
    """Build and validate flow parameters; a bad value becomes one ConfigError naming the field."""
    from pydantic import ValidationError

    try:
        return model(**{k: v for k, v in kw.items() if v is not None})
    except ValidationError as e:
        msg = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid flow parameters: {msg}") from None


def _resolved(runs_rl: bool = False, **kw: Any) -> tuple[StageParams, Config]:
    """A stage flow's parameters, validated, and its config, loaded: both before any stage starts."""
    params = _params(StageParams, **kw)
    return params, resolve(params, runs_rl=runs_rl)
