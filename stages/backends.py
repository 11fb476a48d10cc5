"""Which generation engine runs on this machine: ``backend: auto`` decides by measurement; ``vllm`` and ``hf`` are
taken as given.

On a CUDA GPU ``auto`` is vLLM. On a CPU the answer depends on the machine (vLLM-CPU's kernels are tuned for
AVX-512/AMX; on an AVX2-only machine its colocated engine was measured slower than transformers' own generate), so
``auto`` measures both engines once per machine and model, in a child process (``python -m stages.backends``: a
probe engine must not share a process with the trainer's), and keeps the figures in ``<cache_dir>/backends.json``.
The RL stage adds what it measures inside GRPO steps (generation tokens/s of the colocated engine); from then on
``auto`` for RL compares that figure, not the standalone one. Every choice is logged with its figures.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from stages.startup import defer_collection, imports_done
from stages.store import atomic_write_json, free_port

defer_collection(__name__)  # python -m stages.backends: its imports, as a stage's (stages/startup.py)
log = logging.getLogger(__name__)

Use = Literal["rl", "eval"]
CACHE_FILE = "backends.json"
# vLLM is chosen on a CPU only when it is clearly faster: the probe is short and the two figures are noisy.
AUTO_MARGIN = 1.1
# The CPU features vLLM-CPU's kernels depend on (x86); what the machine has is part of the cache key.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "asimd", "sve")
# What the figures were measured with; a change to the engines' setup makes older cached figures stale. 2: the
# colocated engine keeps vLLM's packed kernels and computes in the trainer's precision. 3: on a CPU the probe's engine
# runs in the probe's process (beside vLLM's engine-core process, transformers read lower and more unevenly).
ENGINE_SETUP = 3


@dataclass(frozen=True)
class Choice:
    backend: Literal["hf", "vllm"]
    reason: str
    figures: dict[str, Any] | None = None


def machine() -> dict[str, Any]:
    """The machine a measurement belongs to: CPU model, the vector features vLLM-CPU uses, cores, threads."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    emulated = os.environ.get("SFT2RL_EMULATED_ISA")  # benchmarks/avx2_only: the libraries see AVX2 only
    if emulated == "avx2":
        flags = {f for f in flags if not f.startswith(("avx512", "amx"))}
    return {
        "cpu_model": model,
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    } | ({"emulated_isa": emulated} if emulated else {})


