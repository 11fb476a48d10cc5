"""A stage as a Prefect task: its command line (``python -m stages.<name>`` or ``accelerate launch``), the child
process whose output is read into the run log (pipeline/stage_log.py), its progress artifact, and which failures are
retried."""

from __future__ import annotations

import collections
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    update_progress_artifact,
)

from pipeline import shared_store
from pipeline.params import REPO, StageParams
from pipeline.stage_log import PROGRESS, StageLog
from stages import provenance
from stages.config import ConfigError, load_config
from stages.secrets import scrub
from stages.stage_cli import STAGE_MODULES, TRAINING_STAGES, exit_kind
from stages.store import PROGRESS_ENV, PROGRESS_MARK, free_port


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


def stage_command(stage: str, params: StageParams, extra: list[str] | None = None) -> list[str]:
    """The child command of one stage (python -m, or accelerate launch for multi-process training)."""
    args = ["--config", _config_path(params), *(["--force"] if params.force else []), *params.overrides, *(extra or [])]
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
            *_port_args(acc),
            "-m",
            STAGE_MODULES[stage],
            *args,
        ]
    return [sys.executable, "-m", STAGE_MODULES[stage], *args]


def _config_path(params: StageParams) -> str:
    return params.config if Path(params.config).exists() else str(REPO / params.config)


def _port_args(accelerate_config: str) -> list[str]:
    """``--main_process_port`` with a port the OS assigns, for a launch on this machine alone whose accelerate config
    and environment name none: accelerate's default, 29500, is shared by every launch, so two multi-process stages
    starting at once (parallel arms, two runs) would race for it. A port in the config or ``MASTER_PORT`` is kept, and
    a launch across machines needs the port they agreed on."""
    try:
        conf = yaml.safe_load(Path(accelerate_config).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []  # accelerate reads the file itself and names what is wrong with it
    if not isinstance(conf, dict) or conf.get("main_process_port") or os.environ.get("MASTER_PORT"):
        return []
    if str(conf.get("num_machines", 1) or 1) != "1":  # across machines (or unreadable: accelerate will say)
        return []
    return ["--main_process_port", str(free_port())]


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
    mirrored = mirrored_run(params) if params.store is not None else None
    if mirrored:
        shared_store.pull(params.store, *mirrored)  # what stages on other machines wrote
    finished = finished_arm(stage, params, extra)
    if finished is not None:
        get_run_logger().info("%s: %s is complete with this recipe; skipped (force=true redoes it)", label, finished)
    else:
        run_child(stage_command(stage, params, extra), label)
    if mirrored:
        shared_store.push(params.store, *mirrored)
    return label


def finished_arm(stage: str, params: StageParams, extra: list[str] | None = None) -> Path | None:
    """The training arm a stage would find complete and return as it is (:func:`stages.provenance.finished_arm`),
    read with the config its process would load; None when the stage has to run (not a training stage, ``force``, a
    multi-seed config the stage splits itself, a config the stage should be the one to refuse, or an arm to train)."""
    if stage not in TRAINING_STAGES or params.force:
        return None
    try:
        cfg = load_config(_config_path(params), [*params.overrides, *(extra or [])])
    except ConfigError:
        return None
    if len(cfg.seed_list) > 1:
        return None
    return provenance.finished_arm(stage, cfg)


def mirrored_run(params: StageParams) -> tuple[Path, str]:
    """The local run folder a store mirrors (the whole run: every seed's folder is inside it) and its name there."""
    from pipeline.params import resolve

    cfg = resolve(params)
    return cfg.run_dir, cfg.run_name
