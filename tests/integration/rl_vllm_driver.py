"""Runs the RL stage with the vLLM backend in its own process (vLLM wants a __main__ guard), for test_rl_vllm.py.

Registers a test reward with variance on a random model, and with ``--no-sync`` disables TRL's weight sync (the
control that shows the log-prob check can fail).
"""

from __future__ import annotations

import sys

from stages.startup import defer_collection, imports_done

defer_collection(__name__)  # as a stage process does (stages/startup.py)

from stages.config import load_config  # noqa: E402
from stages.rewards import register  # noqa: E402


@register("digit_share")
def digit_share(completions, **_):
    texts = [c if isinstance(c, str) else "".join(m["content"] for m in c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


def main(argv: list[str]) -> int:
    no_sync = "--no-sync" in argv
    overrides = [a for a in argv if a != "--no-sync"]
    if no_sync:
        import trl.generation.vllm_generation as trl_vllm

        trl_vllm.VLLMGeneration.sync_weights = lambda self: None
    from stages.rl import run

    imports_done()
    run(load_config("configs/tiny.yaml", overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
