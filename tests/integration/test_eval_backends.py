"""Evaluation generates the same way on both backends: one precision (float32 on the CPU), greedy exactly when the
temperature is 0, the full softmax when sampling (no silent top-k of 50)."""

from __future__ import annotations

import pytest

from stages.evaluate import HFGenerator, VLLMGenerator, eval_dtype
from stages.models import load_model, load_tokenizer, resolve_model


def test_vllm_and_transformers_greedy_outputs_agree_in_float32(tiny_cfg):
    cfg = tiny_cfg("eval.backend=vllm")
    assert eval_dtype(cfg) == "float32"
    path = resolve_model(cfg)
    tok = load_tokenizer(path, cfg.model)
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": f"{i} + {i + 3} ="}], tokenize=False, add_generation_prompt=True
        )
        for i in range(8)
    ]
    engine = VLLMGenerator(path, cfg, 512)
    try:
        greedy_vllm = engine.generate(prompts, n=1, temperature=0.0, max_new_tokens=12, seed=0)
        sampled_vllm = engine.generate(prompts, n=3, temperature=1.0, max_new_tokens=12, seed=0)
    finally:
        engine.close()
    hf = HFGenerator(load_model(path, cfg.model, eval_dtype(cfg, torch_dtype=True)).eval(), tok, 8)
    greedy_hf = hf.generate(prompts, n=1, temperature=0.0, max_new_tokens=12, seed=0)
    assert greedy_vllm == greedy_hf  # same precision, same greedy decoding: the same text
    sampled_hf = hf.generate(prompts, n=3, temperature=1.0, max_new_tokens=12, seed=0)
    assert [len(x) for x in sampled_vllm] == [len(x) for x in sampled_hf] == [3] * 8
    one = hf.generate(prompts, n=1, temperature=1.0, max_new_tokens=12, seed=1)  # samples: 1 is sampled, not greedy
    assert one != greedy_hf


def test_in_process_engines_one_after_another_answer_as_vllms_own_layout_does(tmp_path, cache_dir):
    """The evaluation stage's CPU engines run inside its process, one per model: two in a row start, give the same
    greedy answers as an engine in vLLM's own process layout (which the test above ties to transformers), leave no
    engine process behind and leave the environment as they found it; the same count sees the other layout's engine
    process (so it can fail)."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import CONFIGS, REPO

    cmd = [sys.executable, str(REPO / "tests" / "integration" / "eval_engine_driver.py"), str(CONFIGS / "tiny.yaml")]
    cmd += [f"runs_root={tmp_path / 'runs'}", f"cache_dir={cache_dir}", "eval.backend=vllm"]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT "))
    first, second, separate = r["runs"]
    assert first["in_process"] and second["in_process"] and not separate["in_process"]
    assert first["children"] == second["children"] == 0 and separate["children"] >= 1
    assert len(first["greedy"]) == len(r["prompts"]) == 6
    assert first["greedy"] == second["greedy"] == separate["greedy"]
    assert r["flag_before"] is None and all(x["flag_after"] is None for x in r["runs"])


def test_the_evaluation_stage_runs_on_vllm_inside_its_process(tmp_path, cache_dir):
    """`sft2rl stage evaluate` with eval.backend=vllm on the tiny model (whose 1,024 positions are fewer than the
    engine's default length): greedy and sampled scores written for two models, one engine each."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import CONFIGS, REPO

    benches = [{"name": "chain_sum", "source": "train_task", "domain": "in", "size": 8, "max_new_tokens": 8}]
    benches[0]["samples"] = 2
    cmd = [sys.executable, "-m", "stages.evaluate", "--config", str(CONFIGS / "tiny.yaml")]
    cmd += [f"runs_root={tmp_path / 'runs'}", f"cache_dir={cache_dir}", "eval.backend=vllm"]
    cmd += [f"eval.benchmarks={json.dumps(benches)}", "eval.forgetting.enabled=false", "eval.models=[base]"]
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics,) = (tmp_path / "runs").rglob("eval/base/metrics.json")
    m = json.loads(metrics.read_text())
    assert m["metrics"]["chain_sum/accuracy"]["n"] == 8 and m["metrics"]["chain_sum/avg@2"]["n"] == 8
    assert m["timing"]["generation_s"] > 0
    assert len((metrics.parent / "outputs.jsonl").read_text().splitlines()) == 8


