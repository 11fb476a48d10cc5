"""SFT stage: one arm (sft, rpsft, l2, dft, iw or lora) on TRL's SFTTrainer.

Every method shares the data, recipe and seed; only the loss or the parameterisation differs:
  sft   token-mean cross-entropy on response tokens
  rpsft + lambda * sum_W ||U_k^T (W - W0) V_k||_F^2 (stages.rpsft), gradient added once per optimizer step
  l2    + lambda * sum_W ||W - W0||_F^2 (RPSFT with k = min(m, n))
  dft   TRL's loss_type="dft" (each token's CE weighted by its detached probability)
  iw    per-sequence weight min(max_weight, exp(tau * mean(log p_theta - log p_ref))), detached, p_ref = base model
  lora  peft LoRA (r, alpha) on every Linear and the embedding; the merged model is written as the checkpoint

Outputs: ``<run_dir>/<arm>/checkpoint/`` (HF folder with tokenizer and chat template), ``metrics.json``,
``config.yaml`` (resolved), ``trainer/`` (resumable trainer checkpoints), ``DONE`` when complete.

    python -m stages.sft --config configs/tiny.yaml sft.method=rpsft
"""

from __future__ import annotations

from stages.startup import defer_collection

defer_collection(__name__)  # no full garbage collection during the imports below (stages/startup.py)

import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from transformers import TrainerCallback, set_seed
from trl import SFTConfig, SFTTrainer

from stages import checkpointing, engines, models, provenance, store, tracking
from stages import data as data_mod
from stages.checkpointing import save_checkpoint
from stages.config import Config, ConfigError, dump_config, trainer_names, use_cpu
from stages.rpsft import (
    RPSFTRegularizer,
    anchor_inputs,
    base_weight_loader,
    compute_anchors,
    select_matrices,
    subspace_diagnostics,
    summarize_diagnostics,
)
from stages.stage_cli import stage_main
from stages.store import atomic_write_json, atomic_write_text, is_done, mark_done

log = logging.getLogger(__name__)


def build_sft_config(cfg: Config, output_dir: str | os.PathLike):
    """The TRL SFTConfig of this arm; every field of ``sft.training`` is passed under its TRL name."""
    return SFTConfig(
        output_dir=str(output_dir),
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="steps",
        loss_type="dft" if cfg.sft.method == "dft" else "nll",
        completion_only_loss=True,
        **tracking.trainer_args(cfg, cfg.sft.arm_name),
        use_cpu=use_cpu(cfg),
        disable_tqdm=bool(os.environ.get("CI")),
        **training_args(cfg),
        **cfg.sft.trl,
    )


def training_args(cfg: Config) -> dict[str, Any]:
    """``sft.training`` as TRL arguments; the LoRA arm trains at its own rate (``sft.lora.learning_rate``, default
    10x the full fine-tuning rate), so that the baselines are compared at matched strength."""
    args = cfg.sft.training.model_dump()
    if cfg.sft.method == "lora":
        args["learning_rate"] = cfg.sft.lora.learning_rate or 10 * cfg.sft.training.learning_rate
    return trainer_names(args)


def build_lora_config(cfg: Config, model):
    """peft LoraConfig: every Linear except the output head, plus the token embedding (the paper's LoRA baseline)."""
    spec = cfg.sft.lora
    targets: list[str] | str = spec.target_modules
    if spec.include_embeddings:
        names = set()
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
                names.add(name.split(".")[-1])
            if isinstance(mod, torch.nn.Embedding):
                names.add(name.split(".")[-1])
        targets = sorted(names) if targets == "all-linear" else sorted(set(targets) | names)
    return LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )


def merge_lora(peft_model):
    """The trained LoRA model as a plain model: peft's ``merge_and_unload``, untying a tied output head first.

    LoRA on a tied input embedding adapts the lookup only; the output head keeps multiplying by the pretrained matrix
    during training. ``merge_and_unload`` writes W + BA into the one shared tensor, so the saved head would change
    too and the checkpoint would not be the trained model (KL 0.025 nats/token on a tied toy Llama). So the head gets
    its own copy of W and the config says untied before the merge.
    """
    base = peft_model.get_base_model()
    head, emb = base.get_output_embeddings(), base.get_input_embeddings()
    emb_weight = getattr(emb, "base_layer", emb).weight
    if head is not None and head.weight.data_ptr() == emb_weight.data_ptr():
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        for conf in {id(c): c for c in (base.config, base.config.get_text_config())}.values():
            conf.tie_word_embeddings = False
        log.info("lora: the output head was tied to the adapted embedding; saved untied (head = pretrained matrix)")
    return peft_model.merge_and_unload()


