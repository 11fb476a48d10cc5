"""PPO for language models, small and readable, on transformers building blocks (TRL 1.16 has no PPO trainer).

One step: sample completions from the current policy -> score them (registered rewards) -> per-token rewards with a
KL penalty to the initial policy -> values from a value head on the policy's last hidden state -> GAE -> a few
epochs of clipped policy and value updates over mini-batches.

    token reward     r_t = -kl_coef * (log pi(y_t) - log pi_ref(y_t))   (+ the sequence reward at the last token)
    GAE              delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1},  returns = A + V
    policy loss      mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)),  rho_t = pi / pi_old
    value loss       0.5 mean_t max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)

Completions come from transformers ``generate`` (each prompt under its own seed) or from vLLM through TRL's
``VLLMGeneration`` (the engine GRPO uses, colocated or a server), with the trainer's weights pushed into it before each
step. Under ``accelerate launch`` several processes split each step's prompts and the update is the one-process update
on the whole batch (see :func:`train_ppo`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
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


def masked_mean(x: torch.Tensor, mask: torch.Tensor, denom: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``x`` over the mask, or its masked sum over ``denom`` (a mini-batch's global token count, when
    this process holds only a slice of the mini-batch)."""
    return (x * mask).sum() / (mask.sum().clamp(min=1) if denom is None else denom)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def clipped_policy_loss(logp, old_logp, adv, mask, eps: float, denom=None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (to minimise) and the fraction of tokens where the clip was active."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - eps, 1 + eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, denom)
    clipfrac = masked_mean((clipped > unclipped).float(), mask, denom)
    return loss, clipfrac


def clipped_value_loss(values, old_values, returns, mask, eps: float, denom=None) -> torch.Tensor:
    v_clipped = old_values + (values - old_values).clamp(-eps, eps)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2), mask, denom)


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
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            output_hidden_states=True,
        )
        logits = out.logits[:, -n_completion - 1 : -1].float() / self.temperature  # (B, Tc, V)
        targets = input_ids[:, -n_completion:]
        logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        values = self.value_head(out.hidden_states[-1][:, -n_completion - 1 : -1].float()).squeeze(-1)
        return logp, values


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (prompts are left-padded), as ``generate`` and vLLM
    number them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_logp(model, input_ids, attention_mask, n_completion: int, temperature: float = 1.0) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
    logits = out.logits[:, -n_completion - 1 : -1].float()
    logits = logits / temperature
    return torch.log_softmax(logits, -1).gather(-1, input_ids[:, -n_completion:].unsqueeze(-1)).squeeze(-1)


