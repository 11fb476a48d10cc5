"""Prepare stage: resolve the initial model to a local safetensors folder (converted and cached once) and check it.

Writes ``<run_dir>/prepare/result.json`` with the model folder every later stage starts from.

    python -m stages.prepare --config configs/smollm2-cpu.yaml
"""

from __future__ import annotations

from stages.startup import defer_collection

defer_collection(__name__)  # no full garbage collection during the imports below (stages/startup.py)

import logging
import sys
import time
from typing import Any

from transformers import AutoConfig

from stages import models
from stages.config import Config
from stages.stage_cli import stage_main
from stages.store import atomic_write_json

log = logging.getLogger(__name__)


def run(cfg: Config) -> dict[str, Any]:
    """Resolve the model, load its tokenizer (chat template required) and config; record the result.

    Raises:
        ConfigError: the model does not resolve or has no chat template.
    """
    t0 = time.perf_counter()
    path = models.resolve_model(cfg)
    tokenizer = models.load_tokenizer(path, cfg.model)
    mcfg = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    result = {
        "model_path": path,
        "source": cfg.model.source,
        "model_type": mcfg.model_type,
        "num_hidden_layers": getattr(mcfg, "num_hidden_layers", None),
        "hidden_size": getattr(mcfg, "hidden_size", None),
        "vocab_size": len(tokenizer),
        "eos_token": tokenizer.eos_token,
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_json(cfg.layout.prepare_result, result)
    log.info("model ready: %s (%s, %s layers)", path, result["model_type"], result["num_hidden_layers"])
    return result


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        argv,
        prog="sft2rl prepare",
        description="Prepare the initial model (convert and cache it once).",
        run=lambda cfg, force: run(cfg),
    )


if __name__ == "__main__":
    sys.exit(main())