class Sft2rlTrainer(SFTTrainer):
    """SFTTrainer with two narrow hooks: the RPSFT/L2 penalty gradient and the IW-SFT loss."""

    def __init__(
        self, *args, regularizer=None, regularizer_mode="per_step", iw=None, ref_model=None, method=None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.method = method
        self.regularizer = regularizer
        self.regularizer_mode = regularizer_mode
        self.iw = iw
        self.ref_model = ref_model
        self.reg_stats: dict[str, float] = {}
        self._stats_in_backward: dict[str, float] | None = None
        if regularizer is not None:
            self._refuse_sharding()
            self.add_callback(_PenaltyAfterStep(self))

    def _refuse_sharding(self) -> None:
        """The launcher policy (stages.engines), checked again where the engine is known for certain."""
        engine = engines.engine_of(self.accelerator)
        engines.check(engine, "this launch", [self.method or "rpsft"], rpsft_mode=self.regularizer_mode)

    def _loss_scaled_for_ga(self, num_items_in_batch) -> bool:
        # Mirrors transformers.Trainer.training_step: a loss normalised by num_items_in_batch is not divided by GA.
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            self.compute_loss_func is not None
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = None
        if self.iw is not None and model.training:
            loss = self._iw_loss(model, inputs, num_items_in_batch)
        elif return_outputs:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        else:
            loss = super().compute_loss(model, inputs, False, num_items_in_batch)
        if self.regularizer is not None and self.regularizer_mode == "per_micro_batch" and model.training:
            # The release's form: lambda * R in every micro-batch loss. Scaled so that the accumulated gradient
            # is lambda * dR/dW once per optimizer step, whatever GA normalisation the trainer applies.
            pen = self.regularizer.penalty_autograd()
            if self._loss_scaled_for_ga(num_items_in_batch):
                pen = pen / self.current_gradient_accumulation_steps
            loss = loss + pen
        return (loss, outputs) if return_outputs else loss

    def _iw_loss(self, model, inputs, num_items_in_batch):
        labels = inputs["labels"][:, 1:]  # (B, T-1)
        fwd = {k: v for k, v in inputs.items() if k not in ("labels", "completion_mask", "use_cache")}
        logits = model(**fwd, use_cache=False).logits[:, :-1].float()  # (B, T-1, V)
        mask = labels != -100
        safe = labels.clamp(min=0)
        logp = torch.log_softmax(logits, -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1) * mask
        with torch.no_grad():
            ref_logits = self.ref_model(**fwd, use_cache=False).logits[:, :-1].float()
            ref_logp = torch.log_softmax(ref_logits, -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1) * mask
            n_seq = mask.sum(1).clamp(min=1)
            log_ratio = (logp.detach() - ref_logp).sum(1)  # (B,) sequence log-likelihood ratio
            if self.iw.estimator == "token_mean":
                log_ratio = log_ratio / n_seq  # per-token geometric mean (the release's form)
            # Detached importance weight (a constant per sequence), capped; see docs/stages.md, "Methods".
            w = (log_ratio * self.iw.tau).clamp(max=math.log(self.iw.max_weight)).exp()
            if self.iw.normalize:
                w = w / w.mean().clamp(min=1e-12)
        num = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -(w.unsqueeze(1) * logp).sum() / torch.as_tensor(num).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self.reg_stats["iw/weight_mean"] = float(w.mean())
        return loss

    def _penalty_through_backward(self) -> bool:
        """DeepSpeed steps the optimizer inside ``accelerator.backward``: the penalty's gradient has to be in the
        loss that call receives (:meth:`stages.rpsft.RPSFTRegularizer.penalty_term`)."""
        return engines.engine_of(self.accelerator).startswith("zero")

    def training_step(self, model, inputs, num_items_in_batch=None):
        deepspeed_step = (
            self.regularizer is not None
            and self.regularizer_mode == "per_step"
            and self.accelerator.sync_gradients
            and self._penalty_through_backward()
        )
        if deepspeed_step:
            loss = self._step_with_penalty_in_backward(model, inputs, num_items_in_batch)
        else:
            loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            # transformers only filters non-finite losses out of the log and would go on training on them.
            raise FloatingPointError(
                f"training loss is {float(loss)} at step {self.state.global_step + 1}; lower the learning "
                f"rate. The last good trainer checkpoint is kept in {self.args.output_dir}."
            )
        if self.regularizer is not None and self.accelerator.sync_gradients:
            if deepspeed_step:
                stats = self._stats_in_backward or self.regularizer.stats()
            elif self.regularizer_mode == "per_step":
                # Last micro-batch of the optimizer step: the CE gradients are accumulated (and all-reduced under
                # DDP); add lambda * dR/dW once, before clipping, as the per-micro-batch form would have.
                stats = self.regularizer.add_penalty_grad()
            else:
                stats = {"penalty": self.regularizer.penalty()}
            if not math.isfinite(stats["penalty"]):
                raise FloatingPointError(
                    f"RPSFT penalty is {stats['penalty']} at step {self.state.global_step + 1}; lower the "
                    "learning rate or lambda. The last good trainer checkpoint is kept."
                )
            # the values before this step's update; the logged ones are taken after it (_PenaltyAfterStep)
            self.reg_stats.update({f"rpsft/{k}_before_step": v for k, v in stats.items()})
        return loss

    def _step_with_penalty_in_backward(self, model, inputs, num_items_in_batch):
        """The optimizer step's last micro-batch under DeepSpeed, which steps inside ``accelerator.backward``.
        ZeRO-1/2: the penalty's zero-valued term is added to the loss that call receives (after the trainer's own
        scaling), so the engine reduces, clips and steps its gradient with the cross-entropy's; its scale undoes
        DeepSpeed's division by gradient accumulation when the trainer leaves that on (``scale_wrt_gas``). ZeRO-3:
        added to each rank's gradient partition just before the engine's step (and clipped there with the rest)."""
        self._stats_in_backward = None
        if engines.engine_of(self.accelerator) == "zero3":
            # ZeRO-3's parameters are partitioned: the gradient goes into each rank's gradient partition, after the
            # engine's backward and before its step (both inside accelerate's backward).
            engine = self.accelerator.deepspeed_engine_wrapped.engine
            step = engine.step

            def step_with_penalty(*args, **kwargs):
                self._stats_in_backward = self.regularizer.add_penalty_grad()
                return step(*args, **kwargs)

            engine.step = step_with_penalty
            try:
                return super().training_step(model, inputs, num_items_in_batch)
            finally:
                del engine.step  # the class's method again
        backward = self.accelerator.backward

        def with_penalty(loss, **kwargs):
            scale = 1.0 if kwargs.get("scale_wrt_gas", True) is False else float(self.args.gradient_accumulation_steps)
            term, self._stats_in_backward = self.regularizer.penalty_term(scale)
            return backward(loss + term.to(loss.dtype), **kwargs)

        self.accelerator.backward = with_penalty
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            del self.accelerator.backward  # the class's method again

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.reg_stats:
            logs = {**logs, **self.reg_stats}
        super().log(logs, start_time)


class _PenaltyAfterStep(TrainerCallback):
    """After every optimizer step, the penalty of the weights it produced: ``rpsft/penalty`` (R, without lambda),
    ``rpsft/weighted_penalty`` (lambda * R, the term in the loss) and the block drift, logged at logged steps. One
    pass over the matrices, whose blocks the next step's gradient reuses (:class:`stages.rpsft.RPSFTRegularizer`),
    so the log costs no block product of its own."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # The parameters as the engine wrapped them (FSDP2 replaces each by its row shard), with the weights a resumed
        # run has just loaded: every kept block is stale.
        self.trainer.regularizer.bind(self.trainer.model)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.regularizer.weights_changed()

    def on_step_end(self, args, state, control, **kwargs):
        reg = self.trainer.regularizer
        if reg.keeps_blocks or control.should_log:
            stats = reg.stats()
        else:
            return
        self.trainer.reg_stats.update(
            {
                "rpsft/penalty": stats["penalty"],
                "rpsft/weighted_penalty": reg.lam * stats["penalty"],
                "rpsft/block_drift_mean": stats["block_drift_mean"],
                "rpsft/block_drift_max": stats["block_drift_max"],
            }
        )


def warn_control_tokens(items: list[dict[str, Any]], tokenizer) -> int:
    """Warn when training text contains the tokenizer's special tokens (``<|im_start|>`` ...): written inside a
    message they forge chat turns the template did not make. Returns how many items do."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if len(t) > 2]
    hits = [x["id"] for x in items if any(t in (x.get("question") or "") + (x.get("response") or "") for t in specials)]
    if hits:
        log.warning(
            "%d training item(s) contain chat control tokens (%s) inside their text, e.g. item %s: they forge chat "
            "turns; clean the data unless that is intended",
            len(hits), ", ".join(specials[:4]), hits[0],
        )  # fmt: skip
    return len(hits)


def _final_weights(model) -> dict[str, Any]:
    return {n: p.detach() for n, p in model.named_parameters() if p.ndim == 2}


@dataclass
class ArmSetup:
    """Everything one arm trains with, built and checked before any training step."""

    cfg: Config
    items: list[dict[str, Any]]
    model_path: str
    tokenizer: Any
    trainer: Any
    anchors: Any
    regularizer: Any
    anchor_s: float
    penalty_at_start: float | None


def build_arm(cfg: Config, callbacks: list | None = None) -> ArmSetup:
    """Check the input, load data and model, compute anchors and build the trainer (no training yet).

    Raises:
        ConfigError: bad model, data or settings; nothing is trained or written to the arm folder before this.
    """
    method = cfg.sft.method
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    set_seed(cfg.seed)
    args = build_sft_config(cfg, cfg.arm_layout.trainer)

    items = data_mod.build_items(cfg.data)
    train_ds = data_mod.to_trl_dataset(items, cfg.data.system_prompt)
    corpus = data_mod.tokenizer_corpus(cfg.data) if cfg.model.source == "tiny" else None
    rp = cfg.sft.rpsft
    anchor_cache = Path(rp.cache_dir) if rp.cache_dir else Path(cfg.cache_dir) / "anchors"
    # Under data-parallel launchers, rank 0 converts the model and fills the anchor cache; the others then read it.
    with args.main_process_first(local=True, desc="model and anchors"):
        model_path = models.resolve_model(cfg, corpus=corpus)
        tokenizer = models.load_tokenizer(model_path, cfg.model)
        model = models.load_model(model_path, cfg.model)
        # Anchors for every arm: the RPSFT/L2 penalty, and the rotation diagnostics of the other methods.
        named = select_matrices(model.named_parameters(), rp.include, rp.exclude)
        t0 = time.perf_counter()
        anchors = compute_anchors(
            anchor_inputs(named, model_path), rp.k, rp.k_fraction, rp.anchor_method, anchor_cache, rp.precision
        )
        anchor_s = time.perf_counter() - t0
    models.check_vocab(model, tokenizer, model_path)
    warn_control_tokens(items, tokenizer)
    if use_cpu(cfg):
        copies = 4 + (0.4 if method in ("rpsft", "l2") else 0) + (1 if method == "iw" else 0)
        store.warn_memory(sum(p.numel() for p in model.parameters()), copies=copies, what=f"SFT ({method})", logger=log)
    regularizer = None
    if method == "rpsft":
        regularizer = RPSFTRegularizer(named, anchors, rp.lam)
    elif method == "l2":
        full = compute_anchors(anchor_inputs(named, model_path), None, 1.0, "gram", cache_dir=None)
        regularizer = RPSFTRegularizer(named, full, cfg.sft.l2_lambda)
    # Under FSDP's rank-0 loading the other ranks hold no weights yet: their penalty is first read at train begin.
    loaded = not any(p.is_meta for _, p in named)
    penalty_at_start = regularizer.penalty() if regularizer and loaded else None
    if regularizer is not None:
        log.info(
            "%s: regularising %d matrices (%d full-rank fallback = L2-to-init), lambda=%g, mode=%s",
            method,
            regularizer.count,
            regularizer.anchors.full_rank,
            regularizer.lam,
            rp.mode,
        )

    ref_model = None
    if method == "iw":
        ref_model = models.load_model(model_path, cfg.model).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
    peft_config = build_lora_config(cfg, model) if method == "lora" else None

    try:
        trainer = Sft2rlTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[*(callbacks or []), *checkpointing.training_guards(model, cfg.arm_layout.trainer)],
            regularizer=regularizer,
            regularizer_mode=rp.mode,
            method=method,
            iw=cfg.sft.iw if method == "iw" else None,
            ref_model=ref_model,
        )
    except ValueError as e:  # peft: a target module the model does not have
        if "arget module" in str(e):
            raise ConfigError(f"sft.lora.target_modules: {e}") from None
        raise
    if ref_model is not None:
        ref_model.to(trainer.args.device)
    return ArmSetup(cfg, items, model_path, tokenizer, trainer, anchors, regularizer, anchor_s, penalty_at_start)


