"""The evaluation stage computes the base model's forward outputs on the forgetting texts once and reuses them for
every model: the metrics are those computed afresh, and the base's forward runs once per set of texts."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stages.config import load_config
from stages.evaluate import BaseStates, forgetting_metrics, sampled_kl


def _model(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    return LlamaForCausalLM(cfg).eval()


def _seqs(seed: int, n: int = 5) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "prompt": torch.randint(1, 64, (3 + i,), generator=g).tolist(),
            "response": torch.randint(1, 64, (4 + i,), generator=g).tolist(),
        }
        for i in range(n)
    ]


def test_cached_base_states_give_the_metrics_computed_afresh_with_one_base_forward():
    cfg = load_config(None, ["eval.forgetting.cka_bootstrap=20", "eval.bootstrap=100"])
    base, models = _model(0), [_model(1), _model(2)]
    greedy, sampled = _seqs(3), _seqs(4)
    calls = []
    base.register_forward_hook(lambda *_: calls.append(1))
    states = BaseStates(base)
    for model in models:
        fresh = forgetting_metrics(cfg, model, base, greedy)
        cached = forgetting_metrics(cfg, model, base, greedy, states.of(greedy, "greedy", hidden=True))
        assert cached == fresh
        fresh_kl = sampled_kl(cfg, model, base, sampled)
        cached_kl = sampled_kl(cfg, model, base, sampled, states.of(sampled, "sampled", hidden=False))
        assert cached_kl == fresh_kl
        assert fresh["metrics"]["forgetting/kl_to_base"]["value"] > 0  # a different model: a KL to read
    batches = -(-len(greedy) // 8)  # _forward_states' batch of 8
    # afresh: the base runs per model and set; cached: once per set for all models
    assert len(calls) == 2 * len(models) * batches + 2 * batches
