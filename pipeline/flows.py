"""Prefect flows: ``sft-to-rl`` (the whole mission) and one flow per stage (``prepare``, ``sft``, ``rl``, ``evaluate``,
``report``).

Orchestration only, no torch here: every stage runs as a child process (``python -m stages.<name>``, or
``accelerate launch`` when ``launcher`` asks for several processes) whose output lines stream into the Prefect run
log. Parameters are pydantic models, validated (config file, overrides, arm names) before any stage starts. Stages
skip work whose outputs are complete, so re-running a flow resumes it; ``force`` recomputes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger

from pipeline.artifacts import _metrics_artifact, report_artifacts
from pipeline.params import DEFAULT_ARMS, REPO, Launcher, PipelineParams, _params, _resolved, resolve
from pipeline.runner import stage_task, tagged
from stages.config import SFT_METHODS, Config, ConfigError, RlAlgorithm, SftMethod, safe_yaml
from stages.stage_cli import DEFAULT_CONFIG
from stages.store import FolderLock, LockedError


def _rl_extra(cfg: Config, arm: str) -> list[str]:
    return [f"rl.init={cfg.layout.arm(arm).checkpoint.resolve()}"]


def _rl_overrides(steps: int | None, learning_rate: float | None, seeds: list[int] | None = None) -> list[str]:
    """The RL settings a user changes most, from their own form fields, as config overrides."""
    out = []
    if steps is not None:
        out.append(f"rl.training.max_steps={steps}")
    if learning_rate is not None:
        out.append(f"rl.training.learning_rate={learning_rate!r}")
    if seeds is not None:
        out.append(f"rl.seeds={json.dumps(list(seeds))}")
    return out


def _run_namer(flow_name: str):
    """Flow runs named ``<run name>/<flow>[/<arm>] [arms] [seeds] <start time>`` (``smollm2-cpu/sft-to-rl sft+l2
    12-05 18:40``; the arms when they are not the default sft and rpsft), so runs of one config tell themselves apart
    in the runs list."""

    def name() -> str:
        from prefect.runtime import flow_run

        params = flow_run.parameters or {}
        run_name = None
        for o in params.get("overrides") or []:
            if isinstance(o, str) and o.startswith("run_name="):
                run_name = o.split("=", 1)[1]
        if run_name is None:
            try:
                path = Path(params.get("config") or DEFAULT_CONFIG)
                path = path if path.is_file() else REPO / path
                run_name = str((safe_yaml(path.read_text()) or {}).get("run_name", path.stem))
            except (OSError, yaml.YAMLError, ConfigError, AttributeError, UnicodeDecodeError):
                run_name = Path(str(params.get("config", "run"))).stem
        extra = params.get("method") or params.get("init_arm")
        name = f"{run_name}/{flow_name}" + (f"/{extra}" if extra else "")
        if params.get("arms") and tuple(params["arms"]) != DEFAULT_ARMS:  # the default pair goes without saying
            name += " " + "+".join(str(a) for a in params["arms"])
        seeds = [o.split("=", 1)[1] for o in params.get("overrides") or [] if str(o).startswith("seeds=")]
        if params.get("seeds") or seeds:
            name += " seeds " + (",".join(str(x) for x in params["seeds"]) if params.get("seeds") else seeds[0])
        from datetime import datetime

        return f"{name} {datetime.now().strftime('%m-%d %H:%M')}"

    return name


@flow(name="sft-to-rl", validate_parameters=True, flow_run_name=_run_namer("sft-to-rl"))
def sft_to_rl(
    config: str = DEFAULT_CONFIG,
    overrides: tuple[str, ...] = (),
    arms: tuple[SftMethod, ...] = DEFAULT_ARMS,
    rl: bool | None = None,
    evaluate: bool = True,
    force: bool = False,
    parallel_arms: bool = False,
    launcher: Launcher = Launcher(),
    seeds: list[int] | None = None,
    sweep: bool | None = None,
    rl_steps: int | None = None,
    rl_learning_rate: float | None = None,
    rl_seeds: list[int] | None = None,
    store: str | None = None,
    placement: dict[str, str] | None = None,
) -> dict[str, Any]:
    """prepare -> SFT arms (default sft and rpsft) -> RL from each arm -> evaluate all -> report; with several
    ``seeds``, arms, RL and evaluation once per training seed and one report that pools them (seeds and items both
    in its intervals from 3 seeds on).

    Args:
        config: Config file (relative to the project folder).
        overrides: Dotted key=value overrides, e.g. ``sft.training.learning_rate=1e-4``.
        arms: SFT methods to train (sft, rpsft, l2, dft, iw, lora); default sft and rpsft.
        rl: Run RL from every arm (default: the config's rl.in_flow, yes unless it says false; for a sweep only when
            set to true).
        evaluate: Evaluate base, arms and RL runs, and write the report.
        force: Recompute stages whose outputs are already complete.
        parallel_arms: Train arms concurrently (only with the resources for it).
        launcher: How training stages start (processes, accelerate config).
        seeds: Training seeds, e.g. [0, 1, 2] (the config's ``seeds``); at least 3 for a verdict about methods.
        sweep: Train the config's ``sweep`` arms (lambda, k, learning-rate grid) instead of ``arms``; default: yes
            when the config has a sweep section. The report then draws the trade-off frontier.
        rl_steps: GRPO/PPO optimizer steps from each arm (the config's rl.training.max_steps).
        rl_learning_rate: RL learning rate (the config's rl.training.learning_rate).
        rl_seeds: The training seeds whose arms get RL, e.g. [0] (the config's rl.seeds; [] means every seed).
        store: Shared storage the run folder is mirrored to (fsspec URL: s3://bucket/runs, file:///mnt/runs); every
            stage pulls its inputs from it and pushes its outputs to it.
        placement: Stages run as deployments on other work pools, e.g. {"sft": "sft/qwen2.5-7b-paper-gpu"} (stage
            -> <flow>/<deployment>); they meet the others only through the store.
    """
    if seeds:
        overrides = [*(overrides or []), f"seeds={json.dumps(list(seeds))}"]
    overrides = [*(overrides or []), *_rl_overrides(rl_steps, rl_learning_rate, rl_seeds)]
    params = _params(
        PipelineParams,
        config=config,
        overrides=overrides,
        arms=arms,
        rl=rl,
        evaluate=evaluate,
        force=force,
        parallel_arms=parallel_arms,
        launcher=launcher,
        sweep=sweep,
        store=store,
        placement=placement,
    )
    cfg = resolve(params)
    try:
        with FolderLock(cfg.run_dir, ".flow.lock"):
            return _pipeline(params, cfg)
    except LockedError as e:
        raise ConfigError(f"run {cfg.run_name!r} is already running: {e}") from None


def _pipeline(params: PipelineParams, cfg: Config) -> dict[str, Any]:
    logger = get_run_logger()
    logger.info(
        "run folder %s; arms %s; rl %s; evaluate %s", cfg.run_dir.resolve(), params.arms, params.rl, params.evaluate
    )
    stage_task("prepare", params, "prepare")
    use_sweep = params.sweep if params.sweep is not None else bool(cfg.sweep)
    if use_sweep and not cfg.sweep:
        raise ConfigError("sweep=true but the config has no sweep section (see configs/smollm2-cpu-sweep.yaml)")
    # (arm folder, the stage's extra overrides): the flow's arms, or the config's sweep
    arms = (
        [(a.arm, a.as_overrides()) for a in cfg.sweep] if use_sweep else [(a, [f"sft.method={a}"]) for a in params.arms]
    )
    arm_names = [a for a, _ in arms]
    # a sweep is about SFT, and a config may say it is (rl.in_flow: false): RL then only when the run asks for it
    run_rl = params.rl if params.rl is not None else (cfg.rl.in_flow and not use_sweep)
    if use_sweep:
        logger.info("sweep: %d arms %s", len(arms), arm_names)
    if not run_rl:
        why = (
            "rl=false"
            if params.rl is False
            else ("a sweep compares SFT arms" if use_sweep else "the config sets rl.in_flow: false")
            + " (rl=true adds RL)"
        )
        logger.info("no RL stage: %s", why)
    seeds = cfg.seed_list
    if len(seeds) > 1:
        logger.info("%d training seeds %s: one run per seed in %s", len(seeds), seeds, cfg.layout.seeds_dir)
    for seed in seeds:
        # every arm, its RL run and the evaluation once per training seed; one report pools them
        so = cfg.seed_overrides(seed)
        scfg = cfg.for_seed(seed)
        tag = f"@seed{seed}" if so else ""
        if params.parallel_arms:
            futures = []
            for a, extra in arms:
                with tagged("sft", a, seed):
                    futures.append(stage_task.submit("sft", params, f"sft[{a}{tag}]", [*so, *extra]))
            for f in futures:
                f.result()
        else:
            for arm, extra in arms:
                with tagged("sft", arm, seed):
                    _stage("sft", params, f"sft[{arm}{tag}]", [*so, *extra], method=arm)
        for arm in arm_names:
            _metrics_artifact(scfg, arm, f"SFT arm {arm}{tag}")
        if run_rl and cfg.rl_for_seed(seed):
            for arm in arm_names:
                with tagged("rl", arm, seed):
                    _stage("rl", params, f"rl[{arm}{tag}]", [*so, *_rl_extra(scfg, arm)], init_arm=arm)
                _metrics_artifact(scfg, f"rl-{arm}", f"RL from {arm}{tag}")
        elif run_rl:
            logger.info(
                "seed %s: no RL stage: rl.seeds=%s lists the training seeds RL runs from (RL rows of the report are "
                "compared with SFT rows of those seeds only)",
                seed,
                cfg.rl.seeds,
            )
        if params.evaluate:
            with tagged("evaluate", seed=seed):
                _stage("evaluate", params, f"evaluate{tag}", so)
    out: dict[str, Any] = {"run_dir": str(cfg.run_dir.resolve())}
    if params.evaluate:
        _stage("report", params, "report")
        report_artifacts(cfg)
        out["report"] = str(cfg.layout.report_md.resolve())
    return out


def _stage(stage: str, params: PipelineParams, label: str, extra: list[str] | None = None, **flow_args: Any) -> None:
    """One stage of the pipeline: here, as a child process, or, when ``placement`` names a deployment for it, as that
    deployment's flow run on its work pool (a subflow of this run in the UI), meeting this run only through the
    store; what it wrote is then pulled here."""
    name = params.placement.get(stage)
    if not name:
        stage_task(stage, params, label, extra)
        return
    from prefect.deployments import run_deployment

    from pipeline.runner import StageFailed, mirrored_run
    from pipeline.shared_store import pull

    parameters: dict[str, Any] = {"config": params.config, "overrides": list(params.overrides), **flow_args}
    parameters["store"] = params.store
    if stage != "report":
        parameters["force"] = params.force
    if stage in ("sft", "rl"):
        parameters["launcher"] = params.launcher.model_dump()
    get_run_logger().info("%s: running deployment %s (its work pool places it)", label, name)
    # the state is read every second (Prefect's default is 5 s): the next stage starts as soon as this one ends
    run = run_deployment(name=name, parameters=parameters, timeout=None, poll_interval=1)
    state = run.state
    if state is None or not state.is_completed():
        why = f"{state.name}: {state.message}" if state else "no state"
        raise StageFailed(f"{label}: deployment {name} ended {why} (its flow run {run.id} has the log)")
    pull(params.store, *mirrored_run(params))


@flow(name="prepare", validate_parameters=True, flow_run_name=_run_namer("prepare"))
def prepare_flow(
    config: str = DEFAULT_CONFIG, overrides: tuple[str, ...] = (), force: bool = False, store: str | None = None
) -> str:
    """Prepare the initial model (convert and cache it once).

    Args:
        config: Config file (relative to the project folder), e.g. configs/smollm2-cpu.yaml.
        overrides: Dotted key=value overrides, e.g. seed=1 or sft.training.learning_rate=1e-4.
        force: Recompute outputs that are already complete.
        store: Shared storage the run folder is mirrored to (fsspec URL): inputs pulled first, outputs pushed after.
    """
    params, cfg = _resolved(config=config, overrides=overrides, force=force, store=store)
    stage_task("prepare", params, "prepare")
    return str(cfg.layout.prepare_dir.resolve())


@flow(name="sft", validate_parameters=True, flow_run_name=_run_namer("sft"))
def sft_flow(
    config: str = DEFAULT_CONFIG,
    method: SftMethod = "rpsft",
    overrides: tuple[str, ...] = (),
    force: bool = False,
    launcher: Launcher = Launcher(),
    store: str | None = None,
) -> str:
    """Train one SFT arm (sft, rpsft, l2, dft, iw or lora).

    Args:
        config: Config file (relative to the project folder), e.g. configs/smollm2-cpu.yaml.
        method: The SFT method: sft, rpsft (rotation-preserving), l2 (L2 to init), dft, iw or lora.
        overrides: Dotted key=value overrides, e.g. sft.rpsft.lambda=10.
        force: Retrain even if the arm is complete.
        launcher: How the stage starts (processes, accelerate config).
        store: Shared storage the run folder is mirrored to (fsspec URL): inputs pulled first, outputs pushed after.
    """
    if method not in SFT_METHODS:
        raise ConfigError(f"method {method!r}: choose one of {list(SFT_METHODS)}")
    params, cfg = _resolved(config=config, overrides=overrides, force=force, launcher=launcher, store=store)
    stage_task("sft", params, f"sft[{method}]", [f"sft.method={method}"])
    _metrics_artifact(cfg, method, f"SFT arm {method}")
    return str(cfg.layout.arm(method).dir.resolve())


@flow(name="rl", validate_parameters=True, flow_run_name=_run_namer("rl"))
def rl_flow(
    config: str = DEFAULT_CONFIG,
    init_arm: str = "rpsft",
    algorithm: RlAlgorithm | None = None,
    overrides: tuple[str, ...] = (),
    force: bool = False,
    launcher: Launcher = Launcher(),
    steps: int | None = None,
    learning_rate: float | None = None,
    store: str | None = None,
) -> str:
    """RL (the config's rl section) from a finished SFT arm of the same run.

    Args:
        config: Config file (relative to the project folder), e.g. configs/smollm2-cpu.yaml.
        init_arm: The finished SFT arm of this run to start from (its folder name: a method such as rpsft, or a
            sweep arm such as rpsft-l10-k0.25).
        algorithm: grpo or ppo; default: the config's rl.algorithm.
        overrides: Dotted key=value overrides, e.g. rl.training.max_steps=20.
        force: Rerun even if this RL run is complete.
        launcher: How the stage starts (processes, accelerate config).
        steps: RL optimizer steps (the config's rl.training.max_steps).
        learning_rate: RL learning rate (the config's rl.training.learning_rate).
        store: Shared storage the run folder is mirrored to (fsspec URL): inputs pulled first, outputs pushed after.
    """
    if algorithm is not None:
        overrides = [*(overrides or []), f"rl.algorithm={algorithm}"]
    overrides = [*(overrides or []), *_rl_overrides(steps, learning_rate)]
    params, cfg = _resolved(
        config=config, overrides=overrides, force=force, launcher=launcher, runs_rl=True, store=store
    )
    if params.store is not None:  # the arm may have been trained on another machine
        from pipeline.runner import mirrored_run
        from pipeline.shared_store import pull

        pull(params.store, *mirrored_run(params))
    if not cfg.layout.arm(init_arm).done.is_file():
        raise ConfigError(
            f"init_arm {init_arm!r} has no finished SFT checkpoint in {cfg.run_dir}: run the sft flow with "
            f"method={init_arm} first"
        )
    stage_task("rl", params, f"rl[{init_arm}]", _rl_extra(cfg, init_arm))
    _metrics_artifact(cfg, f"rl-{init_arm}", f"RL from {init_arm}")
    return str(cfg.layout.arm(f"rl-{init_arm}").dir.resolve())


@flow(name="evaluate", validate_parameters=True, flow_run_name=_run_namer("evaluate"))
def evaluate_flow(
    config: str = DEFAULT_CONFIG, overrides: tuple[str, ...] = (), force: bool = False, store: str | None = None
) -> str:
    """Evaluate base, SFT arms and RL runs of one run folder.

    Args:
        config: Config file (relative to the project folder), e.g. configs/smollm2-cpu.yaml.
        overrides: Dotted key=value overrides, e.g. seed=1 or sft.training.learning_rate=1e-4.
        force: Recompute outputs that are already complete.
        store: Shared storage the run folder is mirrored to (fsspec URL): inputs pulled first, outputs pushed after.
    """
    params, cfg = _resolved(config=config, overrides=overrides, force=force, store=store)
    stage_task("evaluate", params, "evaluate")
    return str(cfg.layout.eval_dir.resolve())


@flow(name="report", validate_parameters=True, flow_run_name=_run_namer("report"))
def report_flow(config: str = DEFAULT_CONFIG, overrides: tuple[str, ...] = (), store: str | None = None) -> str:
    """Write the comparison report and register it as artifacts.

    Args:
        config: Config file (relative to the project folder), e.g. configs/smollm2-cpu.yaml.
        overrides: Dotted key=value overrides, e.g. "seeds=[0,1,2]" to pool a multi-seed run.
        store: Shared storage the run folder is mirrored to (fsspec URL): inputs pulled first, outputs pushed after.
    """
    params, cfg = _resolved(config=config, overrides=overrides, store=store)
    stage_task("report", params, "report")
    report_artifacts(cfg)
    return str(cfg.layout.report_md.resolve())


FLOWS = {
    "sft-to-rl": sft_to_rl,
    "prepare": prepare_flow,
    "sft": sft_flow,
    "rl": rl_flow,
    "evaluate": evaluate_flow,
    "report": report_flow,
}