def run(cfg: Config, force: bool = False, callbacks: list | None = None) -> dict[str, Any]:
    """Train one arm; return its metrics (also written to ``<arm_dir>/metrics.json``).

    Raises:
        ConfigError: bad model, data or settings, or another process writing this arm, before any training.
    """
    arm_dir, recipe = provenance.training_arm("sft", cfg)
    if not (is_done(arm_dir) and not force):
        tracking.check_installed(cfg)  # before any model is loaded
    return provenance.run_arm_once(
        arm_dir, force, lambda: _train(cfg, force, callbacks), "pass --force to retrain", recipe=recipe
    )


def _train(cfg: Config, force: bool, callbacks: list | None) -> dict[str, Any]:
    arm_dir, out = cfg.arm_dir, cfg.arm_layout
    method = cfg.sft.method
    rp = cfg.sft.rpsft
    arm = build_arm(cfg, callbacks)
    trainer, regularizer, anchors, tokenizer = arm.trainer, arm.regularizer, arm.anchors, arm.tokenizer
    items, model_path, anchor_s, penalty_at_start = arm.items, arm.model_path, arm.anchor_s, arm.penalty_at_start

    main_process = trainer.is_world_process_zero()  # under DDP only rank 0 writes the arm's files
    if main_process:
        arm_dir.mkdir(parents=True, exist_ok=True)
        if force:  # recompute from scratch: neither the finished arm nor its trainer checkpoints are reused
            out.done.unlink(missing_ok=True)
            shutil.rmtree(out.trainer, ignore_errors=True)
        atomic_write_text(out.config, dump_config(cfg))
        atomic_write_text(cfg.layout.sft_data, "".join(json.dumps(x) + "\n" for x in items))
    trainer_dir = out.trainer
    resume = checkpointing.last_complete_checkpoint(trainer_dir)[0] is not None  # the one train_resumable resumes from
    if resume:
        log.info("resuming %s from the last trainer checkpoint in %s", cfg.sft.arm_name, trainer_dir)
    t0 = time.perf_counter()
    result = checkpointing.train_resumable(trainer, trainer_dir, cfg.sft.training.max_steps)
    train_s = time.perf_counter() - t0

    penalty_at_end = regularizer.penalty() if regularizer else None
    whole = None
    if engines.engine_of(trainer.accelerator) in ("fsdp2", "zero3") and method != "lora":
        # The shards gathered into whole weights: a collective every rank takes part in; rank 0 saves them.
        whole = trainer.accelerator.get_state_dict(trainer.model)
    if not main_process:
        return {"method": method, "steps": trainer.state.global_step, "penalty_at_end": penalty_at_end}
    final_model = trainer.model
    if method == "lora":
        trainer.model.save_pretrained(out.adapter)  # before merging: merging folds the adapters away
        final_model = merge_lora(trainer.model)
    final = {n: t for n, t in whole.items() if t.ndim == 2} if whole is not None else _final_weights(final_model)
    diag = subspace_diagnostics(anchors, final, rp.anchor_method, base=base_weight_loader(model_path))
    save_checkpoint(final_model, tokenizer, out.checkpoint, state_dict=whole)

    history = [h for h in trainer.state.log_history if "loss" in h]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    metrics: dict[str, Any] = {
        "method": method,
        "arm": cfg.sft.arm_name,
        "base_model": model_path,
        "steps": trainer.state.global_step,
        "train_loss": float(result.training_loss),
        "train_loss_last": history[-1]["loss"] if history else None,
        "train_runtime_s": train_s,
        "trainable_parameters": trainable,
        "train_items": len(items),
        "regularized_matrices": regularizer.count if regularizer else 0,
        "full_rank_matrices": regularizer.anchors.full_rank if regularizer else 0,
        "lambda": regularizer.lam if regularizer else None,
        "k_spec": anchors.k_spec,
        "penalty_at_start": penalty_at_start,
        "penalty_at_end": penalty_at_end,
        "anchor_time_s": anchor_s,
        "anchor_memory_mb": anchors.nbytes() / 2**20,
        "rotation_summary": summarize_diagnostics(diag),
        "principal_angles": diag,
        "log_history": history,
    }
    tracking.write_model_card(trainer, out.checkpoint, cfg, cfg.sft.arm_name, _card_facts(cfg, metrics))
    if (pushed := tracking.push_to_hub(cfg, cfg.sft.arm_name, out.checkpoint)) is not None:
        metrics["hub"] = pushed
    atomic_write_json(out.metrics, metrics)
    mark_done(arm_dir)
    start = "not read" if penalty_at_start is None else f"{penalty_at_start:.3g}"  # FSDP rank-0 loading: no weights yet
    penalty = "" if penalty_at_end is None else f", penalty {start} -> {penalty_at_end:.3g}"
    log.info(
        "%s done: %d steps, train_loss %.4f%s; checkpoint %s",
        cfg.sft.arm_name,
        metrics["steps"],
        metrics["train_loss"],
        penalty,
        out.checkpoint,
    )
    return metrics


