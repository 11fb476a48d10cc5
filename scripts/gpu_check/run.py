"""The GPU check: RPSFT's cost at the paper's matrix shapes and a few GRPO steps, on one GPU, from nothing but
torch and transformers (models are built from configs with random weights: no downloads). Writes one JSON.

    python scripts/gpu_check/run.py --out "$OUT/gpu_check.json"          # on the lent GPU (sized for < 8 min)
    python scripts/gpu_check/run.py --smoke --out /tmp/gpu_check.json    # anywhere, CPU, tiny shapes (make test)

Parts, each written to the JSON as soon as it is done (a part that fails or would run past ``--deadline-s`` is
recorded with its reason, the others still run):

1. machine: GPU, memory, torch / transformers / CUDA versions.
2. anchors: a few decoder layers at Qwen2.5-7B's shapes (hidden 3584, intermediate 18944, vocab 152064, GQA 28/4
   heads) plus embedding and head; RPSFT's anchor precompute (the exact Gram-eigenvector method) vs a full fp32 SVD
   of the same matrices, at k = 768 (the paper's) and k = 25% of each matrix's rank; the anchors' memory; the largest
   relative error of the top-k singular values against an exact SVD.
3. steps: optimizer step RPSFT / SFT at gradient accumulation 1 and 8 (bf16 autocast, fp32 master weights, AdamW),
   the arms interleaved round by round on the same batches, paired ratios (median), for both k.
4. grpo: 3 TRL GRPO steps with transformers generation on a Qwen2.5-0.5B-shaped body (24 layers, hidden 896; a
   small trained tokenizer), generation tokens/s and step time. Needs trl (and datasets): carried as wheels, see
   scripts/gpu_check/device.sh; without them the part is skipped and says so.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from stages.startup import defer_collection, imports_done  # noqa: E402 - the repository goes on the path first

defer_collection(__name__)  # until torch is imported in main, as in a stage process (stages/startup.py)

# Qwen2.5-7B's matrix shapes (the paper's model; k = 768 there) and Qwen2.5-0.5B's body.
SHAPES = {
    "qwen2.5-7b-layers": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "num_hidden_layers": 2,
        "tie_word_embeddings": False,
    },
    "qwen2.5-0.5b-body": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "num_hidden_layers": 24,
        "tie_word_embeddings": True,
    },
    "smoke-layers": {
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "num_hidden_layers": 2,
        "tie_word_embeddings": False,
    },
    "smoke-body": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "tie_word_embeddings": True,
    },
}
FULL = {
    "layers": "qwen2.5-7b-layers",
    "body": "qwen2.5-0.5b-body",
    "k": 768,
    "batch": 4,
    "seq": 1024,
    "rounds": 6,
    "grpo_steps": 3,
    "prompts": 8,
    "generations": 8,
    "completion": 256,
}
SMOKE = {
    "layers": "smoke-layers",
    "body": "smoke-body",
    "k": 16,
    "batch": 2,
    "seq": 32,
    "rounds": 2,
    "grpo_steps": 2,
    "prompts": 2,
    "generations": 4,
    "completion": 8,
}


# Conservative H200 rates for the sizing (peak: ~990 TFLOP/s dense bf16, ~67 fp32, 4.8 TB/s): what the plan assumes.
H200 = {
    "bf16_flops": 300e12,  # training matmuls under autocast
    "fp32_flops": 40e12,  # the penalty's products, the Gram products
    "svd_flops": 0.5e12,  # cuSOLVER SVD / eigh reach a small fraction of peak
    "fp64_svd_flops": 0.3e12,
    "decode_step_s": 0.02,  # one generation step of the 0.5B body: kernel launches, not FLOPs
    "fixed_s": 60.0,  # imports (TRL), model builds, copies, warm-ups
}


def matrices(shape: dict) -> list[tuple[int, int]]:
    """The 2-D weights of a Qwen2 model of this shape: embedding, head (untied), and per layer q, k, v, o, MLP."""
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    vocab = shape.get("vocab_size", 1024)
    per_layer = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]
    return [(vocab, h)] * (1 if shape["tie_word_embeddings"] else 2) + per_layer * layers


def plan(p: dict, rates: dict = H200) -> dict[str, float]:
    """Seconds each part should take at ``rates``, from FLOP counts (the sizing of the full run)."""
    mats = matrices(SHAPES[p["layers"]])
    params = sum(m * n for m, n in mats)

    def svd(m: int, n: int) -> float:
        m, n = max(m, n), min(m, n)
        return 4 * m * n * n + 22 * n**3

    full_svd = sum(svd(m, n) for m, n in mats) / rates["svd_flops"]
    gram = sum(
        2 * max(m, n) * min(m, n) ** 2 / rates["fp32_flops"] + 9 * min(m, n) ** 3 / rates["svd_flops"] for m, n in mats
    )
    largest = max(mats, key=lambda mn: mn[0] * mn[1])
    anchors = full_svd + 3 * gram + svd(*largest) / rates["fp64_svd_flops"]  # k, 25%, 25% with split-bf16 S_ref
    micro = 6 * params * p["batch"] * p["seq"] / rates["bf16_flops"]
    penalty = 4 * params * p["k"] / rates["fp32_flops"]
    penalty_split = 8 * params * p["k"] / rates["bf16_flops"]  # three bf16 block products and the gradient's one
    rounds = p["rounds"] + 1
    steps = rounds * sum(3 * ga * micro + 2 * penalty for ga in (1, 8)) + 6 * (penalty + penalty_split)
    body = SHAPES[p["body"]]
    grpo = p["grpo_steps"] * (
        p["completion"] * rates["decode_step_s"]
        + 6
        * body["hidden_size"] ** 2
        * 12
        * body["num_hidden_layers"]
        * p["prompts"]
        * p["generations"]
        * p["completion"]
        / rates["bf16_flops"]
    )
    out = {"anchors": anchors, "steps": steps, "grpo": grpo, "fixed": rates["fixed_s"]}
    out["total"] = sum(out.values())
    return out


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device) -> dict:
    import torch
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
    return out


def build_layers_model(shape: dict, device, dtype):
    """A causal LM at real shapes with random weights (Qwen2 architecture), built on the device."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(**shape, max_position_embeddings=4096)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    return model.to(dtype)