def threads() -> dict[str, Any]:
    """This process's threading as it stands: torch's intra-op threads, the cores it may run on, and the OpenMP and
    vLLM-CPU binding settings. Taken at an RL stage's start and again after its run: a colocated vLLM engine binds
    the OpenMP threads of the process it lives in, which the trainer shares."""
    import torch  # lazy: keeps this module importable without torch for its decision logic

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count()
    keys = ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "KMP_AFFINITY")
    return {"torch_threads": torch.get_num_threads(), "allowed_cores": cores} | {
        k.lower(): os.environ[k] for k in keys if k in os.environ
    }


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cache_key(model_id: str, m: dict[str, Any]) -> str:
    raw = json.dumps({"model": model_id, "machine": m, "engine_setup": ENGINE_SETUP}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _speed(entry: dict[str, Any], key: str) -> float | None:
    """A cached tokens/s figure: a finite positive number, else None."""
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _read(cache: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}  # absent or unreadable: measure again (it is only a cache)
    return data if isinstance(data, dict) else {}


def choose(
    requested: str,
    *,
    use: Use,
    cuda: bool,
    model_id: str,
    cache: Path,
    measure: Callable[[], dict[str, float]],
) -> Choice:
    """The engine for ``requested`` (``auto``, ``vllm`` or ``hf``).

    ``measure`` returns ``{"hf_tokens_per_s": ..., "vllm_tokens_per_s": ...}`` (standalone engines, the RL step's
    batch shape); it runs only on a CPU, with vLLM installed, when ``cache`` has no figures for this model and
    machine. Both uses share them; for ``rl`` the speed measured inside GRPO steps replaces vLLM's, once known.
    """
    if requested in ("hf", "vllm"):
        return Choice(requested, "set in the config")
    if requested != "auto":
        raise ValueError(f"backend {requested!r}: choose auto, vllm or hf")
    if not vllm_installed():
        return Choice("hf", "vLLM is not installed (pip install '.[cpu-vllm]' or '.[gpu]')")
    if cuda:
        return Choice("vllm", "a CUDA GPU: vLLM's batched generation")
    m = machine()
    key = cache_key(model_id, m)
    entries = _read(cache)
    entry = entries.get(key)
    if not isinstance(entry, dict) or None in (_speed(entry, "hf_tokens_per_s"), _speed(entry, "vllm_tokens_per_s")):
        if isinstance(entry, dict):  # an entry with figures that are not speeds (edited, damaged): never trusted
            log.warning(
                "engine speed cache %s: the entry for this model and machine is not usable; measuring again", cache
            )
        figures = measure()
        entry = {
            "model": model_id,
            "machine": m,
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **figures,
        }
        entries[key] = entry
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, entries)
    hf = float(entry["hf_tokens_per_s"])
    vllm, where = float(entry["vllm_tokens_per_s"]), "standalone probe"
    if use == "rl" and (colocated := _speed(entry, "colocated_vllm_tokens_per_s")) is not None:
        vllm, where = colocated, "inside GRPO steps"
    backend: Literal["hf", "vllm"] = "vllm" if vllm >= AUTO_MARGIN * hf else "hf"
    reason = (
        f"measured on this machine ({m['cpu_model']}, {', '.join(m['cpu_flags']) or 'no vector flags'}): "
        f"vLLM {vllm:.0f} tokens/s ({where}) vs transformers {hf:.0f} tokens/s; vLLM is chosen at "
        f">= {AUTO_MARGIN}x (figures cached in {cache}; delete the file to measure again)"
    )
    return Choice(backend, reason, entry)


def model_id(path: str, dtype: str = "float32") -> str:
    """What generation speed depends on: the architecture in the model's config.json (not its weights), so a
    checkpoint shares the figures of its base model, and the precision both engines compute in (bfloat16 products
    are fast on AVX-512-BF16 and slow on AVX2-only CPUs)."""
    keys = (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
    )
    try:
        conf = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return f"{path} ({dtype})"  # a hub id or an unreadable folder: its name
    return json.dumps({**{k: conf.get(k) for k in keys}, "dtype": dtype}, sort_keys=True)


def engine_dtype(cfg: Any, use: Use) -> str:
    """The precision a stage's engines compute in on the CPU: the trainer's for RL (its colocated vLLM engine takes
    it too: stages/vllm_cpu.py), ``eval.cpu_dtype`` for evaluation."""
    return cfg.model.dtype if use == "rl" else cfg.eval.cpu_dtype


def resolve(cfg: Any, use: Use, model_path: str) -> Choice:
    """The engine a stage generates with: ``rl.generation.backend`` (use ``rl``) or ``eval.backend`` (``eval``);
    ``auto`` measured as in :func:`choose`, the probe in a child process. Logged with its reason."""
    requested = cfg.rl.generation.backend if use == "rl" else cfg.eval.backend
    cuda = cfg.device != "cpu" and _cuda_available()
    dtype = engine_dtype(cfg, use)
    # the probe measures both engines in the precision this use computes in
    probe_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": dtype})})
    choice = choose(
        requested,
        use=use,
        cuda=cuda,
        model_id=model_id(model_path, dtype),
        cache=Path(cfg.cache_dir) / CACHE_FILE,
        measure=lambda: probe_in_child(probe_cfg),
    )
    where = "rl.generation.backend" if use == "rl" else "eval.backend"
    log.info("generation engine (%s=%s): %s, %s", where, requested, choice.backend, choice.reason)
    return choice


@dataclass(frozen=True)
class GenerationPlan:
    """How a stage generates, decided once per stage run and handed down (the config stays as given: ``auto`` is
    resolved here, never written back): the engine, the device its model sits on, the precision engines compute in
    on the CPU, what the config asked for, and why this engine."""

    engine: Literal["hf", "vllm"]
    device: Literal["cpu", "cuda"]
    dtype: str
    requested: str
    reason: str
    figures: dict[str, Any] | None = None