def _card_facts(cfg: Config, m: dict[str, Any]) -> dict[str, Any]:
    t, d = cfg.sft.training, cfg.data
    method = m["method"]
    settings = {
        "rpsft": f"lambda {cfg.sft.rpsft.lam}, k {m['k_spec']}, anchors {cfg.sft.rpsft.anchor_method}",
        "l2": f"lambda {cfg.sft.l2_lambda}",
        "lora": f"r {cfg.sft.lora.r}, alpha {cfg.sft.lora.alpha} (merged into the weights)",
    }.get(method)
    source = ", ".join(x.name for x in d.tasks) if d.source == "reasoning_gym" and not d.mixture else d.path
    rot = m.get("rotation_summary") or {}
    return {
        "method": method,
        "method settings": settings,
        "base model": m["base_model"],
        "data": f"{d.source}: {source or 'mixture'}; {m['train_items']} items, data seed {d.seed}",
        "training": f"{m['steps']} steps, lr {t.learning_rate} ({t.lr_scheduler_type}), batch "
        f"{t.per_device_train_batch_size} x {t.gradient_accumulation_steps}, seed {cfg.seed}",
        "train loss": f"{m['train_loss']:.4f}",
        "RPSFT penalty start -> end": (
            f"{m['penalty_at_start']} -> {m['penalty_at_end']}" if m.get("penalty_at_end") is not None else None
        ),
        "principal angles of the top-k subspaces to the base's (degrees, mean left / right)": (
            f"{rot['principal_angle_left_mean_deg']:.4f} / {rot['principal_angle_right_mean_deg']:.4f}"
            if "principal_angle_left_mean_deg" in rot
            else None
        ),
    }


SHORTCUTS = {"method": "sft.method", "arm": "sft.arm", "max_steps": "sft.training.max_steps"}


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        argv,
        prog="python -m stages.sft",
        description="Train one SFT arm (sft, rpsft, l2, dft, iw, lora).",
        run=lambda cfg, force: run(cfg, force=force),
        shortcuts=SHORTCUTS,
        per_seed=True,
    )


if __name__ == "__main__":
    sys.exit(main())