def part_anchors(p: dict, device, result: dict) -> dict:
    """Anchor precompute (Gram method) vs full SVD of the same matrices, at k = p["k"] and 25% of rank."""
    import torch

    from stages.rpsft import compute_anchors, select_matrices, top_k_factors

    model = build_layers_model(SHAPES[p["layers"]], device, torch.float32)
    named = select_matrices(model.named_parameters(), [".*"], [])
    shapes = {n: list(w.shape) for n, w in named}
    out: dict = {"model": p["layers"], "matrices": len(named), "parameters": sum(w.numel() for _, w in named)}
    out["device"] = str(device)  # the pipeline computes anchors where the model loads (the CPU, by default)
    torch.linalg.svd(named[0][1].detach()[:64, :64], full_matrices=False)  # solver start-up, not timed
    anchors = {}
    for label, k, frac in ((f"k{p['k']}", p["k"], None), ("k25pct", None, 0.25)):
        sync(device)
        t0 = time.perf_counter()
        a = compute_anchors(named, k, frac, "gram", cache_dir=None)  # includes the weights' hash (the cache key)
        sync(device)
        anchors[label] = a
        out[label] = {
            "precompute_s": time.perf_counter() - t0,
            "anchors_mib": a.nbytes() / 2**20,
            "full_rank_fallbacks": a.full_rank,
        }
    # the paper-scale k's block products in split bf16 (S_ref from the same products): timed in the steps part
    t0 = time.perf_counter()
    anchors["k25pct-split"] = compute_anchors(named, None, 0.25, "gram", cache_dir=None, precision="split_bf16")
    sync(device)
    out["k25pct-split"] = {"precompute_s": time.perf_counter() - t0}
    result["_built"] = (model, anchors)  # reused by the steps part (not written): kept even if what follows fails
    # The baseline: a full fp32 SVD of every matrix, smallest first, within a time budget; the rest extrapolated
    # by m n^2 from the largest one measured (the SVD's cost), and counted as such.
    budget = p.get("svd_budget_s", 120.0)
    order = sorted(named, key=lambda nw: max(nw[1].shape) * min(nw[1].shape) ** 2)
    spent, measured, rate = 0.0, 0, 0.0
    for _, w in order:
        cost = max(w.shape) * min(w.shape) ** 2
        if spent > budget and rate:
            spent += rate * cost
            continue
        sync(device)
        t0 = time.perf_counter()
        torch.linalg.svd(w.detach(), full_matrices=False)
        sync(device)
        dt = time.perf_counter() - t0
        spent, measured, rate = spent + dt, measured + 1, dt / cost
        print(f"full SVD {tuple(w.shape)}: {dt:.2f} s", flush=True)
    out["full_svd_s"] = spent
    out["full_svd_matrices_measured"] = measured  # the others extrapolated
    for label in anchors:
        out[label]["precompute_over_full_svd"] = out[label]["precompute_s"] / spent
    # accuracy on the largest matrix: the fast method's top-k singular values vs exact ones in fp64 (R of a QR has
    # the matrix's singular values: one fp64 QR and a small SVD instead of an SVD of the whole tall matrix)
    name, w = max(named, key=lambda nw: nw[1].numel())
    k = min(p["k"], min(w.shape))
    tall = w.detach().double() if w.shape[0] >= w.shape[1] else w.detach().double().T
    exact = torch.linalg.svdvals(torch.linalg.qr(tall, mode="r")[1])[:k]
    _, s_fast, _ = top_k_factors(w, k, "gram")
    out["largest_matrix"] = {"name": name, "shape": shapes[name], "k": k, "s1_over_sk": float(exact[0] / exact[-1])}
    out["max_rel_error_top_k_singular_values"] = float(((s_fast.double() - exact).abs() / exact).max())
    out["model_fp32_mib"] = sum(t.numel() * 4 for t in model.parameters()) / 2**20
    return out