def sample_seed(seed: int, step: int, prompt: int, purpose: int = 0) -> int:
    """The seed of one prompt's completions at one step (``purpose`` 0; 1 + epoch: that epoch's mini-batch order): a
    function of the run's seed, the step and the prompt's position in the step's global batch only, so the same
    completions come out whatever the number of processes, the batch around the prompt, or a resume in between."""
    entropy = [seed % 2**32, step, purpose, prompt]
    return int(np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def cut_at_eos(ids: list[int], eos_ids: set[int]) -> list[int]:
    """The completion up to and including its first end token (what follows is padding)."""
    for i, t in enumerate(ids):
        if t in eos_ids:
            return list(ids[: i + 1])
    return list(ids)


def end_tokens(model, tokenizer) -> set[int]:
    """Every id that ends a completion: the tokenizer's EOS and the generation config's (a list for many chat
    models, e.g. Qwen2.5's <|im_end|> and <|endoftext|>); ``generate`` and vLLM stop at any of them."""
    ids = {tokenizer.eos_token_id}
    conf = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(conf) if isinstance(conf, list | tuple) else {conf}
    return {int(i) for i in ids if i is not None}


# Sampling exactly from softmax(logits / temperature): every other logits processor a checkpoint's
# generation_config may carry (transformers fills unset fields from it) is switched off, as vLLM is told.
PLAIN_SAMPLING = {
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_new_tokens": 0,
}


def assemble(
    prompt_ids: list[list[int]], completions: list[list[int]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One padded batch from token lists: prompts left-padded to the longest, completions right-padded.

    Returns:
        (input_ids, attention_mask, completion_mask); the completion mask marks each completion's own tokens.
    """
    tp = max(len(p) for p in prompt_ids)
    tc = max(1, max(len(c) for c in completions))
    ids = torch.full((len(completions), tp + tc), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    cmask = torch.zeros(len(completions), tc)
    for i, (p, c) in enumerate(zip(prompt_ids, completions, strict=True)):
        ids[i, tp - len(p) : tp] = torch.tensor(p, dtype=torch.long)
        attn[i, tp - len(p) : tp] = 1
        if c:
            ids[i, tp : tp + len(c)] = torch.tensor(c, dtype=torch.long)
            attn[i, tp : tp + len(c)] = 1
            cmask[i, : len(c)] = 1
    return ids.to(device), attn.to(device), cmask.to(device)


@dataclass
class Completion:
    ids: list[int]  # up to and including EOS
    sampling_logp: list[float] | None = None  # the engine's log-prob of each token (vLLM), None for transformers


class TransformersRollouts:
    """Samples with ``generate`` one prompt at a time, each under its own seed (:func:`sample_seed`): a prompt's
    completions never depend on which other prompts share its batch or process."""

    name = "hf"

    def __init__(self, policy, tokenizer, num_generations: int, gen_kwargs: dict):
        self.policy, self.tokenizer, self.n, self.gen_kwargs = policy, tokenizer, num_generations, gen_kwargs
        self.ends = end_tokens(policy, tokenizer)

    def sync(self) -> None:
        """Nothing to do: ``generate`` runs on the live policy."""

    @torch.no_grad()
    def __call__(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[Completion]:
        device = self.policy.device
        out: list[Completion] = []
        for ids, seed in zip(prompt_ids, seeds, strict=True):
            x = torch.tensor([ids], device=device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                # plain sampling explicitly: transformers would otherwise fill top_k=50 (and whatever the checkpoint's
                # generation config sets), and the ratios and KL (full softmax at the same temperature) would be
                # computed for a distribution the samples do not come from
                gen = self.policy.generate(
                    input_ids=x,
                    attention_mask=torch.ones_like(x),
                    do_sample=True,
                    num_return_sequences=self.n,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **{**self.gen_kwargs, **PLAIN_SAMPLING},
                )
            out += [Completion(cut_at_eos(row.tolist(), self.ends)) for row in gen[:, len(ids) :]]
        return out


class VLLMRollouts:
    """Samples with vLLM through TRL's ``VLLMGeneration`` (the engine GRPO uses: colocated in this process, or a
    ``trl vllm-serve`` server), with the trainer's weights pushed into it before each step's generation. vLLM returns
    the log-prob of every sampled token under the same temperature, which the step compares with the trainer's."""

    name = "vllm"

    def __init__(self, vllm_generation, tokenizer, num_generations: int):
        self.engine, self.tokenizer, self.n = vllm_generation, tokenizer, num_generations
        self.ends = end_tokens(vllm_generation.model, tokenizer)

    def sync(self) -> None:
        self.engine.sync_weights()

    def __call__(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[Completion]:  # noqa: ARG002
        # vLLM samples with its engine seed (set once, at start; a resumed run samples anew): seeds per prompt are
        # the transformers path's
        dup = [ids for ids in prompt_ids for _ in range(self.n)]
        _, completion_ids, logprobs, _ = self.engine.generate(prompts=dup, images=None, num_generations=self.n)
        out = []
        for i, ids in enumerate(completion_ids):
            ids = cut_at_eos(list(ids), self.ends)
            lp = None
            if logprobs is not None:
                lp = [float("nan") if t[0] is None else float(t[0]) for t in logprobs[i][: len(ids)]]
            out.append(Completion(ids, lp))
        return out


@dataclass
class PPOSettings:
    learning_rate: float
    max_steps: int
    prompts_per_step: int  # per process: the step's global batch is this times the number of processes
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
    seed: int = 0


def _gather_rows(accelerator, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's rows, in process order (the order one process would have produced them in)."""
    if accelerator is None or accelerator.num_processes == 1:
        return rows
    from accelerate.utils import gather_object  # lazy: only multi-process runs gather

    return gather_object(rows)


def _no_grad_pass(model, ref_model, ids, attn, n, temperature, accelerator, n_proc, rank):
    """Old log-probs, values and reference log-probs of the global batch: each process computes its share of the
    rows, then all processes gather the whole (same padded shape everywhere)."""
    chunks = torch.arange(ids.shape[0]).tensor_split(n_proc)
    mine = chunks[rank]
    # the reference runs under the same mixed precision as the policy (accelerate patches only prepared models)
    autocast = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        logp, values = model(ids[mine], attn[mine], n)
        ref = sequence_logp(ref_model, ids[mine], attn[mine], n, temperature)
    if n_proc == 1:
        return logp, values, ref
    # gather() concatenates along rows; every share is the same size (tensor_split of a multiple of n_proc)
    return tuple(accelerator.gather(t.contiguous()) for t in (logp, values, ref))


def train_ppo(
    model: PolicyWithValue,
    ref_model,
    tokenizer,
    prompts: list[dict[str, Any]],
    reward_fn: Callable[[list[str], list[dict[str, Any]]], tuple[list[float], dict[str, list[float]]]],
    s: PPOSettings,
    on_step: Callable[[dict[str, float]], None],
    *,
    rollouts=None,
    accelerator=None,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    on_save: Callable[[int, torch.optim.Optimizer], None] | None = None,
    save_steps: int = 0,
) -> None:
    """Run PPO steps ``start_step + 1 .. s.max_steps``; ``prompts`` are dicts with ``text`` (chat-formatted) and
    reward columns; ``reward_fn(texts, rows)`` gives each completion's reward and each reward function's part.
    ``rollouts`` samples completions (:class:`TransformersRollouts` by default, or :class:`VLLMRollouts`).
    ``on_step`` and ``on_save(step, optimizer)`` (every ``save_steps`` steps) run on the main process only; a resumed
    run passes the checkpoint's step and optimizer state (the caller restores the weights) and, with transformers
    generation, continues exactly as the uninterrupted run would (vLLM samples anew from its engine seed).

    Several processes (``accelerator`` from ``accelerate launch``): each samples and scores its share of the step's
    prompts; the rows are gathered, so advantages are whitened over the global batch and every process cuts the same
    global mini-batches, each training on its slice; the loss is normalised by the mini-batch's global token count and
    DDP averages the gradients, so the update is the one process's update on the whole batch.
    """
    n_proc = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    main = rank == 0
    rollouts = rollouts or TransformersRollouts(model.policy, tokenizer, s.num_generations, s.gen_kwargs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    core = model
    if accelerator is not None:
        model, opt = accelerator.prepare(model, opt)
    per_step = s.prompts_per_step * n_proc
    for step in range(start_step, s.max_steps):
        t0 = time.perf_counter()
        first = step * per_step + rank * s.prompts_per_step  # this process's prompts in the step's global batch
        pos = list(range(first, first + s.prompts_per_step))
        batch = [prompts[j % len(prompts)] for j in pos]
        prompt_ids = [tokenizer(b["text"], add_special_tokens=False)["input_ids"] for b in batch]
        core.eval()
        rollouts.sync()  # the engine samples from the weights of this step (nothing to do for transformers)
        t_sync = time.perf_counter() - t0
        done = rollouts(prompt_ids, [sample_seed(s.seed, step, j - step * per_step) for j in pos])
        t_gen = time.perf_counter() - t0 - t_sync
        rows_cols = [b for b in batch for _ in range(s.num_generations)]
        texts = tokenizer.batch_decode([c.ids for c in done], skip_special_tokens=True)
        scores, parts = reward_fn(texts, rows_cols)
        local = [
            {
                "prompt": prompt_ids[i // s.num_generations],
                "ids": c.ids,
                "score": float(sc),
                "parts": {name: got[i] for name, got in parts.items()},
                "lp": c.sampling_logp,
            }
            for i, (c, sc) in enumerate(zip(done, scores, strict=True))
        ]
        rows = _gather_rows(accelerator, local)
        device = next(core.parameters()).device
        pad = tokenizer.pad_token_id
        ids, attn, mask = assemble([r["prompt"] for r in rows], [r["ids"] for r in rows], pad, device)
        n_c = mask.shape[1]
        score_t = torch.tensor([r["score"] for r in rows], dtype=torch.float32, device=device)
        old_logp, old_values, ref_logp = _no_grad_pass(
            core, ref_model, ids, attn, n_c, core.temperature, accelerator, n_proc, rank
        )
        with torch.no_grad():
            kl = (old_logp - ref_logp) * mask
            rewards = -s.kl_coef * kl
            last = (mask.sum(1).long() - 1).clamp(min=0)  # index of the last completion token (EOS if it ended)
            rewards[torch.arange(len(last)), last] += score_t
            adv, returns = gae(rewards, old_values * mask, mask, s.gamma, s.lam)
            adv = whiten(adv, mask)
        core.train()
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clipfrac", "loss", "grad_norm")}
        n = ids.shape[0]
        mb = max(1, n // s.num_mini_batches)
        for epoch in range(s.ppo_epochs):
            order = torch.Generator().manual_seed(sample_seed(s.seed, step, 0, purpose=1 + epoch))
            perm = torch.randperm(n, generator=order)
            for i in range(0, n, mb):
                whole = perm[i : i + mb]  # the global mini-batch; this process trains on its slice
                idx = whole.tensor_split(n_proc)[rank].to(device)
                tokens = mask[whole.to(device)].sum().clamp(min=1)
                logp, values = model(ids[idx], attn[idx], n_c)
                pg, clipfrac = clipped_policy_loss(logp, old_logp[idx], adv[idx], mask[idx], s.cliprange, tokens)
                vf = clipped_value_loss(values, old_values[idx], returns[idx], mask[idx], s.cliprange_value, tokens)
                loss = pg + s.vf_coef * vf
                parts = torch.stack([pg.detach(), vf.detach(), clipfrac.detach(), loss.detach()])
                if n_proc > 1:
                    parts = accelerator.reduce(parts, reduction="sum")  # slices' shares -> the mini-batch's value
                if not torch.isfinite(parts).all():  # every process sees the same sums: all stop together
                    raise FloatingPointError(
                        f"PPO loss is {float(parts[3])} at step {step + 1}; lower the learning rate"
                    )
                opt.zero_grad(set_to_none=True)
                max_norm = s.max_grad_norm if s.max_grad_norm > 0 else float("inf")  # inf: measured, not clipped
                if accelerator is not None:
                    accelerator.backward(loss * n_proc)  # DDP averages the gradients: scaled back to the sum
                    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                else:
                    loss.backward()
                    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                opt.step()
                for key, v in zip(("policy_loss", "value_loss", "clipfrac", "loss"), parts.tolist(), strict=True):
                    stats[key].append(v)
                stats["grad_norm"].append(float(norm))
        grouped = score_t.view(-1, s.num_generations)
        step_s = time.perf_counter() - t0
        row = {
            "step": step + 1,
            "loss": sum(stats["loss"]) / len(stats["loss"]),
            "reward": float(score_t.mean()),
            "reward_std": float(score_t.std()) if len(score_t) > 1 else 0.0,
            "frac_reward_zero_std": float((grouped.std(1) == 0).float().mean()) if s.num_generations > 1 else 1.0,
            "kl": float(kl.sum(1).mean()),
            "completions/mean_length": float(mask.sum(1).mean()),
            "policy_loss": sum(stats["policy_loss"]) / len(stats["policy_loss"]),
            "value_loss": sum(stats["value_loss"]) / len(stats["value_loss"]),
            "clip_ratio/region_mean": sum(stats["clipfrac"]) / len(stats["clipfrac"]),
            "grad_norm": sum(stats["grad_norm"]) / len(stats["grad_norm"]),  # before clipping, as TRL logs it
            "timing/weight_sync_s": t_sync,
            "timing/generation_s": t_gen,
            "timing/training_s": step_s - t_sync - t_gen,
            "step_time_s": step_s,
        }
        for name in rows[0]["parts"]:
            row[f"rewards/{name}/mean"] = sum(r["parts"][name] for r in rows) / len(rows)
        if all(r["lp"] is not None for r in rows):
            row.update(sampling_difference(rows, old_logp, mask))
        if main:
            on_step(row)
        if main and on_save is not None and save_steps and (step + 1) % save_steps == 0 and step + 1 < s.max_steps:
            on_save(step + 1, opt)
        if accelerator is not None:
            accelerator.wait_for_everyone()  # no process runs ahead of a checkpoint being written


def sampling_difference(rows: list[dict[str, Any]], old_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """|engine log-prob - trainer log-prob| over the sampled tokens (TRL GRPO's ``sampling_logp_difference``): near 0
    while the engine samples from the trainer's weights, growing when it does not (a missed weight sync)."""
    engine = torch.full_like(old_logp, float("nan"))
    for i, r in enumerate(rows):
        engine[i, : len(r["lp"])] = torch.tensor(r["lp"], dtype=engine.dtype)
    delta = (engine - old_logp).abs()
    delta = delta[(mask > 0) & ~torch.isnan(delta)]
    if delta.numel() == 0:
        return {}
    return {
        "sampling/sampling_logp_difference/mean": float(delta.mean()),
        "sampling/sampling_logp_difference/max": float(delta.max()),
    }


def value_head_state(model: PolicyWithValue) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.value_head.state_dict().items()}
