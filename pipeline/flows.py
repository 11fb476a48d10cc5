"""Prefect flows: ``sft-to-rl`` (the whole mission) and one flow per stage (``prepare``, ``sft``, ``rl``, ``evaluate``,
``report``).

Orchestration only, no torch here: every stage runs as a child process (``python -m stages.<name>``, or
``accelerate launch`` when ``launcher`` asks for several processes) whose output lines stream into the Prefect run
log. Parameters are pydantic models, validated (config file, overrides, arm names) before any stage starts. Stages
skip work whose outputs are complete, so re-running a flow resumes it; ``force`` recomputes.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from pydantic import BaseModel, Field, field_validator

from pipeline.stage_log import PROGRESS, StageLog
from stages import engines
from stages.config import SFT_METHODS, Config, ConfigError, RlAlgorithm, SftMethod, load_config, safe_yaml
from stages.io import PROGRESS_ENV, PROGRESS_MARK, FolderLock, LockedError
from stages.layout import RunLayout
from stages.secrets import scrub
from stages.stage_cli import DEFAULT_CONFIG, STAGE_MODULES, TRAINING_STAGES, exit_kind

REPO = Path(__file__).resolve().parents[1]


class StageFailed(RuntimeError):
    """A stage's child process exited non-zero; the message holds its exit code and last output lines."""

    def __init__(self, message: str, rc: int | None = None):
        super().__init__(message)
        self.rc = rc

    @property
    def transient(self) -> bool:
        """A crash (killed by a signal, the OOM killer, an uncaught error), not a refusal: bad input (2), a
        numerical fault (3), no disk (4) and an interrupt (130) would fail the same way again."""
        return self.rc is not None and exit_kind(self.rc) == "crash"


def retry_transient(task, task_run, state) -> bool:
    """Prefect's retry condition for stages: retry a crashed stage once (it resumes from its last trainer
    checkpoint); never a stage that refused its input or hit a numerical or disk fault."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - an unreadable result is not worth a retry
        return False
    return isinstance(exc, StageFailed) and exc.transient


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

    @field_validator("overrides")
    @classmethod
    def _kv(cls, v: list[str]) -> list[str]:
        bad = [o for o in v if "=" not in o or o.startswith("=")]
        if bad:
            raise ValueError(f"overrides must be key=value strings (example: seed=1); bad: {bad}")
        return v


class PipelineParams(StageParams):
    """Parameters of the ``sft-to-rl`` flow."""

    arms: list[str] = Field(default_factory=lambda: ["sft", "rpsft"], description=f"SFT methods, of {SFT_METHODS}.")
    rl: bool | None = Field(None, description="Run RL from every arm (default: yes, except for a sweep).")
    evaluate: bool = Field(True, description="Evaluate base, arms and RL runs, and write the report.")
    sweep: bool | None = Field(
        None, description="Train the config's sweep arms instead of arms (default: when the config has a sweep)."
    )
    parallel_arms: bool = Field(False, description="Train arms concurrently (only with the resources for it).")

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


def stage_command(stage: str, params: StageParams, extra: list[str] | None = None) -> list[str]:
    """The child command of one stage (python -m, or accelerate launch for multi-process training)."""
    cfg_path = params.config if Path(params.config).exists() else str(REPO / params.config)
    args = ["--config", cfg_path, *(["--force"] if params.force else []), *params.overrides, *(extra or [])]
    if stage in TRAINING_STAGES and params.launcher.num_processes > 1:
        acc = params.launcher.accelerate_config
        acc = acc if Path(acc).is_file() else str(REPO / acc)
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            acc,
            "--num_processes",
            str(params.launcher.num_processes),
            "-m",
            STAGE_MODULES[stage],
            *args,
        ]
    return [sys.executable, "-m", STAGE_MODULES[stage], *args]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env[PROGRESS_ENV] = "1"  # the stage prints its progress lines for the progress artifact
    root = str(REPO)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def split_glued(line: str) -> list[str]:
    """A stage's message printed while a progress bar was drawn shares its line (``' 74%|...| 59/80 [..]error: not
    enough disk ...'``, or the stage's own progress mark): split it off, so it is read as the stage's line."""
    for mark in ("error: ", "Traceback (most recent call last)", PROGRESS_MARK):
        pos = line.find(mark)
        if pos > 0 and PROGRESS.search(line[:pos]):
            return [line[:pos], line[pos:]]
    return [line]