def test_requests_submitted_together_answer_as_one_at_a_time(tiny_cfg):
    """The evaluation submits every benchmark's greedy and sampled prompts in one call: greedy answers are those
    of each request alone (vLLM and transformers), each request gets its own n and length, in its order."""
    from stages.generation import Request

    cfg = tiny_cfg("eval.backend=vllm")
    path = resolve_model(cfg)
    tok = load_tokenizer(path, cfg.model)
    a = [f"{i} + {i + 3} =" for i in range(6)]
    b = [f"say {w}" for w in ("one", "two", "three")]
    requests = [Request(a, 1, 0.0, 12, 0), Request(a, 3, 1.0, 12, 0), Request(b, 1, 0.0, 5, 0)]
    engine = VLLMGenerator(path, cfg, 512)
    try:
        together = engine.generate_all(requests)
        alone = [engine.generate(r.prompts, **r.params()) for r in (requests[0], requests[2])]
    finally:
        engine.close()
    assert [len(x) for x in together] == [6, 6, 3]
    assert [len(x) for x in together[1]] == [3] * 6 and all(len(x) == 1 for x in together[0] + together[2])
    assert [together[0], together[2]] == alone
    assert (
        max(len(tok(x[0])["input_ids"]) for x in together[2])
        <= 5
        < max(len(tok(x[0])["input_ids"]) for x in together[0])
    )
    hf = HFGenerator(load_model(path, cfg.model, eval_dtype(cfg, torch_dtype=True)).eval(), tok, 8)
    hf_together = hf.generate_all(requests)
    assert [hf_together[0], hf_together[2]] == alone  # the same precision: the same greedy text
    assert [len(x) for x in hf_together[1]] == [3] * 6


def test_choice_scores_batched_by_length_equal_each_sequence_alone(tiny_cfg):
    """Multiple-choice scoring batches options of different lengths with padding and keeps only the logits that
    score an option: each option's log-likelihood is that of its sequence scored alone, with or without the
    model's logits_to_keep, in the items' order."""
    import inspect

    import torch

    from stages.evaluate import choice_correct, choice_scores

    cfg = tiny_cfg()
    path = resolve_model(cfg)
    tok = load_tokenizer(path, cfg.model)
    model = load_model(path, cfg.model, torch.float32).eval()
    assert "logits_to_keep" in inspect.signature(model.forward).parameters  # so the first pass keeps few logits
    items = [
        {"question": "The sky is", "choices": ["blue", "a very long and winding answer here", "x"], "answer": 0},
        {"question": "", "choices": ["short", "much longer option text for this one"], "answer": 1},
        {"question": "Two plus two equals a number that is", "choices": ["four", "five"], "answer": 0},
    ] * 3
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def alone(it, c):
        ctx = [start] + (tok(it["question"], add_special_tokens=False)["input_ids"] if it["question"] else [])
        cont = tok((" " + c) if it["question"] else c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].float(), -1)
        return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))

    expected = [[alone(it, c) for c in it["choices"]] for it in items]

    class NoKeep(torch.nn.Module):  # a model whose forward has no logits_to_keep: every position's logits
        def __init__(self, inner):
            super().__init__()
            self.inner, self.device = inner, inner.device

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    for m in (model, NoKeep(model)):
        got = choice_scores(m, tok, items, batch_size=4)
        assert [len(x) for x in got] == [len(x) for x in expected]
        for g, e in zip(got, expected, strict=True):
            assert g == pytest.approx(e, abs=1e-4)
    best = [float(max(range(len(e)), key=e.__getitem__) == it["answer"]) for it, e in zip(items, expected, strict=True)]
    assert choice_correct(model, tok, items, batch_size=4) == best
