"""The command line every stage shares: ``python -m stages.<name> --config FILE [--force] [key=value ...]``.

Exit codes: 0 done, 2 bad input (config, model, data: the message names it), 3 a numerical fault during training,
4 not enough disk (for a checkpoint, checked before it is written: the last complete one is kept; or a write that
found the disk full, any stage). Log lines have secret values (HF_TOKEN and the like, read from the environment)
replaced by ``***``.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from stages.config import Config, ConfigError, load_config
from stages.secrets import SecretFilter, scrub
from stages.startup import imports_done
from stages.store import ResourceError, set_disk_reserve

# The stages, by the name users type, and the module each runs as (``python -m <module>``).
STAGE_MODULES = {s: f"stages.{s}" for s in ("prepare", "sft", "rl", "evaluate", "report")}
TRAINING_STAGES = ("sft", "rl")
DEFAULT_CONFIG = "configs/smollm2-cpu.yaml"  # the embedded default (README "Two commands")

# The one table of exit codes: the stages return them, the flows name them in a failed stage's message.
EXIT_CODES = {ConfigError: 2, FloatingPointError: 3, ResourceError: 4}
EXIT_KINDS = {0: "done", 2: "bad input", 3: "numerical fault", 4: "not enough disk", 130: "interrupted"}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # a write that found no room (or no quota) left: exit 4, like a checkpoint's
# how libraries that wrap the OS error say it (safetensors' Rust writer, torch's zip writer keep the OS message)
DISK_FULL_WORDS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def disk_full(e: BaseException) -> bool:
    """``e`` (or an exception it was raised from) is a write that found the disk full."""
    for _ in range(8):  # the chain of causes, a few deep
        if e is None:
            return False
        if (isinstance(e, OSError) and e.errno in DISK_FULL) or any(w in str(e) for w in DISK_FULL_WORDS):
            return True
        e = e.__cause__ or e.__context__
    return False


def exit_kind(rc: int) -> str:
    """What a stage's exit code means (anything not in the table: a crash, e.g. a signal or an uncaught error)."""
    return EXIT_KINDS.get(rc, "crash")


def parse_args(argv: list[str] | None, description: str, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("--force", action="store_true", help="recompute even if the output is complete")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. sft.method=rpsft")
    return parser.parse_args(argv)


def expand_shortcuts(overrides: list[str], shortcuts: dict[str, str]) -> list[str]:
    """Let users write ``method=rpsft`` for ``sft.method=rpsft`` (documented per stage)."""
    out = []
    for o in overrides:
        key = o.split("=", 1)[0]
        out.append(shortcuts[key] + o[len(key) :] if key in shortcuts else o)
    return out


def leave_process_group() -> None:
    """Under accelerate launch, after a stage finished: wait for every process (rank 0 may still be writing the
    arm), then take the process group down before the interpreter exits. Left to interpreter teardown, a process's
    gloo threads once aborted it after a finished run ("terminate called without an active exception", SIGABRT),
    failing a 2-process GRPO run that had completed."""
    dist = sys.modules.get("torch.distributed")  # only a stage that imported torch can have a process group
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        # A vLLM engine colocated in this process (TRL's colocate mode) made its own groups on top of the default
        # one: vLLM takes them down first, in its order, then the default group, so its exit-time cleanup finds
        # nothing left to destroy (taken down in the other order, that cleanup raised "Invalid process group
        # specified" after every successful RL stage).
        vllm_groups = sys.modules.get("vllm.distributed.parallel_state")
        if vllm_groups is not None and getattr(vllm_groups, "_WORLD", None) is not None:
            try:
                vllm_groups.destroy_model_parallel()
                vllm_groups.destroy_distributed_environment()
            except (RuntimeError, ValueError) as e:  # the outputs are complete: say what failed in the teardown
                logging.getLogger(__name__).warning("vLLM's process groups did not close cleanly: %s", e)
        if dist.is_initialized():
            dist.destroy_process_group()


def stage_main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    run: Callable[[Config, bool], Any],
    shortcuts: dict[str, str] | None = None,
    per_seed: bool | Callable[[Config, Config], Config | None] = False,
) -> int:
    """Parse, load and validate the config, call ``run(cfg, force)``; turn known failures into one-line errors.

    ``per_seed``: on a config with several ``seeds``, run once per seed in ``<run_dir>/seeds/seed-<s>/`` (where the
    flow puts them, so the report pools them); a callable adapts each seed's config from the main one."""
    imports_done()  # what the stage module imported leaves the collector's walks (stages/startup.py)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretFilter())
    args = parse_args(argv, description, prog)
    try:
        cfg = load_config(args.config, expand_shortcuts(args.overrides, shortcuts or {}))
        set_disk_reserve(cfg.disk_reserve_gb)
        if per_seed and len(cfg.seed_list) > 1:
            for seed in cfg.seed_list:
                scfg = cfg.for_seed(seed)
                logging.getLogger(prog).info("seed %d of %s: %s", seed, cfg.seed_list, scfg.run_dir)
                one = per_seed(cfg, scfg) if callable(per_seed) else scfg
                if one is not None:  # None: this seed is not run by this stage (rl.seeds)
                    run(one, args.force)
        else:
            run(cfg, args.force)
        leave_process_group()
    except (ConfigError, FloatingPointError, ResourceError) as e:
        print(f"error: {scrub(str(e))}", file=sys.stderr)
        return EXIT_CODES[type(e)] if type(e) in EXIT_CODES else 2  # ConfigError subclasses (DataError, ...): 2
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        print(
            f"error: an input file is not readable text/JSON ({scrub(str(e))[:300]}); fix or remove it", file=sys.stderr
        )
        return 2
    except Exception as e:
        if disk_full(e):
            print(
                f"error: the disk filled during the stage ({scrub(str(e))[:300]}). Finished outputs are kept and "
                "half-written files removed; free space (or point runs_root / cache_dir at a larger disk) and run the "
                "same command again to resume",
                file=sys.stderr,
            )
            return 4
        if type(e).__name__ in UNREADABLE_INPUT:  # raised by libraries for a corrupt or truncated input file
            print(f"error: {UNREADABLE_INPUT[type(e).__name__]}: {scrub(str(e))[:300]}", file=sys.stderr)
            return 2
        raise
    return 0


# Library exceptions that mean "this input file is damaged", by class name (their modules are imported lazily).
UNREADABLE_INPUT = {
    "SafetensorError": "a safetensors weights file is corrupt or truncated; rebuild or re-download that model folder",
    "HeaderTooLarge": "a safetensors weights file is corrupt (its header is too large); re-download it",
}
