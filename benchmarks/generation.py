"""Generation speed of vLLM (CPU) vs transformers generate, side by side, and one GRPO step split into generation
and training time, on SmolLM2-135M-Instruct at the default RL batch shape. Writes JSON.

    python benchmarks/generation.py --out benchmarks/results/generation.json

Both backends sample the same prompts (4 prompts x 8 completions, temperature 1.0, up to 64 new tokens, fp32, the
model's chat template), interleaved over rounds. The GRPO split comes from running the RL stage itself for a few
steps with the vLLM backend (its ``timing/generation_s`` and ``timing/training_s``, first step dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="configs/smollm2-cpu.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grpo-steps", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

    import torch
    from vllm import LLM, SamplingParams

    from stages.config import load_config
    from stages.data import to_conversation
    from stages.models import load_model, load_tokenizer, resolve_model
    from stages.rl import rl_prompts

    cfg = load_config(args.config)
    g = cfg.rl.generation
    n_prompts = cfg.rl.training.per_device_train_batch_size * cfg.rl.training.gradient_accumulation_steps
    n_prompts //= g.num_generations
    path = resolve_model(cfg)
    tok = load_tokenizer(path, cfg.model)
    tok.padding_side = "left"
    prompts = [
        tok.apply_chat_template(
            to_conversation(x, cfg.data.system_prompt)["prompt"], tokenize=False, add_generation_prompt=True
        )
        for x in rl_prompts(cfg)[:n_prompts]
    ]
    model = load_model(path, cfg.model).eval()
    t0 = time.perf_counter()
    llm = LLM(model=path, enforce_eager=True, seed=cfg.seed, dtype="float32", max_model_len=512)
    vllm_start_s = time.perf_counter() - t0
    params = SamplingParams(
        n=g.num_generations, temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_completion_length
    )

    def run_hf() -> tuple[int, float]:
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=g.temperature,
                top_p=g.top_p,
                num_return_sequences=g.num_generations,
                max_new_tokens=g.max_completion_length,
                pad_token_id=tok.pad_token_id,
            )
        dt = time.perf_counter() - t
        gen = out[:, enc["input_ids"].shape[1] :]
        # Tokens up to and including EOS (what a rollout uses); padding after EOS is not counted.
        eos = (gen == tok.eos_token_id).int()
        ended = eos.cumsum(1) - eos > 0
        return int((~ended).sum()), dt

    def run_vllm() -> tuple[int, float]:
        t = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t
        return sum(len(c.token_ids) for o in outs for c in o.outputs), dt

    run_vllm()  # warm-up
    rates: dict[str, list[float]] = {"hf": [], "vllm": []}
    for r in range(args.rounds):
        for name, fn in (("hf", run_hf), ("vllm", run_vllm)) if r % 2 == 0 else (("vllm", run_vllm), ("hf", run_hf)):
            n, dt = fn()
            rates[name].append(n / dt)

    # One GRPO step, split: run the RL stage itself (vLLM backend) from the base model for a few steps.
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "stages.rl", "--config", args.config, f"runs_root={tmp}", "arm=rl-bench"]
        cmd += [f"max_steps={args.grpo_steps}", "backend=vllm", "rl.training.save_steps=1000"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        rows = [
            json.loads(x) for x in (Path(tmp) / cfg.run_name / "rl-bench" / "metrics.jsonl").read_text().splitlines()
        ]
    steady = rows[1:] or rows
    result = {
        "model": "SmolLM2-135M-Instruct",
        "batch": f"{len(prompts)} prompts x {g.num_generations} completions, max {g.max_completion_length} new tokens",
        "torch_threads": torch.get_num_threads(),
        "vllm_engine_start_s": vllm_start_s,
        "hf_tokens_per_s": statistics.median(rates["hf"]),
        "vllm_tokens_per_s": statistics.median(rates["vllm"]),
        "hf_tokens_per_s_all": rates["hf"],
        "vllm_tokens_per_s_all": rates["vllm"],
        "grpo_step_generation_s": statistics.median(r["timing/generation_s"] for r in steady),
        "grpo_step_training_s": statistics.median(r["timing/training_s"] for r in steady),
        "grpo_steps": rows,
    }
    result["vllm_over_hf"] = result["vllm_tokens_per_s"] / result["hf_tokens_per_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "grpo_steps"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
