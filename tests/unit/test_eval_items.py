"""Evaluation sets keep the generator's distribution when training collisions are removed."""

from __future__ import annotations

from collections import Counter

from stages.eval_items import stratified_unseen


def test_dropping_seen_items_does_not_skew_the_set_toward_long_problems():
    # 60% short problems, 40% long; training has seen most short ones (short problems collide far more often).
    pool = [{"question": f"s{i}", "stratum": "2x1"} for i in range(300)]
    pool += [{"question": f"l{i}", "stratum": "3x2"} for i in range(200)]
    pool.sort(key=lambda x: int(x["question"][1:]))  # interleaved, as a generator yields them
    seen = {f"s{i}" for i in range(0, 300, 2)}  # half of the short ones
    naive = [x for x in pool if x["question"] not in seen][:100]
    chosen = stratified_unseen(pool, seen, 100)
    assert len(chosen) == 100 and not {x["question"] for x in chosen} & seen
    assert Counter(x["stratum"] for x in chosen) == {"2x1": 60, "3x2": 40}  # the pool's shares
    assert Counter(x["stratum"] for x in naive)["2x1"] < 60  # what dropping and truncating would give


def test_a_stratum_without_enough_unseen_items_gives_its_quota_to_the_rest():
    pool = [{"question": f"s{i}", "stratum": "a"} for i in range(10)] + [
        {"question": f"l{i}", "stratum": "b"} for i in range(10)
    ]
    seen = {f"s{i}" for i in range(9)}
    chosen = stratified_unseen(pool, seen, 10)
    assert len(chosen) == 10 and Counter(x["stratum"] for x in chosen) == {"a": 1, "b": 9}


def test_no_builtin_benchmark_source_repeats_an_item():
    import json

    from stages.config import load_config
    from stages.eval_items import build_benchmark

    extra = [
        {"name": "rg", "source": "reasoning_gym", "task": "chain_sum", "domain": "out", "size": 150},
        {"name": "gs", "source": "gsm_symbolic", "domain": "out", "size": 60},
        {"name": "g8", "source": "gsm8k", "domain": "out", "size": 60},
    ]
    cfg = load_config("configs/smollm2-cpu.yaml")
    specs = list(cfg.eval.benchmarks)
    specs += load_config("configs/smollm2-cpu.yaml", [f"eval.benchmarks={json.dumps(extra)}"]).eval.benchmarks
    for spec in specs:
        items, note = build_benchmark(cfg, spec)
        keys = [(x["question"], tuple(map(str, x.get("choices") or ()))) for x in items]
        assert len(set(keys)) == len(keys) == note["n"], spec.name
        if spec.source in ("train_task", "reasoning_gym", "chat_facts", "instructions", "agreement", "facts"):
            assert len(items) == spec.n_items, spec.name  # repeats replaced, not just dropped


def test_evaluation_and_the_prompt_filter_sample_where_the_run_trains(monkeypatch):
    """transformers evaluation and the RL prompt filter put their model on the GPU when the run is on one."""
    import torch

    from stages.config import load_config
    from stages.generation import eval_device

    cfg = load_config("configs/tiny.yaml", [])
    assert cfg.device == "cpu" and eval_device(cfg) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert eval_device(load_config("configs/tiny.yaml", ["device=auto"])) == "cuda"
    assert eval_device(load_config("configs/tiny.yaml", ["device=cuda"])) == "cuda"
    assert eval_device(load_config("configs/tiny.yaml", ["device=cpu"])) == "cpu"


def test_a_benchmarks_build_note_reads_as_what_was_left_out_and_why():
    from stages.evaluate import _note_text

    assert _note_text({"excluded": 0, "why": "", "n": 103}) == ""  # nothing left out: nothing said
    said = _note_text({"excluded": 77, "why": "question seen in SFT data or RL prompts", "n": 200})
    assert said == " (excluded 77: question seen in SFT data or RL prompts)"
    both = _note_text({"excluded": 3, "repeated_dropped": 2, "why": "template used in training", "n": 9})
    assert both == " (excluded 3, repeated dropped 2: template used in training)"
    assert (
        _note_text({"excluded": 0, "why": "", "engine": "lm-evaluation-harness"}) == " (engine lm-evaluation-harness)"
    )