def part_steps(p: dict, device, result: dict) -> dict:
    """Optimizer step time, SFT vs RPSFT (both k), GA 1 and 8, arms interleaved on the same batches."""
    import torch

    from stages.rpsft import RPSFTRegularizer, select_matrices

    if "_built" not in result:
        raise RuntimeError("needs the anchors part (it builds the model and the anchors)")
    base, anchors = result.pop("_built")
    vocab = base.config.vocab_size
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    gen = torch.Generator(device="cpu").manual_seed(1)

    def make(kind: str):
        model = copy.deepcopy(base).train()
        reg = None
        if kind != "sft":
            reg = RPSFTRegularizer(select_matrices(model.named_parameters(), [".*"], []), anchors[kind], 1.0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
        return {"kind": kind, "model": model, "reg": reg, "opt": opt}

    def step(arm, batches) -> float:
        sync(device)
        t = time.perf_counter()
        for ids in batches:
            with autocast:
                loss = arm["model"](input_ids=ids, labels=ids).loss / len(batches)
            loss.backward()
        if arm["reg"] is not None:
            arm["reg"].add_penalty_grad()
        torch.nn.utils.clip_grad_norm_(arm["model"].parameters(), 1.0)
        arm["opt"].step()
        arm["opt"].zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t

    split = anchors.pop("k25pct-split", None)  # not an arm of its own: timed on the k25pct arm's weights below
    arms = [make(kind) for kind in ("sft", *anchors)]
    base = None  # three arms hold their own copies
    out: dict = {"micro_batch": f"{p['batch']} x {p['seq']} tokens", "autocast": "bf16", "master_weights": "fp32"}
    for ga in (1, 8):
        times: dict[str, list[float]] = {a["kind"]: [] for a in arms}
        for r in range(p["rounds"] + 1):  # round 0 warms up (allocations, optimizer state) and is dropped
            batches = [torch.randint(0, vocab, (p["batch"], p["seq"]), generator=gen).to(device) for _ in range(ga)]
            for arm in arms if r % 2 == 0 else arms[::-1]:
                dt = step(arm, batches)
                if r > 0:
                    times[arm["kind"]].append(dt)
        out[f"ga{ga}"] = {
            "step_s": {k: statistics.median(v) for k, v in times.items()},
            "ratio_to_sft": {
                k: statistics.median(a / b for a, b in zip(v, times["sft"], strict=True))
                for k, v in times.items()
                if k != "sft"
            },
        }
    if split is not None:
        out["penalty_k25pct"] = penalty_precisions(arms, split, device)
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def penalty_precisions(arms: list[dict], split_anchors, device, repeats: int = 6) -> dict:
    """The penalty and its gradient alone (one block computation per call), fp32 vs split-bf16 products, on the
    trained weights of the k25pct arm: the seconds of each (median, first call dropped) and how far apart the
    penalties are, relative to the penalty (the split's error against the drift it measures)."""

    from stages import rpsft
    from stages.rpsft import RPSFTRegularizer, select_matrices

    arm = next(a for a in arms if a["kind"] == "k25pct")
    regs = {
        "fp32": arm["reg"],
        "split_bf16": RPSFTRegularizer(
            select_matrices(arm["model"].named_parameters(), [".*"], []), split_anchors, 1.0
        ),
    }
    out: dict = {}
    for label, reg in regs.items():
        arm["opt"].zero_grad(set_to_none=False)  # gradients allocated once: the calls add into them
        times = []
        for _ in range(repeats):
            reg.weights_changed()
            sync(device)
            t = time.perf_counter()
            stats = reg.add_penalty_grad()
            sync(device)
            times.append(time.perf_counter() - t)
        out[label] = {"s": statistics.median(times[1:]), "penalty": stats["penalty"]}
    out["split_over_fp32_time"] = out["split_bf16"]["s"] / out["fp32"]["s"]
    out["penalty_rel_diff"] = abs(out["split_bf16"]["penalty"] - out["fp32"]["penalty"]) / max(
        out["fp32"]["penalty"], 1e-30
    )
    out["native_bf16_products"] = rpsft._NATIVE_BF16_MM["ok"] and device.type == "cuda"
    arm["opt"].zero_grad(set_to_none=True)
    return out


def part_grpo(p: dict, device, result: dict, workdir: Path) -> dict:
    """A few TRL GRPO steps with transformers generation; generation tokens/s and step time."""
    try:
        import datasets
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        return {"skipped": f"{e}: carry the wheels (python scripts/gpu_check/fetch_wheels.py, then device.sh)"}
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from stages.bpe import train_bpe_tokenizer

    words = [f"{a} plus {b} is {a + b}." for a in range(40) for b in range(40)]
    tok = train_bpe_tokenizer(words, vocab_size=1024)
    torch.manual_seed(0)
    shape = {**SHAPES[p["body"]], "vocab_size": len(tok)}
    cfg = Qwen2Config(
        **shape,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(cfg)
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} plus {i + 1}?"}]} for i in range(64)]

    def digits(completions, **_):
        texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
        return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]

    # A fixed fingerprint: datasets otherwise hashes the new table with dill, which failed on the H200's Python 3.12.3
    # ("Can't pickle <class 'MonthDayNano'>", before any GRPO step); the check needs no cache of it.
    prompts = datasets.Dataset(datasets.table.InMemoryTable.from_pylist(rows), fingerprint="sft2rl-gpu-check-prompts")
    gen_s: list[float] = []

    class Timed(GRPOTrainer):
        def _generate(self, prompts):
            sync(device)
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            sync(device)
            gen_s.append(time.perf_counter() - t0)
            return out

    n = p["prompts"] * p["generations"]
    args = GRPOConfig(
        output_dir=str(workdir / "grpo"),
        use_cpu=device.type != "cuda",
        bf16=device.type == "cuda",
        max_steps=p["grpo_steps"],
        per_device_train_batch_size=n,
        num_generations=p["generations"],
        max_completion_length=p["completion"],
        temperature=1.0,
        top_k=0,
        learning_rate=1e-6,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    trainer = Timed(
        model=model,
        reward_funcs=[digits],
        args=args,
        train_dataset=prompts,
        processing_class=tok,
    )
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "step_time" in h or "completions/mean_length" in h]
    lengths = [h["completions/mean_length"] for h in logs if "completions/mean_length" in h]
    steady = list(zip(gen_s, lengths, strict=False))[1:] or list(zip(gen_s, lengths, strict=False))
    return {
        "model": p["body"],
        "parameters": sum(t.numel() for t in model.parameters()),
        "batch": f"{p['prompts']} prompts x {p['generations']} completions, up to {p['completion']} tokens",
        "steps": len(gen_s),
        "train_s": total,
        "generation_s": gen_s,
        "generation_tokens_per_s": statistics.median(n * ln / s for s, ln in steady) if steady else None,
        "step_time_s": [h["step_time"] for h in logs if "step_time" in h],
    }


