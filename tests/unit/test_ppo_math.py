"""PPO's pieces with hand-computed expectations."""

from __future__ import annotations

import math

import pytest
import torch

from stages.ppo import clipped_policy_loss, clipped_value_loss, gae, whiten


def test_gae_lambda_one_gives_monte_carlo_returns():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.5, 0.5]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=1.0, lam=1.0)
    # delta = (0, 0, 0.5): A_t = sum of later deltas = 0.5 everywhere; returns = A + V = 1 = the episode return.
    assert adv.tolist() == [[0.5, 0.5, 0.5]]
    assert ret.tolist() == [[1.0, 1.0, 1.0]]


def test_gae_lambda_half_and_padding():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.5, 0.5]])
    adv, _ = gae(r, v, torch.ones(1, 3), gamma=1.0, lam=0.5)
    assert adv.tolist() == [[0.125, 0.25, 0.5]]  # A2 = 0.5, A1 = 0 + 0.5 * 0.5, A0 = 0 + 0.5 * 0.25
    # The episode ends at t = 1 (t = 2 is padding): its value must not leak into the advantage.
    r = torch.tensor([[0.0, 1.0, 7.0]])
    v = torch.tensor([[0.5, 0.5, 9.0]])
    adv, ret = gae(r, v, torch.tensor([[1.0, 1.0, 0.0]]), gamma=1.0, lam=0.5)
    assert adv.tolist() == [[0.25, 0.5, 0.0]]  # delta1 = 1 - 0.5, delta0 = 0 + 0.5 - 0.5; A0 = 0.5 * 0.5
    assert ret[0, 2] == 0


def test_clipped_policy_loss_values():
    old = torch.zeros(1, 2)
    new = torch.full((1, 2), math.log(1.5))  # ratio 1.5
    mask = torch.ones(1, 2)
    # Positive advantage: the clip caps the gain at 1 + eps = 1.2 -> loss -1.2, clipped everywhere.
    loss, frac = clipped_policy_loss(new, old, torch.ones(1, 2), mask, eps=0.2)
    assert float(loss) == pytest.approx(-1.2) and float(frac) == 1.0
    # Negative advantage: the pessimistic (unclipped) term 1.5 wins; the clip is not active.
    loss, frac = clipped_policy_loss(new, old, -torch.ones(1, 2), mask, eps=0.2)
    assert float(loss) == pytest.approx(1.5) and float(frac) == 0.0
    # Masked tokens do not count.
    loss, _ = clipped_policy_loss(new, old, torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0, 0.0]]), eps=0.2)
    assert float(loss) == pytest.approx(-1.2)


def test_clipped_value_loss_values():
    mask = torch.ones(1, 1)
    # V moved from 0 to 1, target 1, eps 0.2: unclipped error 0, clipped V = 0.2 -> error 0.64; max -> 0.5 * 0.64.
    loss = clipped_value_loss(torch.ones(1, 1), torch.zeros(1, 1), torch.ones(1, 1), mask, eps=0.2)
    assert float(loss) == pytest.approx(0.32)


def test_whiten_masked():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    w = whiten(x, torch.tensor([[1.0, 1.0, 0.0]]))
    assert w[0, :2].tolist() == pytest.approx([-1.0, 1.0], abs=1e-3) and w[0, 2] == 0


