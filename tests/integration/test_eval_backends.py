"""Evaluation generates the same way on both backends: one precision (float32 on the CPU), greedy exactly when the
temperature is 0, the full softmax when sampling (no silent top-k of 50)."""

from __future__ import annotations

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