class StageProgress:
    """The stage's progress lines (``sft2rl-progress 12/80 optimizer steps``) as one Prefect progress artifact per
    task run, updated as the stage runs (at most once per percent)."""

    def __init__(self, label: str):
        self.label = label
        self.artifact_id = None
        self.shown = -1.0
        self.total: tuple[str, str] | None = None  # (count, what) of the last progress line

    def update(self, line: str) -> None:
        m = re.match(rf"{PROGRESS_MARK} (\d+)/(\d+) ?(.*)", line)
        if not m or int(m.group(2)) <= 0:
            return
        self.total = (m.group(2), m.group(3))
        pct = min(100.0, round(100.0 * int(m.group(1)) / int(m.group(2)), 0))
        if pct == self.shown:
            return
        self.shown = pct
        what = f"{self.label}: {m.group(1)}/{m.group(2)} {m.group(3)}".strip()
        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(progress=pct, description=what)
            else:
                update_progress_artifact(self.artifact_id, progress=pct, description=what)
        except Exception as e:  # noqa: BLE001 - progress display must never fail a stage
            get_run_logger().debug("progress artifact not updated: %s", e)

    def finish(self) -> None:
        """A stage that completed is done: its artifact shows 100% (of its own count, ``80/80 optimizer steps``)
        whatever its last progress line said."""
        if self.artifact_id is not None and self.shown < 100 and self.total is not None:
            self.shown = -1.0
            total, what = self.total
            self.update(f"{PROGRESS_MARK} {total}/{total} {what} (done)".rstrip())


def run_child(cmd: list[str], label: str) -> None:
    """Run a stage process; stream its output lines to the run log as :class:`pipeline.stage_log.StageLog` decides
    (each line once, at its level; progress, trainer metrics and known-harmless warnings thinned or at DEBUG); raise
    StageFailed naming the cause (the stage's own error line) on failure."""
    logger = get_run_logger()
    logger.info("%s: %s", label, scrub(shlex.join(cmd)))
    tail: collections.deque[str] = collections.deque(maxlen=25)
    errors: list[str] = []
    relay = StageLog(label)
    progress = StageProgress(label)
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=_child_env(), cwd=os.getcwd()
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            # Progress bars redraw with carriage returns and cursor moves: keep the last state of the line only.
            for line in split_glued(scrub(_ANSI.sub("", raw.rstrip("\n").rsplit("\r", 1)[-1]))):
                if not line.strip():
                    continue
                if line.startswith(PROGRESS_MARK):  # the stage's own progress: the task's progress artifact
                    progress.update(line)
                    continue
                tail.append(line)
                if line.startswith("error:"):
                    errors.append(line)
                shown = relay.relay(line)
                if shown is not None:
                    logger.log(shown[0], "%s", shown[1])
        rc = proc.wait()
    if rc == 0:
        progress.finish()
    if rc != 0:
        kind = exit_kind(rc)
        cause = errors[-1].removeprefix("error: ") if errors else (tail[-1] if tail else "no output")
        raise StageFailed(f"stage {label} failed (exit {rc}, {kind}): {cause}\nLast output:\n" + "\n".join(tail), rc=rc)


def tagged(stage: str, arm: str | None = None, seed: int | None = None):
    """Tags a user filters task runs by: ``stage:sft``, ``arm:rpsft``, ``seed:0``."""
    from prefect import tags

    return tags(f"stage:{stage}", *([f"arm:{arm}"] if arm else []), *([f"seed:{seed}"] if seed is not None else []))


@task(name="stage", task_run_name="{label}", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient)
def stage_task(stage: str, params: StageParams, label: str, extra: list[str] | None = None) -> str:
    run_child(stage_command(stage, params, extra), label)
    return label


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