def plan(cfg: Any, use: Use, model_path: str, *, generates: bool = True) -> GenerationPlan:
    """The stage's :class:`GenerationPlan`: the engine from :func:`resolve` (``auto`` measured once per machine and
    model); transformers, unmeasured, when nothing the stage runs generates."""
    from stages.generation import eval_device  # lazy: the generation module loads torch

    requested = cfg.rl.generation.backend if use == "rl" else cfg.eval.backend
    if generates or requested != "auto":
        choice = resolve(cfg, use, model_path)
    else:
        choice = Choice("hf", "no benchmark generates: transformers scores the likelihood probes")
    return GenerationPlan(
        engine=choice.backend,
        device=eval_device(cfg),  # type: ignore[arg-type]
        dtype=engine_dtype(cfg, use),
        requested=requested,
        reason=choice.reason,
        figures=choice.figures,
    )


def _cuda_available() -> bool:
    import torch  # lazy: keeps this module importable without torch for its decision logic

    return torch.cuda.is_available()


def record_colocated(cache: Path, *, model_id: str, tokens_per_s: float) -> dict[str, Any] | None:
    """Add the colocated engine's generation speed measured inside GRPO steps to this machine's RL entry."""
    key = cache_key(model_id, machine())
    entries = _read(cache)
    entry = entries.get(key)
    if not isinstance(entry, dict):
        return None
    entry["colocated_vllm_tokens_per_s"] = round(float(tokens_per_s), 1)
    atomic_write_json(cache, entries)
    return entry


def probe_in_child(cfg: Any, *, rounds: int = 2, timeout: int = 1800, layout: str = "auto") -> dict[str, Any]:
    """Run :func:`measure_both` for this config in a child process (a probe vLLM engine must not live in the
    trainer's process): the resolved config goes to the child as a file. ``layout``: the child's ``--layout``."""
    from stages.config import dump_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(dump_config(cfg))
        cmd = [sys.executable, "-m", "stages.backends", "--config", str(path), "--rounds", str(rounds)]
        cmd += ["--layout", layout]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)  # noqa: S603 - our own module
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"backend probe failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def measure_both(
    path: str,
    model_cfg: Any,
    prompts: list[str],
    *,
    n: int,
    temperature: float,
    max_tokens: int,
    seed: int,
    rounds: int = 2,
    in_process: bool = False,
) -> dict[str, Any]:
    """Sampled generation speed of transformers and vLLM on the same prompts, interleaved over ``rounds``.

    Tokens are counted up to and including EOS (what a rollout uses). The first vLLM call is a warm-up.
    ``in_process`` (a CPU): the engine runs inside this process, as the RL stage's colocated engine does, instead of
    in an engine-core process of its own, which starts a second interpreter and imports vLLM again there (measured
    on SmolLM2, 2 cores: docs/rl.md, benchmarks/results/probe_layout.json). The probe runs in a process of its own
    (:func:`probe_in_child`)."""
    import torch  # lazy: this module is imported by the stages before they pick an engine

    from stages.generation import _env
    from stages.models import load_model, load_tokenizer

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from vllm import LLM, SamplingParams  # lazy: optional extra

    tok = load_tokenizer(path, model_cfg)
    tok.padding_side = "left"
    model = load_model(path, model_cfg).eval()
    t0 = time.perf_counter()
    layout: dict[str, Any] = {"distributed_executor_backend": "uni"} if in_process else {}
    # the precision the RL stage's colocated engine and trainer use (stages/vllm_cpu.py); the layout variable is read
    # while the engine starts, set either way so that an inherited value cannot pick the other layout
    with _env("VLLM_ENABLE_V1_MULTIPROCESSING", "0" if in_process else "1"):
        llm = LLM(model=path, enforce_eager=True, seed=seed, dtype=model_cfg.dtype, max_model_len=512, **layout)
    start_s = time.perf_counter() - t0
    params = SamplingParams(n=n, temperature=temperature, top_k=0, max_tokens=max_tokens, seed=seed)

    def run_hf() -> tuple[int, float]:
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                num_return_sequences=n,
                max_new_tokens=max_tokens,
                pad_token_id=tok.pad_token_id,
            )
        dt = time.perf_counter() - t
        gen = out[:, enc["input_ids"].shape[1] :]
        eos = (gen == tok.eos_token_id).int()
        ended = eos.cumsum(1) - eos > 0
        return int((~ended).sum()), dt

    def run_vllm() -> tuple[int, float]:
        t = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs), time.perf_counter() - t

    run_vllm()  # warm-up
    rates: dict[str, list[float]] = {"hf": [], "vllm": []}
    for r in range(rounds):
        order = (("hf", run_hf), ("vllm", run_vllm)) if r % 2 == 0 else (("vllm", run_vllm), ("hf", run_hf))
        for name, fn in order:
            tokens, dt = fn()
            rates[name].append(tokens / dt)
    return {
        "hf_tokens_per_s": round(statistics.median(rates["hf"]), 1),
        "vllm_tokens_per_s": round(statistics.median(rates["vllm"]), 1),
        "hf_tokens_per_s_all": [round(x, 1) for x in rates["hf"]],
        "vllm_tokens_per_s_all": [round(x, 1) for x in rates["vllm"]],
        "vllm_engine_start_s": round(start_s, 1),
        "vllm_layout": "in_process" if in_process else "separate",
        "torch_threads": torch.get_num_threads(),
        "batch": f"{len(prompts)} prompts x {n} samples, up to {max_tokens} new tokens",
    }