def write(path: Path, result: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({k: v for k, v in result.items() if not k.startswith("_")}, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON to write (on the device: under $OUT)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, seconds: the test of this script")
    parser.add_argument("--deadline-s", type=float, default=420.0, help="skip the parts that would start later")
    parser.add_argument("--parts", default="anchors,steps,grpo")
    args = parser.parse_args(argv)
    import torch

    imports_done()
    p = SMOKE if args.smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if not args.smoke and device.type != "cuda":
        raise SystemExit("no CUDA GPU visible: run with --smoke on a CPU machine")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"mode": "smoke" if args.smoke else "full", "settings": p, "machine": machine(device), "parts": {}}
    result["plan_s_on_h200"] = plan(p)  # the sizing, to compare with each part's part_s
    start = time.perf_counter()
    write(out, result)
    planned = result["plan_s_on_h200"] if not args.smoke else {}
    for name in [x for x in args.parts.split(",") if x]:  # --parts "": none (the arms alone)
        elapsed = time.perf_counter() - start
        if elapsed + 1.5 * planned.get(name, 0.0) > args.deadline_s:  # would not finish in time: skipped
            result["parts"][name] = {
                "skipped": f"deadline: {elapsed:.0f} s used, about {planned.get(name, 0.0):.0f} s planned, of "
                f"{args.deadline_s:.0f} s"
            }
            continue
        t0 = time.perf_counter()
        try:
            if name == "anchors":
                got = part_anchors(p, device, result)
            elif name == "steps":
                got = part_steps(p, device, result)
            elif name == "grpo":
                got = part_grpo(p, device, result, out.parent)
            else:
                raise ValueError(f"unknown part {name!r}: choose from anchors, steps, grpo")
        except Exception as e:  # noqa: BLE001 - one failed part is recorded; the others still run
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)  # whole, in the call's log; the JSON keeps where it began and ended
            short = tb if len(tb) < 6000 else f"{tb[:3000]}\n...\n{tb[-3000:]}"
            got = {"error": f"{type(e).__name__}: {e}", "traceback": short}
        got["part_s"] = time.perf_counter() - t0
        result["parts"][name] = got
        write(out, result)
        print(f"{name}: {got.get('part_s', 0):.1f} s", flush=True)
    result["total_s"] = time.perf_counter() - start
    write(out, result)
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("_")}, indent=2)[:6000])
    return 0 if all("error" not in v for v in result["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
