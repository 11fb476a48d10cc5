"""The RL stage's prompts: which questions RL trains on (``rl_prompts``), and, with ``rl.prompt_filter.samples``,
only those on which the initial checkpoint's sampled completions get different rewards (``filtered_prompts``; the
sampling runs in a child process, ``python -m stages.rl_prompts``, so its engine never shares the trainer's process).

Data-level: the evaluation (which removes RL prompts from its in-domain items) and the engine probe read these
prompts without importing the RL stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stages.answers import unreadable_golds
from stages.config import Config, ConfigError, dump_config
from stages.data import build_items
from stages.layout import PROMPT_FILTER, ArmLayout
from stages.store import atomic_write_json, weights_stamp

log = logging.getLogger("sft2rl.rl")

FILTER_FILE = PROMPT_FILTER


def rl_prompts(cfg: Config) -> list[dict[str, Any]]:
    """RL prompt items (with gold answers): ``rl.prompt_data`` if set, else the SFT task distribution with its own
    seed; any SFT training question is dropped."""
    source = cfg.rl.prompt_data or cfg.data
    sft_questions = {x["question"] for x in build_items(cfg.data)} if source.source == "reasoning_gym" else set()
    label = "rl.prompt_data" if cfg.rl.prompt_data else "data"
    items = build_items(source, size=cfg.rl.num_prompts + len(sft_questions), seed=cfg.rl.prompt_seed, label=label)
    if any(x["answer"] is None for x in items):
        raise ConfigError(f"RL prompts need gold answers: map {label}.fields.answer to a column or path")
    items = [x for x in items if x["question"] not in sft_questions][: cfg.rl.num_prompts]
    if "math_correct" in cfg.rl.rewards:
        errors = unreadable_golds(items, lambda x: f"prompt {x['question'][:60]!r}")
        if errors:
            raise ConfigError(
                f"{len(errors)} RL prompt(s) in {label} have a gold answer the math_correct reward cannot read: "
                f"{errors[0]}. Fix or drop them, or use rewards without gold answers"
            )
    if len(items) < cfg.rl.num_prompts:
        raise ConfigError(f"only {len(items)} RL prompts are disjoint from the SFT data; lower rl.num_prompts")
    return items


def _filter_key(cfg: Config, init_path: str, backend: str) -> str:
    """What the filter's result depends on: the prompts, the rewards, the sampling and the initial weights (file
    names, sizes and mtimes)."""
    h = hashlib.sha256()
    g = cfg.rl.generation
    h.update(
        json.dumps(
            [
                cfg.data.model_dump(mode="json"),
                cfg.rl.prompt_data.model_dump(mode="json") if cfg.rl.prompt_data else None,
                cfg.rl.num_prompts,
                cfg.rl.prompt_seed,
                cfg.rl.rewards,
                cfg.rl.reward_weights,
                cfg.rl.prompt_filter.samples,
                [g.temperature, g.top_p, g.top_k, g.max_completion_length],
                cfg.data.system_prompt,
                cfg.seed,
                backend,
            ],
            sort_keys=True,
        ).encode()
    )
    h.update(weights_stamp(init_path).encode())
    return h.hexdigest()[:16]


def filtered_prompts(
    cfg: Config, items: list[dict[str, Any]], init_path: str, backend: str, arm_dir: Path, main_process: bool = True
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """``items`` as given when ``rl.prompt_filter.samples`` is 0; else the prompts whose sampled rewards differ,
    and the filter's record (kept / dropped counts, pass rates, seconds). The sampling result is kept in the arm's
    ``prompt_filter.json`` and reused when its inputs are unchanged (a resumed run does not sample again)."""
    n = cfg.rl.prompt_filter.samples
    if n == 0:
        return items, None
    path = ArmLayout(Path(arm_dir)).prompt_filter
    key = _filter_key(cfg, init_path, backend)
    record = _read(path)
    if record is None or record.get("key") != key:
        if not main_process:
            raise RuntimeError(f"{path} is missing: rank 0 samples the prompt filter before the other ranks read it")
        log.info(
            "prompt filter: sampling %d completions for each of %d RL prompts from %s (%s), to train only on "
            "prompts whose rewards differ",
            n,
            len(items),
            init_path,
            backend,
        )
        t0 = time.perf_counter()
        texts = _sample_in_child(cfg, init_path, backend)
        record = {"key": key, "samples": n, "backend": backend, "seconds": round(time.perf_counter() - t0, 1)}
        record["rewards"] = score(cfg, items, texts)
        record["completions"] = texts
        arm_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
    rewards = record["rewards"]
    if len(rewards) != len(items):
        raise RuntimeError(f"{path} scores {len(rewards)} prompts for {len(items)}: delete it and rerun")
    kept = [x for x, r in zip(items, rewards, strict=True) if max(r) > min(r)]
    means = [sum(r) / len(r) for r in rewards]
    summary = {
        "samples": n,
        "prompts": len(items),
        "kept": len(kept),
        "all_same": _counts([r[0] for r in rewards if max(r) == min(r)]),
        "mean_reward": round(sum(means) / max(1, len(means)), 4),
        "seconds": record["seconds"],
        "backend": record["backend"],
    }
    if not kept:
        raise ConfigError(
            f"rl.prompt_filter: every one of the {len(items)} RL prompts got the same reward on all {n} completions "
            f"sampled from {init_path} (mean reward {summary['mean_reward']:.3f}): GRPO has nothing to learn from. "
            "Raise rl.generation.temperature or rl.prompt_filter.samples, use easier prompts, or set "
            "rl.prompt_filter.samples=0"
        )
    t, g = cfg.rl.training, cfg.rl.generation
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * world // g.num_generations
    if len(kept) < per_step:
        raise ConfigError(
            f"rl.prompt_filter: only {len(kept)} of {len(items)} RL prompts got mixed rewards over {n} completions "
            f"sampled from {init_path} (mean reward {summary['mean_reward']:.3f}), and one optimizer step takes "
            f"{per_step} prompts: raise rl.num_prompts or rl.generation.temperature, or set rl.prompt_filter.samples=0"
        )
    log.info(
        "prompt filter: %d of %d prompts have mixed rewards over %d samples (mean reward %.3f; %.0f s); training "
        "on those",
        len(kept),
        len(items),
        n,
        summary["mean_reward"],
        summary["seconds"],
    )
    return kept, summary


def _counts(values: list[float]) -> dict[str, int]:
    """Prompts dropped, by the one reward all their completions got (e.g. {"0.0": 150, "1.0": 12})."""
    out: dict[str, int] = {}
    for v in sorted(values):
        out[str(float(v))] = out.get(str(float(v)), 0) + 1
    return out


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("rewards"), list) else None


def _sample_in_child(cfg: Config, init_path: str, backend: str, timeout: int = 6 * 3600) -> list[list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        conf, out = Path(tmp) / "config.yaml", Path(tmp) / "completions.json"
        # the child only samples; the parent scores (a reward registered in the parent's process alone, by a test or
        # a plugin imported there, would not load in the child's config)
        sampling = cfg.model_copy(
            update={"rl": cfg.rl.model_copy(update={"rewards": ["format"], "reward_weights": None})}
        )
        conf.write_text(dump_config(sampling))
        cmd = [sys.executable, "-m", "stages.rl_prompts", "--config", str(conf), "--init", init_path]
        cmd += ["--backend", backend, "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)  # noqa: S603 - our own module
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"prompt filter sampling failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        return json.loads(out.read_text())


def sample_completions(cfg: Config, init_path: str, backend: str) -> list[list[str]]:
    """Per RL prompt, ``rl.prompt_filter.samples`` completions sampled from ``init_path`` at rl.generation's
    temperature, top-p, top-k and length."""
    from stages import models  # lazy: torch and the engines load only in the child
    from stages.data import prompt_messages, prompt_text
    from stages.generation import HFGenerator, VLLMGenerator, eval_device

    items = rl_prompts(cfg)
    tok = models.load_tokenizer(init_path, cfg.model)
    prompts = [prompt_text(tok, prompt_messages(x, cfg.data.system_prompt)) for x in items]
    g, n = cfg.rl.generation, cfg.rl.prompt_filter.samples
    if backend == "vllm":
        longest = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
        gen = VLLMGenerator(init_path, cfg, longest + g.max_completion_length + 8)
    else:
        gen = HFGenerator(models.load_model(init_path, cfg.model).to(eval_device(cfg)).eval(), tok, cfg.eval.batch_size)
    try:
        return gen.generate(
            prompts,
            n=n,
            temperature=g.temperature,
            max_new_tokens=g.max_completion_length,
            seed=cfg.seed,
            top_p=g.top_p,
            top_k=g.top_k,
        )
    finally:
        gen.close()


def score(cfg: Config, items: list[dict[str, Any]], texts: list[list[str]]) -> list[list[float]]:
    """Each completion's total reward: rl.rewards weighted by rl.reward_weights, as the trainer adds them."""
    from stages.rewards import get_reward

    weights = cfg.rl.reward_weights or [1.0] * len(cfg.rl.rewards)
    funcs = [get_reward(name) for name in cfg.rl.rewards]
    out = []
    for x, group in zip(items, texts, strict=True):
        total = [0.0] * len(group)
        for w, fn in zip(weights, funcs, strict=True):
            for i, r in enumerate(fn(group, answer=[x["answer"]] * len(group))):
                total[i] += w * float(r if r is not None else 0.0)
        out.append([round(v, 6) for v in total])
    return out


def main(argv: list[str] | None = None) -> int:
    from stages.config import load_config

    ap = argparse.ArgumentParser(prog="python -m stages.rl_prompts", description=sample_completions.__doc__)
    ap.add_argument("--config", required=True)
    ap.add_argument("--init", required=True)
    ap.add_argument("--backend", choices=["hf", "vllm"], required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config, [])
    atomic_write_json(Path(args.out), sample_completions(cfg, args.init, args.backend))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
