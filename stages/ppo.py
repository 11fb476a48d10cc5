"""PPO for language models, small and readable, on transformers building blocks (TRL 1.16 has no PPO trainer).

One step: sample completions from the current policy -> score them (registered rewards) -> per-token rewards with a
KL penalty to the initial policy -> values from a value head on the policy's last hidden state -> GAE -> a few
epochs of clipped policy and value updates over mini-batches.

    token reward     r_t = -kl_coef * (log pi(y_t) - log pi_ref(y_t))   (+ the sequence reward at the last token)
    GAE              delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1},  returns = A + V
    policy loss      mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)),  rho_t = pi / pi_old
    value loss       0.5 mean_t max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over the valid (mask = 1) tokens of each row; zero elsewhere.

    Args:
        rewards, values, mask: (B, T). Values after the last valid token count as 0 (the episode ends there).
    Returns:
        (advantages, returns), both (B, T).
    """
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m
        adv[:, t] = last
        next_value = values[:, t] * m  # a padded position passes 0 to the token before it
    return adv, (adv + values) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def clipped_policy_loss(logp, old_logp, adv, mask, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (to minimise) and the fraction of tokens where the clip was active."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - eps, 1 + eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def clipped_value_loss(values, old_values, returns, mask, eps: float) -> torch.Tensor:
    v_clipped = old_values + (values - old_values).clamp(-eps, eps)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


class PolicyWithValue(torch.nn.Module):
    """A causal LM and a scalar value head on its last hidden state."""

    def __init__(self, policy, temperature: float = 1.0):
        super().__init__()
        self.policy = policy
        self.temperature = temperature  # log-probs of the distribution the rollouts are sampled from
        hidden = policy.config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, n_completion: int):
        """Log-probs of the last ``n_completion`` tokens and the values at the positions that predict them."""
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        logits = out.logits[:, -n_completion - 1 : -1].float() / self.temperature  # (B, Tc, V)
        targets = input_ids[:, -n_completion:]
        logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        values = self.value_head(out.hidden_states[-1][:, -n_completion - 1 : -1].float()).squeeze(-1)
        return logp, values


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (B, Tp + Tc), prompts left-padded
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor  # (B, Tc): tokens up to and including EOS
    texts: list[str]
    n_completion: int


def sequence_logp(model, input_ids, attention_mask, n_completion: int, temperature: float = 1.0) -> torch.Tensor:
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -n_completion - 1 : -1].float()
    logits = logits / temperature
    return torch.log_softmax(logits, -1).gather(-1, input_ids[:, -n_completion:].unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def rollout(policy, tokenizer, prompts: list[str], num_generations: int, gen_kwargs: dict) -> Rollout:
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(policy.device) for k, v in enc.items()}
    # top_k=0 explicitly: transformers would otherwise fill top_k=50 from the generation config, and the ratios and KL
    # (full softmax at the same temperature) would be computed for a distribution the samples do not come from
    out = policy.generate(
        **enc,
        do_sample=True,
        num_return_sequences=num_generations,
        pad_token_id=tokenizer.pad_token_id,
        **{"top_k": 0, **gen_kwargs},
    )
    n_prompt = enc["input_ids"].shape[1]
    completion = out[:, n_prompt:]
    is_eos = (completion == tokenizer.eos_token_id).int()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0
    completion_mask = (~after_eos).float()
    prompt_mask = enc["attention_mask"].repeat_interleave(num_generations, 0)
    attention_mask = torch.cat([prompt_mask, completion_mask.long()], 1)
    texts = tokenizer.batch_decode(completion * (~after_eos), skip_special_tokens=True)
    return Rollout(out, attention_mask, completion_mask, texts, completion.shape[1])


@dataclass
class PPOSettings:
    learning_rate: float
    max_steps: int
    prompts_per_step: int
    num_generations: int
    ppo_epochs: int
    num_mini_batches: int
    gamma: float
    lam: float
    cliprange: float
    cliprange_value: float
    vf_coef: float
    kl_coef: float
    max_grad_norm: float
    weight_decay: float
    gen_kwargs: dict