def test_ppo_log_probs_are_those_of_the_sampling_distribution():
    """Rollouts are sampled at temperature T from the full softmax (top_k=0); the ratios and KL must use the same
    distribution: log_softmax(logits / T), for the policy and the reference alike."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from stages.ppo import PolicyWithValue, sequence_logp

    torch.manual_seed(0)
    lm = LlamaForCausalLM(
        LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).eval()
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = lm(input_ids=ids).logits[:, -4:-1].float()
        for t in (1.0, 0.7):
            want = torch.log_softmax(logits / t, -1).gather(-1, ids[:, -3:].unsqueeze(-1)).squeeze(-1)
            got, _ = PolicyWithValue(lm, temperature=t)(ids, mask, 3)
            assert torch.allclose(got, want, atol=1e-6)
            assert torch.allclose(sequence_logp(lm, ids, mask, 3, t), want, atol=1e-6)


def _tiny_lm(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, **kw
        )
    ).eval()


def test_rollouts_sample_from_the_tempered_softmax_whatever_the_checkpoints_generation_config_says():
    """transformers fills every unset sampling field from the checkpoint's generation_config (Qwen2.5-Instruct ships
    repetition_penalty 1.05); PPO scores samples with softmax(logits / T), so every other processor must be off."""
    from stages.ppo import PLAIN_SAMPLING

    lm = _tiny_lm()
    g = lm.generation_config
    g.repetition_penalty, g.no_repeat_ngram_size, g.min_p, g.top_k, g.top_p = 1.3, 2, 0.2, 5, 0.5
    g.typical_p, g.min_new_tokens = 0.9, 3
    x = torch.randint(0, 50, (1, 5))

    def scores_vs_logits(extra: dict) -> float:
        out = lm.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            do_sample=True,
            temperature=0.7,
            max_new_tokens=6,
            num_return_sequences=3,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_scores=True,
            output_logits=True,
            **extra,
        )
        return max(float((s - lg / 0.7).abs().max()) for s, lg in zip(out.scores, out.logits, strict=True))

    assert scores_vs_logits({"top_k": 0, "top_p": 1.0}) > 1  # the checkpoint's processors leak in
    assert scores_vs_logits(PLAIN_SAMPLING) == 0.0


def test_a_completion_ends_at_any_of_the_models_end_tokens():
    from stages.ppo import cut_at_eos, end_tokens

    lm = _tiny_lm()
    lm.generation_config.eos_token_id = [7, 9]

    class Tok:
        eos_token_id = 7

    assert end_tokens(lm, Tok()) == {7, 9}
    assert cut_at_eos([1, 2, 9, 0, 0], {7, 9}) == [1, 2, 9]  # stopped at the second end token, then padding
    assert cut_at_eos([1, 2, 3], {7, 9}) == [1, 2, 3]  # cut by the length limit


def test_sampling_seeds_are_distinct_and_reproducible():
    from stages.ppo import sample_seed

    seeds = {sample_seed(s, step, p, k) for s in (0, 1) for step in range(50) for p in range(64) for k in (0, 1, 2)}
    assert len(seeds) == 2 * 50 * 64 * 3 and all(0 <= x < 2**63 for x in seeds)
    assert sample_seed(3, 4, 5) == sample_seed(3, 4, 5)


def test_a_ppo_checkpoint_of_a_model_with_tied_embeddings_saves_and_resumes(tmp_path):
    from stages.ppo import PolicyWithValue
    from stages.rl import ppo_resume, ppo_save

    model = PolicyWithValue(_tiny_lm(tie_word_embeddings=True))
    assert model.policy.lm_head.weight.data_ptr() == model.policy.model.embed_tokens.weight.data_ptr()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 50, (2, 6)), torch.ones(2, 6, dtype=torch.long), 3)[0].sum().backward()
    opt.step()
    ppo_save(model, opt, tmp_path, step=2, keep=1)
    fresh = PolicyWithValue(_tiny_lm(tie_word_embeddings=True))
    got = ppo_resume(fresh, tmp_path)
    assert got["step"] == 2 and set(got["optimizer"]["state"]) == set(opt.state_dict()["state"])
    for (n, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_ppo_resumes_from_the_newest_checkpoint_that_is_whole_by_the_one_rule(tmp_path, caplog):
    """PPO's checkpoints follow the rule SFT and GRPO resume by (stages.checkpointing.last_complete_checkpoint): the
    newest checkpoint-N whose state reads; a torn newer one (its state.json cut by a kill) is skipped with a warning,
    and checkpoint-10 sorts after checkpoint-9 (by step, not by name)."""
    from stages import checkpointing
    from stages.ppo import PolicyWithValue
    from stages.rl import ppo_resume, ppo_save

    model = PolicyWithValue(_tiny_lm())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ppo_save(model, opt, tmp_path, step=9, keep=5)
    ppo_save(model, opt, tmp_path, step=10, keep=5)
    assert [p.name for p in checkpointing.checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-10"]
    assert ppo_resume(PolicyWithValue(_tiny_lm()), tmp_path)["step"] == 10
    (tmp_path / "checkpoint-10" / "state.json").write_text('{"st')  # torn by a kill
    with caplog.at_level("WARNING"):
        got = ppo_resume(PolicyWithValue(_tiny_lm()), tmp_path)
    assert got["step"] == 9 and got["folder"].name == "checkpoint-9"
    assert "skipping incomplete trainer checkpoint" in caplog.text
    (tmp_path / "checkpoint-9" / "state.json").unlink()
    assert ppo_resume(PolicyWithValue(_tiny_lm()), tmp_path) is None  # none whole: PPO starts from scratch
