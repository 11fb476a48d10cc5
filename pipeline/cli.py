"""The ``sft2rl`` command line. Orchestration only: stages run as child processes (no torch import here).

sft2rl prepare --config configs/smollm2-cpu.yaml
sft2rl stage sft --config configs/smollm2-cpu.yaml method=rpsft sft.training.max_steps=5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

STAGES = {
    "prepare": "stages.prepare",
    "sft": "stages.sft",
    "rl": "stages.rl",
    "evaluate": "stages.evaluate",
    "report": "stages.report",
}


def run_stage(name: str, argv: list[str]) -> int:
    """Run ``python -m stages.<name> ARGV`` in a child process (memory returns to the OS between stages)."""
    module = STAGES[name]
    env = dict(os.environ)
    return subprocess.call([sys.executable, "-m", module, *argv], env=env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sft2rl",
        description="SFT vs RPSFT (rotation-preserving SFT), then RL: run stages on a config.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_stage = sub.add_parser(
        "stage",
        help="run one stage alone",
        description="Run one stage alone: sft2rl stage <name> --config FILE [key=value ...]",
    )
    p_stage.add_argument("name", choices=sorted(STAGES), help="stage to run")
    p_stage.add_argument("args", nargs=argparse.REMAINDER, help="--config FILE [--force] [key=value ...]")
    p_prep = sub.add_parser("prepare", help="prepare the initial model (same as: stage prepare)", add_help=False)
    p_prep.add_argument("args", nargs=argparse.REMAINDER, help="--config FILE [key=value ...]")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Options after the stage name (--config, --force, --help) belong to the stage: pass them through unparsed.
    args, passthrough = build_parser().parse_known_args(argv)
    if args.command == "stage":
        return run_stage(args.name, [*passthrough, *args.args])
    if args.command == "prepare":
        return run_stage("prepare", [*passthrough, *args.args])
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
