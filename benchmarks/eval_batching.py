"""How one model's evaluation batches its work, before and after, measured side by side. Writes JSON.

    python benchmarks/eval_batching.py --out benchmarks/results/eval_batching.json [--model PATH]

The committed file: ``--model runs/smollm2-cpu/seeds/seed-0/sft/checkpoint`` (seed 0's SFT arm of ``make run``).

1. Generation: the evaluation's own requests for one model (every generation benchmark's greedy answers and the
   sampled answers of those with ``samples``) answered by one in-process vLLM engine (the evaluation stage's on a
   CPU), one request at a time (before) vs all in one submission (``VLLMGenerator.generate_all``, after). Rounds
   alternate on the same engine (and which goes first alternates), so drift hits both; the greedy answers of the two
   are compared.
2. Multiple choice: every choice benchmark scored in the items' order with the full vocabulary's log-softmax at every
   position (before, kept here as it was) vs batched by length with only the scoring positions' logits
   (``stages.evaluate.choice_scores``, after); the choices and the largest score difference are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def scores_before(model, tok, items, batch_size: int) -> list[list[float]]:
    """Multiple-choice scoring as the evaluation did it before: item order, every position's log-softmax."""
    import torch

    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    seqs = []
    for it in items:
        ctx = [start] + (tok(it["question"], add_special_tokens=False)["input_ids"] if it["question"] else [])
        for c in it["choices"]:
            cont = tok((" " + c) if it["question"] else c, add_special_tokens=False)["input_ids"]
            seqs.append((ctx + cont, len(cont)))
    flat = []
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b : b + batch_size]
        width = max(len(s) for s, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, (s, _) in enumerate(chunk):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        with torch.no_grad():
            out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device))
            logp = torch.log_softmax(out.logits.float(), -1)
        for j, (s, k) in enumerate(chunk):
            pos = torch.arange(len(s) - k - 1, len(s) - 1)
            flat.append(float(logp[j, pos, torch.tensor(s[len(s) - k :], dtype=torch.long)].sum()))
    out, pos = [], 0
    for it in items:
        out.append(flat[pos : pos + len(it["choices"])])
        pos += len(it["choices"])
    return out


def _best(scores: list[list[float]]) -> list[int]:
    return [max(range(len(o)), key=o.__getitem__) for o in scores]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="configs/smollm2-cpu.yaml")
    parser.add_argument("--model", help="the model to evaluate (default: the config's base model)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="config overrides")
    args = parser.parse_args(argv)

    from stages import evaluate as ev
    from stages.backends import machine
    from stages.config import load_config
    from stages.eval_items import build_benchmark, training_items
    from stages.generation import Request
    from stages.models import load_model, load_tokenizer
    from stages.store import atomic_write_json

    cfg = load_config(args.config, args.overrides)
    path = args.model or ev._base_path(cfg)
    tok = load_tokenizer(path, cfg.model)
    trained = training_items(cfg)
    gen_benches, choice_benches = [], []
    for spec in cfg.eval.benchmarks:
        if spec.source == "lm_eval":
            continue
        items, _ = build_benchmark(cfg, spec, trained)
        (choice_benches if spec.is_choice else gen_benches).append((spec, items))
    requests = []
    for spec, items in gen_benches:
        prompts = [ev.item_prompt(tok, cfg, spec, x) for x in items]
        requests.append(Request(prompts, 1, 0.0, spec.max_new_tokens, spec.seed))
        if spec.samples:
            requests.append(Request(prompts, spec.samples, spec.temperature, spec.max_new_tokens, spec.seed))
    greedy = [i for i, r in enumerate(requests) if r.temperature == 0]

    engine = ev.VLLMGenerator(path, cfg, 2048, in_process=True)
    rows: dict[str, list[float]] = {"one_at_a_time_s": [], "together_s": []}
    same_greedy = True
    try:
        for round_ in range(args.rounds):
            got = {}
            for key in ("one_at_a_time_s", "together_s")[:: 1 if round_ % 2 == 0 else -1]:  # alternating
                t = time.perf_counter()
                if key == "together_s":
                    got[key] = engine.generate_all(requests)
                else:
                    got[key] = [engine.generate(r.prompts, **r.params()) for r in requests]
                rows[key].append(time.perf_counter() - t)
            same_greedy = same_greedy and all(got["one_at_a_time_s"][i] == got["together_s"][i] for i in greedy)
    finally:
        engine.close()
    answers = sum(len(r.prompts) * r.n for r in requests)
    generation = {
        "requests": [{"prompts": len(r.prompts), "n": r.n, "max_new_tokens": r.max_new_tokens} for r in requests],
        "answers": answers,
        **{k: [round(x, 2) for x in v] for k, v in rows.items()},
        "ratio": statistics.median(rows["together_s"]) / statistics.median(rows["one_at_a_time_s"]),
        "same_greedy_answers": same_greedy,
    }

    model = load_model(path, cfg.model, ev.eval_dtype(cfg, torch_dtype=True)).eval()
    crow: dict[str, list[float]] = {"before_s": [], "after_s": []}
    worst, same_choices = 0.0, True
    for round_ in range(args.rounds):
        got = {}
        pairs = (("before_s", scores_before), ("after_s", ev.choice_scores))
        for key, fn in pairs[:: 1 if round_ % 2 == 0 else -1]:  # alternating
            t = time.perf_counter()
            got[key] = [fn(model, tok, items, cfg.eval.batch_size) for _, items in choice_benches]
            crow[key].append(time.perf_counter() - t)
        for a, b in zip(got["before_s"], got["after_s"], strict=True):
            same_choices = same_choices and _best(a) == _best(b)
            worst = max([worst] + [abs(x - y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True)])
    choice = {
        "benchmarks": {spec.name: len(items) for spec, items in choice_benches},
        "batch_size": cfg.eval.batch_size,
        **{k: [round(x, 2) for x in v] for k, v in crow.items()},
        "ratio": statistics.median(crow["after_s"]) / statistics.median(crow["before_s"]),
        "same_choices": same_choices,
        "max_abs_score_diff": worst,
    }
    result = {
        "command": " ".join(["python", "benchmarks/eval_batching.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": cfg.model.source,
        "model_path": args.model or "the config's base model",
        "dtype": str(ev.eval_dtype(cfg)),
        "machine": machine(),
        "rounds": args.rounds,
        "generation": generation,
        "choice": choice,
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