def train_ppo(
    model: PolicyWithValue,
    ref_model,
    tokenizer,
    prompts: list[dict[str, Any]],
    reward_fn: Callable[[list[str], list[dict[str, Any]]], list[float]],
    s: PPOSettings,
    on_step: Callable[[dict[str, float]], None],
    *,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    on_save: Callable[[int, torch.optim.Optimizer], None] | None = None,
    save_steps: int = 0,
) -> None:
    """Run PPO steps ``start_step + 1 .. s.max_steps``; ``prompts`` are dicts with ``text`` (chat-formatted) and
    reward columns. ``on_save(step, optimizer)`` runs after every ``save_steps`` steps (a checkpoint); a resumed run
    passes the checkpoint's step and optimizer state (the caller restores weights and RNG), and continues exactly as
    the uninterrupted run would."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    for step in range(start_step, s.max_steps):
        t0 = time.perf_counter()
        start = (step * s.prompts_per_step) % len(prompts)
        batch = [prompts[(start + i) % len(prompts)] for i in range(s.prompts_per_step)]
        model.eval()
        ro = rollout(model.policy, tokenizer, [b["text"] for b in batch], s.num_generations, s.gen_kwargs)
        t_gen = time.perf_counter() - t0
        rows = [b for b in batch for _ in range(s.num_generations)]
        scores = torch.tensor(reward_fn(ro.texts, rows), dtype=torch.float32, device=ro.input_ids.device)
        mask = ro.completion_mask
        with torch.no_grad():
            old_logp, old_values = model(ro.input_ids, ro.attention_mask, ro.n_completion)
            ref_logp = sequence_logp(ref_model, ro.input_ids, ro.attention_mask, ro.n_completion, model.temperature)
            kl = (old_logp - ref_logp) * mask
            rewards = -s.kl_coef * kl
            last = (mask.sum(1).long() - 1).clamp(min=0)  # index of the last completion token (EOS if it ended)
            rewards[torch.arange(len(last)), last] += scores
            adv, returns = gae(rewards, old_values * mask, mask, s.gamma, s.lam)
            adv = whiten(adv, mask)
        model.train()
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clipfrac": []}
        n = ro.input_ids.shape[0]
        mb = max(1, n // s.num_mini_batches)
        for _ in range(s.ppo_epochs):
            perm = torch.randperm(n)
            for i in range(0, n, mb):
                idx = perm[i : i + mb]
                logp, values = model(ro.input_ids[idx], ro.attention_mask[idx], ro.n_completion)
                pg, clipfrac = clipped_policy_loss(logp, old_logp[idx], adv[idx], mask[idx], s.cliprange)
                vf = clipped_value_loss(values, old_values[idx], returns[idx], mask[idx], s.cliprange_value)
                loss = pg + s.vf_coef * vf
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"PPO loss is {float(loss)} at step {step + 1}; lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if s.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
                opt.step()
                stats["policy_loss"].append(float(pg.detach()))
                stats["value_loss"].append(float(vf.detach()))
                stats["clipfrac"].append(float(clipfrac))
        grouped = scores.view(-1, s.num_generations)
        on_step(
            {
                "step": step + 1,
                "reward": float(scores.mean()),
                "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
                "frac_reward_zero_std": float((grouped.std(1) == 0).float().mean()) if s.num_generations > 1 else 1.0,
                "kl": float(kl.sum(1).mean()),
                "completions/mean_length": float(mask.sum(1).mean()),
                "policy_loss": sum(stats["policy_loss"]) / len(stats["policy_loss"]),
                "value_loss": sum(stats["value_loss"]) / len(stats["value_loss"]),
                "clip_ratio/region_mean": sum(stats["clipfrac"]) / len(stats["clipfrac"]),
                "timing/generation_s": t_gen,
                "timing/training_s": time.perf_counter() - t0 - t_gen,
            }
        )
        if on_save is not None and save_steps and (step + 1) % save_steps == 0 and step + 1 < s.max_steps:
            on_save(step + 1, opt)


def value_head_state(model: PolicyWithValue) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.value_head.state_dict().items()}
