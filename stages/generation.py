"""The generation engines evaluation and the RL stage's prompt filter sample from, one interface for both:
transformers' ``generate`` (:class:`HFGenerator`) and vLLM's offline engine (:class:`VLLMGenerator`), greedy exactly
at temperature 0 and sampling from the full softmax otherwise, in one precision (:func:`eval_dtype`)."""

from __future__ import annotations

import contextlib
import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.config import Config, use_cpu


def eval_dtype(cfg: Config, torch_dtype: bool = False):
    """The one precision of every evaluation axis: ``eval.cpu_dtype`` on the CPU (float32 by default), the
    checkpoint's own (``auto``) on a GPU, for vLLM and transformers alike."""
    name = cfg.eval.cpu_dtype if use_cpu(cfg) else "auto"
    if not torch_dtype or name == "auto":
        return name
    return getattr(torch, name)


def eval_device(cfg: Config) -> str:
    """Where transformers evaluates and samples: the GPU unless the run is on the CPU (``device``), as training."""
    return "cpu" if use_cpu(cfg) else "cuda"


@dataclass(frozen=True)
class Request:
    """One batch of prompts answered under one setting: ``n`` answers each, greedy when ``temperature`` is 0."""

    prompts: list[str]
    n: int
    temperature: float
    max_new_tokens: int
    seed: int
    top_p: float = 1.0
    top_k: int = 0

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("n", "temperature", "max_new_tokens", "seed", "top_p", "top_k")}


class HFGenerator:
    def __init__(self, model, tokenizer, batch_size: int):
        self.model, self.tok, self.batch = model, tokenizer, batch_size

    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        max_new_tokens: int,
        seed: int,
        top_p: float = 1.0,
        top_k: int = 0,
    ):
        tok = self.tok
        tok.padding_side = "left"
        out: list[list[str]] = []
        torch.manual_seed(seed)
        step = max(1, self.batch // n)
        for i in range(0, len(prompts), step):
            enc = tok(prompts[i : i + step], return_tensors="pt", padding=True, add_special_tokens=False)
            # greedy exactly when temperature == 0, as under vLLM; sampling from the full softmax (top_k=0 explicit:
            # transformers would fill in top_k=50 and Avg@k / pass@k would differ from vLLM's)
            sample = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
            with torch.no_grad():
                gen = self.model.generate(
                    **enc.to(self.model.device),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    num_return_sequences=n,
                    **(sample if temperature > 0 else {"do_sample": False}),
                )
            texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out += [texts[j * n : (j + 1) * n] for j in range(len(texts) // n)]
        return out

    def generate_all(self, requests: list[Request]) -> list[list[list[str]]]:
        """Every request's answers (one list per prompt), request by request: transformers batches one request's
        prompts at a time."""
        return [self.generate(r.prompts, **r.params()) for r in requests]

    def close(self):
        pass


@contextlib.contextmanager
def _env(name: str, value: str | None):
    """``os.environ[name] = value`` inside the block (nothing when value is None), the old value after it."""
    if value is None:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _positions(path: str) -> int | None:
    """The model's ``max_position_embeddings`` from its config.json (None when it names none)."""
    try:
        value = json.loads((Path(path) / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int | float) and value > 0 else None


class VLLMGenerator:
    """vLLM offline engine (CPU or GPU); one per model, closed before the next.

    ``in_process`` (the evaluation stage's engines on a CPU): the engine runs inside this process instead of an
    engine-core process and a worker process. Measured on 2 cores (benchmarks/results/eval_cost.json): the same
    tokens per second and about 22 s less start and close per model. A GPU keeps vLLM's own process layout
    (scheduling overlaps the GPU's work there), and so does the RL stage's prompt filter, whose engine must be gone,
    with its process group, before the trainer starts its own."""

    def __init__(self, path: str, cfg: Config, max_len: int, *, in_process: bool = False):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        from vllm import LLM  # lazy: vLLM is an optional extra (eval.backend=vllm), heavy; imported after its env

        cpu = use_cpu(cfg)
        in_process = in_process and cpu
        max_len = min(max_len, _positions(path) or max_len)  # vLLM refuses a length past the model's positions
        with _env("VLLM_ENABLE_V1_MULTIPROCESSING", "0" if in_process else None):  # read while the engine starts
            self.llm = LLM(
                model=path,
                dtype=eval_dtype(cfg),
                enforce_eager=cpu,
                seed=cfg.seed,
                max_model_len=max_len,
                gpu_memory_utilization=cfg.rl.generation.vllm_gpu_memory_utilization if not cpu else 0.9,
                trust_remote_code=cfg.model.trust_remote_code,
                **({"distributed_executor_backend": "uni"} if in_process else {}),
            )

    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        max_new_tokens: int,
        seed: int,
        top_p: float = 1.0,
        top_k: int = 0,
    ):
        return self.generate_all([Request(prompts, n, temperature, max_new_tokens, seed, top_p, top_k)])[0]

    def generate_all(self, requests: list[Request]) -> list[list[list[str]]]:
        """Every request's answers (one list per prompt) from one submission to the engine: its scheduler keeps
        the batch full across requests instead of draining to a few long answers at the end of each. Measured on 2
        cores (benchmarks/results/eval_batching.json): the same greedy answers, less generation time."""
        from vllm import SamplingParams  # lazy: optional extra, only with eval.backend=vllm

        prompts, params = [], []
        for r in requests:
            # Per-request seeds crash vLLM's CPU engine; the engine itself is seeded. Greedy exactly when
            # temperature == 0 (samples: 1 is one sampled completion on both backends), full softmax otherwise.
            one = SamplingParams(
                n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_tokens=r.max_new_tokens
            )
            prompts += r.prompts
            params += [one] * len(r.prompts)
        outs = iter(self.llm.generate(prompts, params, use_tqdm=False))
        return [[[c.text for c in next(outs).outputs] for _ in r.prompts] for r in requests]

    def close(self):
        del self.llm
        gc.collect()
