"""Greedy accuracy of a model folder on a built-in task (the measurement behind the CPU default's task choice).

Items come from a seed other than training's and any question that occurs in the training data is dropped.
Scoring: ``strict`` = the number after the last ``####`` equals the gold answer; ``lenient`` = the last integer
in the output equals it. Intervals are 95% Wilson intervals. Writes JSON.

    python benchmarks/task_accuracy.py --config configs/smollm2-cpu.yaml --model base --n 100 --out FILE
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.startup import defer_collection, imports_done

defer_collection(__name__)  # the imports in main, as in a stage process (stages/startup.py)

_STRICT = re.compile(r"####\s*(-?\d[\d,]*)")
_INT = re.compile(r"-?\d[\d,]*")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def score(text: str, gold: str) -> tuple[bool, bool]:
    strict = _STRICT.findall(text)
    ints = _INT.findall(text)
    norm = gold.replace(",", "").strip()
    return (bool(strict) and strict[-1].replace(",", "") == norm, bool(ints) and ints[-1].replace(",", "") == norm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--model", default="base", help="'base' (the config's model) or a checkpoint folder")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=999_001, help="evaluation item seed (not the training seed)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    import torch

    from stages.config import load_config
    from stages.data import build_items
    from stages.models import load_model, load_tokenizer, resolve_model

    imports_done()
    cfg = load_config(args.config, args.overrides)
    path = resolve_model(cfg) if args.model == "base" else args.model
    tok = load_tokenizer(path, cfg.model)
    tok.padding_side = "left"
    model = load_model(path, cfg.model).eval()
    train_q = {x["question"] for x in build_items(cfg.data)}
    items = [
        x for x in build_items(cfg.data, size=args.n + len(train_q), seed=args.seed) if x["question"] not in train_q
    ]
    items = items[: args.n]
    t0 = time.perf_counter()
    outputs: list[str] = []
    new_tokens = 0
    for i in range(0, len(items), args.batch):
        chunk = items[i : i + args.batch]
        prompts = [
            tok.apply_chat_template(
                [{"role": "system", "content": cfg.data.system_prompt}, {"role": "user", "content": x["question"]}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for x in chunk
        ]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        gen = out[:, enc["input_ids"].shape[1] :]
        new_tokens += int((gen != tok.pad_token_id).sum())
        outputs += tok.batch_decode(gen, skip_special_tokens=True)
    seconds = time.perf_counter() - t0
    scores = [score(o, x["answer"]) for o, x in zip(outputs, items, strict=True)]
    n = len(items)
    strict = sum(s for s, _ in scores)
    lenient = sum(le for _, le in scores)
    result = {
        "config": args.config,
        "model": path,
        "tasks": [t.model_dump() for t in cfg.data.tasks],
        "n": n,
        "strict_accuracy": strict / n,
        "strict_ci95": wilson(strict, n),
        "lenient_accuracy": lenient / n,
        "lenient_ci95": wilson(lenient, n),
        "well_formed": sum(bool(_STRICT.search(o)) for o in outputs) / n,
        "generation_s": seconds,
        "new_tokens": new_tokens,
        "examples": [
            {"question": x["question"], "gold": x["answer"], "output": o}
            for x, o in list(zip(items, outputs, strict=True))[:5]
        ],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