def _run_namer(flow_name: str):
    """Flow runs named ``<run name>/<flow>[/<arm>] [arms] [seeds] <start time>`` (``smollm2-cpu/sft-to-rl sft+rpsft
    12-05 18:40``), so runs of one config tell themselves apart in the runs list."""

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
        if params.get("arms"):
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
    arms: tuple[SftMethod, ...] = ("sft", "rpsft"),
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
) -> dict[str, Any]:
    """prepare -> SFT arms (default sft and rpsft) -> RL from each arm -> evaluate all -> report; with several
    ``seeds``, arms, RL and evaluation once per training seed and one report that pools them (seeds and items both
    in its intervals from 3 seeds on).

    Args:
        config: Config file (relative to the project folder).
        overrides: Dotted key=value overrides, e.g. ``sft.training.learning_rate=1e-4``.
        arms: SFT methods to train (sft, rpsft, l2, dft, iw, lora); default sft and rpsft.
        rl: Run RL from every arm (default: yes; for a sweep only when set to true).
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
    run_rl = params.rl if params.rl is not None else not use_sweep  # a sweep is about SFT; RL only when asked
    if use_sweep:
        logger.info("sweep: %d arms %s", len(arms), arm_names)
    if not run_rl:
        logger.info("no RL stage: " + ("a sweep compares SFT arms (rl=true adds RL)" if use_sweep else "rl=false"))
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
                    stage_task("sft", params, f"sft[{arm}{tag}]", [*so, *extra])
        for arm in arm_names:
            _metrics_artifact(scfg, arm, f"SFT arm {arm}{tag}")
        if run_rl and cfg.rl_for_seed(seed):
            for arm in arm_names:
                with tagged("rl", arm, seed):
                    stage_task("rl", params, f"rl[{arm}{tag}]", [*so, *_rl_extra(scfg, arm)])
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
                stage_task("evaluate", params, f"evaluate{tag}", so)
    out: dict[str, Any] = {"run_dir": str(cfg.run_dir.resolve())}
    if params.evaluate:
        stage_task("report", params, "report")
        report_artifacts(cfg)
        out["report"] = str(cfg.layout.report_md.resolve())
    return out


@flow(name="prepare", validate_parameters=True, flow_run_name=_run_namer("prepare"))
def prepare_flow(config: str = DEFAULT_CONFIG, overrides: tuple[str, ...] = (), force: bool = False) -> str:
    """Prepare the initial model (convert and cache it once).

    Args:
        config: Config file (relative to the project folder), e.g. configs/smollm2-cpu.yaml.
        overrides: Dotted key=value overrides, e.g. seed=1 or sft.training.learning_rate=1e-4.
        force: Recompute outputs that are already complete.
    """
    params, cfg = _resolved(config=config, overrides=overrides, force=force)
    stage_task("prepare", params, "prepare")
    return str(cfg.layout.prepare_dir.resolve())


@flow(name="sft", validate_parameters=True, flow_run_name=_run_namer("sft"))
def sft_flow(
    config: str = DEFAULT_CONFIG,
    method: SftMethod = "rpsft",
    overrides: tuple[str, ...] = (),
    force: bool = False,
    launcher: Launcher = Launcher(),
) -> str:
    """Train one SFT arm (sft, rpsft, l2, dft, iw or lora).

    Args:
        config: Config file (relative to the project folder), e.g. configs/smollm2-cpu.yaml.
        method: The SFT method: sft, rpsft (rotation-preserving), l2 (L2 to init), dft, iw or lora.
        overrides: Dotted key=value overrides, e.g. sft.rpsft.lambda=10.
        force: Retrain even if the arm is complete.
        launcher: How the stage starts (processes, accelerate config).
    """
    if method not in SFT_METHODS:
        raise ConfigError(f"method {method!r}: choose one of {list(SFT_METHODS)}")
    params, cfg = _resolved(config=config, overrides=overrides, force=force, launcher=launcher)
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
    """
    if algorithm is not None:
        overrides = [*(overrides or []), f"rl.algorithm={algorithm}"]
    overrides = [*(overrides or []), *_rl_overrides(steps, learning_rate)]
    params, cfg = _resolved(config=config, overrides=overrides, force=force, launcher=launcher, runs_rl=True)
    if not cfg.layout.arm(init_arm).done.is_file():
        raise ConfigError(
            f"init_arm {init_arm!r} has no finished SFT checkpoint in {cfg.run_dir}: run the sft flow with "
            f"method={init_arm} first"
        )
    stage_task("rl", params, f"rl[{init_arm}]", _rl_extra(cfg, init_arm))
    _metrics_artifact(cfg, f"rl-{init_arm}", f"RL from {init_arm}")
    return str(cfg.layout.arm(f"rl-{init_arm}").dir.resolve())


@flow(name="evaluate", validate_parameters=True, flow_run_name=_run_namer("evaluate"))
def evaluate_flow(config: str = DEFAULT_CONFIG, overrides: tuple[str, ...] = (), force: bool = False) -> str:
    """Evaluate base, SFT arms and RL runs of one run folder.

    Args:
        config: Config file (relative to the project folder), e.g. configs/smollm2-cpu.yaml.
        overrides: Dotted key=value overrides, e.g. seed=1 or sft.training.learning_rate=1e-4.
        force: Recompute outputs that are already complete.
    """
    params, cfg = _resolved(config=config, overrides=overrides, force=force)
    stage_task("evaluate", params, "evaluate")
    return str(cfg.layout.eval_dir.resolve())


@flow(name="report", validate_parameters=True, flow_run_name=_run_namer("report"))
def report_flow(config: str = DEFAULT_CONFIG, overrides: tuple[str, ...] = ()) -> str:
    """Write the comparison report and register it as artifacts.

    Args:
        config: Config file (relative to the project folder), e.g. configs/smollm2-cpu.yaml.
        overrides: Dotted key=value overrides, e.g. "seeds=[0,1,2]" to pool a multi-seed run.
    """
    params, cfg = _resolved(config=config, overrides=overrides)
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