def probe_prompts(cfg: Any, count: int) -> list[str]:
    """Task prompts as the model sees them (chat-template text): the RL prompts, drawn like the task's."""
    from stages.data import prompt_messages, prompt_text
    from stages.models import load_tokenizer, resolve_model
    from stages.rl_prompts import rl_prompts

    tok = load_tokenizer(resolve_model(cfg), cfg.model)
    return [prompt_text(tok, prompt_messages(x, cfg.data.system_prompt)) for x in rl_prompts(cfg)[:count]]


_PORT_SET_HERE: str | None = None


def claim_rendezvous_port() -> None:
    """Give a process that no launcher started a rendezvous port of its own (``MASTER_PORT``) before a colocated vLLM
    engine starts. The engine joins a torch.distributed group through ``MASTER_ADDR``/``MASTER_PORT``; with neither
    set, TRL takes 29500 when that port looks free, so two RL stages starting at once on one machine (parallel arms,
    two runs) can both pick it and one fails with "address already in use". A port set by a launcher (accelerate,
    torchrun: ``WORLD_SIZE`` > 1) or by the user is kept; one set here earlier in this process is replaced."""
    global _PORT_SET_HERE
    given = os.environ.get("MASTER_PORT", "").strip().lower()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 or (given not in ("", "0", "auto") and given != _PORT_SET_HERE):
        return
    _PORT_SET_HERE = str(free_port())
    os.environ["MASTER_PORT"] = _PORT_SET_HERE
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")


def main(argv: list[str] | None = None) -> int:
    """``python -m stages.backends --config FILE [--rounds N] [key=value ...]``: print the probe's figures (JSON)."""
    from stages.config import load_config
    from stages.models import resolve_model

    imports_done()
    p = argparse.ArgumentParser(prog="python -m stages.backends", description=main.__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of each engine (median reported)")
    p.add_argument(
        "--layout",
        choices=["auto", "in_process", "separate"],
        default="auto",
        help="where the vLLM engine runs; auto: in this process on a CPU, in vLLM's engine process on a GPU",
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    g = cfg.rl.generation  # the RL step's batch shape: a few prompts, many samples each
    figures = measure_both(
        resolve_model(cfg),
        cfg.model,
        probe_prompts(cfg, max(1, cfg.rl.training.per_device_train_batch_size // g.num_generations)),
        n=g.num_generations,
        temperature=g.temperature,
        max_tokens=g.max_completion_length,
        seed=cfg.seed,
        rounds=args.rounds,
        in_process=args.layout == "in_process"
        or (args.layout == "auto" and not (cfg.device != "cpu" and _cuda_available())),
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
