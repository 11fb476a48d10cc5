"""The ``sft2rl`` command line. Orchestration only: stages run as child processes (no torch import here).

sft2rl run --config configs/smollm2-cpu.yaml [key=value ...]   the whole flow (prepare, SFT arms, RL, eval, report)
sft2rl stage sft --config configs/tiny.yaml method=rpsft       one stage alone, no Prefect
sft2rl server [--background | --stop]                          a local Prefect server on 127.0.0.1
sft2rl serve [--config FILE ...]                               serve the deployments of the shipped configs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from stages.layout import RunLayout
from stages.stage_cli import DEFAULT_CONFIG
from stages.stage_cli import STAGE_MODULES as STAGES

REPO = Path(__file__).resolve().parents[1]


def run_stage(name: str, argv: list[str]) -> int:
    """Run ``python -m stages.<name> ARGV`` in a child process (memory returns to the OS between stages).

    SIGTERM, SIGHUP and SIGINT sent to this process are passed on to the stage, so stopping ``sft2rl stage`` stops
    the training too (no orphan keeps running and holding the arm); the stage's exit code is returned.
    """
    import signal

    proc = subprocess.Popen([sys.executable, "-m", STAGES[name], *argv], env=dict(os.environ))

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    handled = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        return proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def shipped_configs() -> list[Path]:
    return sorted((REPO / "configs").glob("*.yaml"))


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline import server
    from stages.config import ConfigError

    server.configure(port=args.port, api=not args.no_server)
    overrides = list(args.overrides)
    # Validate everything before a server starts or a stage runs.
    from pipeline.params import Launcher, PipelineParams, _params, resolve

    try:
        launcher = Launcher(num_processes=args.num_processes, accelerate_config=args.accelerate_config)
        params = _params(
            PipelineParams,
            config=args.config,
            overrides=overrides,
            arms=args.arms,
            rl=False if args.no_rl else None,
            evaluate=not args.no_eval,
            force=args.force,
            launcher=launcher,
            store=args.store,
            placement=dict(_placement(x) for x in args.place),
        )
        cfg = resolve(params)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.no_server:
        try:
            api, started = server.start_background()
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(
            f"Prefect UI: {server.ui_url(api)}"
            + (" (started in the background; stop: sft2rl server --stop)" if started else "")
        )
        _serve_files(cfg.runs_root)
    from pipeline.flows import sft_to_rl

    state = sft_to_rl(
        config=params.config,
        overrides=params.overrides,
        arms=params.arms,
        rl=params.rl,
        evaluate=params.evaluate,
        force=params.force,
        launcher=params.launcher,
        store=params.store,
        placement=params.placement,
        return_state=True,
    )
    run_id = state.state_details.flow_run_id
    run_dir = cfg.run_dir.resolve()
    print(f"run folder: {run_dir}")
    if not args.no_server:
        print(f"flow run:   {server.ui_url()}/runs/flow-run/{run_id}")
    if state.is_completed():
        if (md := RunLayout(run_dir).report_md).is_file():
            print(f"report:     {md}  (also report.html, report.json, plots/)")
        return 0
    print(f"error: the flow ended {state.name}: {state.message}", file=sys.stderr)
    return 1


def _placement(text: str) -> tuple[str, str]:
    stage, sep, name = text.partition("=")
    if not sep:
        raise ValueError(f"--place {text!r}: write STAGE=FLOW/DEPLOYMENT, e.g. --place sft=sft/qwen2.5-7b-paper")
    return stage.strip(), name.strip()


def _serve_files(runs_root: str) -> None:
    """The read-only file server for the runs folder (plots and reports in the UI); a warning if it cannot start."""
    from pipeline import files

    try:
        print(f"Run files:  {files.start_background(runs_root)}/  (read-only, 127.0.0.1)")
    except RuntimeError as e:
        print(f"warning: {e}; the UI will show file:// links instead of plots", file=sys.stderr)


def cmd_server(args: argparse.Namespace) -> int:
    from pipeline import files, server

    server.configure(port=args.port, host=args.host)
    if args.stop:
        files.stop_background()
        print("stopped" if server.stop_background() else "no background server recorded in PREFECT_HOME")
        return 0
    if args.background:
        api, started = server.start_background()
        print(f"Prefect UI: {server.ui_url(api)} ({'started' if started else 'already running'}); API: {api}")
        _serve_files(args.runs_root)
        return 0
    print(f"Prefect UI: {server.ui_url()}  (Ctrl-C stops it; PREFECT_HOME={os.environ['PREFECT_HOME']})", flush=True)
    _serve_files(args.runs_root)
    try:
        return subprocess.call(server.server_command())
    finally:
        files.stop_background()


def variant_of(config: Path, configs: list[Path]) -> str | None:
    """The config ``config`` varies, by name: ``smollm2-cpu-sweep.yaml`` and ``smollm2-cpu-claims.yaml`` vary
    ``smollm2-cpu.yaml`` (same model, data and recipe; another grid of arms or more seeds) when that file is among
    ``configs``. None for a config of its own."""
    stems = {c.stem for c in configs}
    return next((s for s in sorted(stems, key=len, reverse=True) if config.stem.startswith(f"{s}-")), None)


def deployments(configs: list[Path]):
    """Deployments of the configs, named after the config file (``sft-to-rl/<config name>``): every flow for a config
    of its own; only the whole pipeline for a variant (:func:`variant_of`), whose single stages are its base config's,
    so the list names each stage once per recipe."""
    from pipeline.flows import FLOWS

    out = []
    for c in configs:
        rel = str(c.resolve().relative_to(REPO)) if c.resolve().is_relative_to(REPO) else str(c.resolve())
        about, tags = deployment_meta(c)
        flows = [FLOWS["sft-to-rl"]] if variant_of(c, configs) else list(FLOWS.values())
        for flow_ in flows:
            what = " ".join((flow_.description or flow_.name).strip().split("\n\n")[0].split())
            parameters: dict = {"config": rel}
            if "gpu" in tags and "launcher" in flow_.parameters.properties:
                parameters["launcher"] = gpu_launcher()
            out.append(
                flow_.to_deployment(
                    name=c.stem,
                    parameters=parameters,
                    description=f"{what}\n\nConfig {rel}: {about}",
                    tags=tags,
                )
            )
    return out


GPU_LAUNCHER = "configs/accelerate/zero2.yaml"


def gpu_launcher() -> dict:
    """How a GPU config's training stages start when deployed: the paper's engine (DeepSpeed ZeRO-2, every arm) on
    as many processes as its accelerate file names; a run form can change both."""
    from accelerate.commands.config.config_args import load_config_from_file

    return {
        "num_processes": int(load_config_from_file(str(REPO / GPU_LAUNCHER)).num_processes),
        "accelerate_config": GPU_LAUNCHER,
    }


def deployment_meta(config: Path) -> tuple[str, list[str]]:
    """What a deployment's config is, from the config itself: its header comment's first sentence, and tags a user
    can filter by (``sft2rl``, ``config:<name>``, ``model:<source>``, ``gpu`` or ``cpu``)."""
    from stages.config import safe_yaml

    text = config.read_text()
    header = " ".join(line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#"))
    about = header.split(". ")[0].rstrip(".") + "." if header else "(no header comment)"
    raw = safe_yaml(text) or {}
    model = (raw.get("model") or {}).get("source", "smollm2-gguf")
    device = "gpu" if raw.get("device") == "cuda" else "cpu"
    return about, ["sft2rl", f"config:{config.stem}", f"model:{model}", device]


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline import server

    server.configure(port=args.port)
    api = os.environ["PREFECT_API_URL"]
    if not server.healthy(api):
        print(
            f"error: no Prefect server answers at {api}: start one with 'sft2rl server --background'", file=sys.stderr
        )
        return 2
    configs = [Path(c) for c in args.config] or shipped_configs()
    missing = [str(c) for c in configs if not c.is_file()]
    if missing:
        print(f"error: config files not found: {missing}", file=sys.stderr)
        return 2
    os.chdir(REPO)  # deployments resolve config paths against the project folder
    from prefect import serve

    deps = deployments(configs)
    print(
        f"serving {len(deps)} deployments at {server.ui_url(api)}/deployments: "
        + ", ".join(sorted({f"sft-to-rl/{c.stem}" for c in configs})),
        flush=True,
    )
    serve(*deps, limit=args.limit, print_starting_message=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sft2rl",
        description="SFT vs RPSFT (rotation-preserving SFT), then RL, evaluation and a comparison report.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser(
        "run",
        help="run the whole sft-to-rl flow on a config",
        description="prepare -> SFT arms -> RL from each arm -> evaluate -> report, as a Prefect "
        "flow run (a local server is started in the background unless PREFECT_API_URL answers).",
    )
    p_run.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: %(default)s)")
    p_run.add_argument(
        "--arms",
        type=lambda v: [a for a in v.split(",") if a],
        default=None,
        help="comma-separated SFT methods to train (default: sft,rpsft)",
    )
    p_run.add_argument("--no-rl", action="store_true", help="skip the RL stage")
    p_run.add_argument("--no-eval", action="store_true", help="skip evaluation and the report")
    p_run.add_argument("--force", action="store_true", help="recompute stages whose outputs are complete")
    p_run.add_argument("--no-server", action="store_true", help="do not start a local Prefect server")
    p_run.add_argument("--port", type=int, default=None, help="local server port (default 4200)")
    p_run.add_argument("--num-processes", type=int, default=1, help="processes per training stage (accelerate)")
    p_run.add_argument("--accelerate-config", default=None, help="configs/accelerate/*.yaml for --num-processes > 1")
    p_run.add_argument(
        "--store", default=None, help="shared storage the run folder is mirrored to (fsspec URL, e.g. s3://bucket/runs)"
    )
    p_run.add_argument(
        "--place",
        action="append",
        default=[],
        metavar="STAGE=FLOW/DEPLOYMENT",
        help="run a stage (sft, rl, evaluate, report) as that deployment on its work pool; needs --store (repeatable)",
    )
    p_run.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. sft.training.max_steps=5")
    p_run.set_defaults(func=cmd_run)

    p_stage = sub.add_parser(
        "stage",
        help="run one stage alone (no Prefect)",
        description="Run one stage alone: sft2rl stage <name> --config FILE [key=value ...]",
    )
    p_stage.add_argument("name", choices=sorted(STAGES), help="stage to run")
    p_stage.add_argument("args", nargs=argparse.REMAINDER, help="--config FILE [--force] [key=value ...]")

    p_prep = sub.add_parser("prepare", help="prepare the initial model (same as: stage prepare)", add_help=False)
    p_prep.add_argument("args", nargs=argparse.REMAINDER, help="--config FILE [key=value ...]")

    p_srv = sub.add_parser(
        "server",
        help="start a local Prefect server on 127.0.0.1",
        description="A local Prefect server (SQLite in ./.prefect, analytics off, 127.0.0.1).",
    )
    p_srv.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s: this machine only)")
    p_srv.add_argument("--port", type=int, default=None, help="port (default 4200)")
    g = p_srv.add_mutually_exclusive_group()
    g.add_argument("--background", action="store_true", help="start detached and return once it is healthy")
    g.add_argument("--stop", action="store_true", help="stop the background server")
    p_srv.add_argument(
        "--runs-root", default="runs", help="folder served read-only for the UI's plots and links (default: runs)"
    )
    p_srv.set_defaults(func=cmd_server)

    p_serve = sub.add_parser(
        "serve",
        help="serve the flow deployments of the shipped configs",
        description="Serve deployments sft-to-rl/<config>, prepare/<config>, sft/<config>, "
        "rl/<config>, evaluate/<config>, report/<config> from this process.",
    )
    p_serve.add_argument("--config", action="append", default=[], help="config file (repeat; default: configs/*.yaml)")
    p_serve.add_argument("--port", type=int, default=None, help="local server port (default 4200)")
    p_serve.add_argument("--limit", type=int, default=1, help="flow runs at once (default %(default)s)")
    p_serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Options after the stage name (--config, --force, --help) belong to the stage: pass them through unparsed.
    if argv and argv[0] in ("stage", "prepare"):
        args, passthrough = parser.parse_known_args(argv)
        if args.command == "stage":
            return run_stage(args.name, [*passthrough, *args.args])
        return run_stage("prepare", [*passthrough, *args.args])
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
