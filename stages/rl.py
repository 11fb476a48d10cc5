"""RL stage: GRPO (TRL's GRPOTrainer) from any SFT checkpoint or the base model, with verifiable rewards.

Both initialisations get the same RL section, seed and prompt order; only ``rl.init`` differs.
Outputs in ``<run_dir>/<rl arm>/``: ``checkpoint/`` (HF folder), ``metrics.jsonl`` (one line per step: reward mean
and std, accuracy, KL to the initial policy, completion length, clip ratios, share of groups with zero reward
variance, step time), ``metrics.json`` (summary), ``config.yaml``, ``trainer/`` (resumable), ``DONE``.

    python -m stages.rl --config configs/tiny.yaml init=runs/tiny/sft/checkpoint
"""

from __future__ import annotations

from stages.startup import defer_collection

defer_collection(__name__)  # no full garbage collection during the imports below (stages/startup.py)

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback, set_seed
from trl import GRPOConfig, GRPOTrainer

from stages import backends, checkpointing, engines, models, provenance, store, tracking
from stages.checkpointing import last_complete_checkpoint, save_checkpoint
from stages.config import Config, ConfigError, dump_config, trainer_names, use_cpu
from stages.data import prompt_messages, prompt_text, rows_dataset
from stages.layout import ArmLayout
from stages.ppo import PolicyWithValue, PPOSettings, TransformersRollouts, VLLMRollouts, train_ppo, value_head_state
from stages.provenance import rl_arm_name
from stages.rewards import get_reward
from stages.rl_prompts import filtered_prompts, rl_prompts
from stages.stage_cli import stage_main
from stages.store import atomic_write_json, atomic_write_text, is_done, mark_done, read_json
from stages.vllm_cpu import apply_cpu_colocate_patches

log = logging.getLogger(__name__)

SHORTCUTS = {
    "init": "rl.init",
    "arm": "rl.arm",
    "algorithm": "rl.algorithm",
    "max_steps": "rl.training.max_steps",
    "backend": "rl.generation.backend",
}


def check_chat_format(tokenizer, where: str) -> None:
    """The tokenizer must have a chat template whose assistant turns end with its EOS token (generation stops there).

    Raises:
        ConfigError: naming the checkpoint and what is wrong.
    """
    if not tokenizer.chat_template:
        raise ConfigError(f"{where}: the tokenizer has no chat template; RL prompts are formatted with it")
    if tokenizer.eos_token is None:
        raise ConfigError(f"{where}: the tokenizer has no EOS token; completions would never end")
    marker = "sft2rl-check-7f3a"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    after = text.split(marker, 1)[-1]
    if tokenizer.eos_token not in after:
        raise ConfigError(
            f"{where}: the chat template does not end assistant turns with the EOS token {tokenizer.eos_token!r} "
            f"(got {after!r}); SFT taught the model to stop at another token. Set the tokenizer's eos_token to the "
            "template's end-of-turn token and save it with the checkpoint"
        )


def build_grpo_config(cfg: Config, output_dir: str | os.PathLike, engine: str | None = None):
    """TRL's GRPOConfig from ``rl.training`` and ``rl.generation`` (TRL's names); ``engine`` is the stage's
    generation plan's engine (default: ``rl.generation.backend`` as given, enough to check the batch shapes)."""
    g = cfg.rl.generation
    engine = engine or g.backend
    return GRPOConfig(
        output_dir=str(output_dir),
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="steps",
        **tracking.trainer_args(cfg, rl_arm_name(cfg)),
        use_cpu=use_cpu(cfg),
        disable_tqdm=bool(os.environ.get("CI")),
        num_generations=g.num_generations,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        max_completion_length=g.max_completion_length,
        use_vllm=engine == "vllm",
        vllm_mode=g.vllm_mode,
        vllm_server_base_url=g.vllm_server_base_url,
        vllm_tensor_parallel_size=g.vllm_tensor_parallel_size,
        vllm_gpu_memory_utilization=g.vllm_gpu_memory_utilization,
        vllm_enable_sleep_mode=g.vllm_enable_sleep_mode,
        reward_weights=cfg.rl.reward_weights,
        **trainer_names(cfg.rl.training.model_dump()),
        **(_needless_work_off(cfg, engine) | cfg.rl.trl),
    )


def _needless_work_off(cfg: Config, engine: str) -> dict[str, Any]:
    """TRL's defaults that cost a forward per step and buy nothing in this setting; ``rl.trl`` overrides them.

    vLLM colocated on a CPU samples in the trainer's own precision from the weights pushed before each generation
    (stages/vllm_cpu.py), so its log-probs are the trainer's (measured: 1e-5 apart, importance ratios 0.999-1.000,
    benchmarks/results/generation*.json; tests/integration/test_rl_vllm.py keeps them equal). TRL's importance-sampling
    correction then recomputes what vLLM returned: one more forward of every completion per step."""
    if engine == "vllm" and cfg.rl.generation.vllm_mode == "colocate" and use_cpu(cfg):
        return {"vllm_importance_sampling_correction": False}
    return {}


class JsonlMetrics(TrainerCallback):
    """One JSON line per logged step to ``path``, flushed at once (a crash loses at most the line being written)."""

    def __init__(self, path: Path):
        self.path = path
        self.t_last = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        now = time.perf_counter()
        row = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, int | float)}}
        row["step_time_s"] = now - self.t_last
        if "timing/generation_s" in row and "step_time" in row:
            row["timing/training_s"] = (
                row["step_time"] - row["timing/generation_s"] - row.get("timing/weight_sync_s", 0.0)
            )
        self.t_last = now
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


class TimedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that also logs, per step, the time spent generating (``timing/generation_s``) and, with vLLM, the
    time spent pushing the trainer's weights into the engine (``timing/weight_sync_s``), apart; TRL's ``step_time``
    covers both and the training."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sync_s = 0.0
        if self.use_vllm:
            push = self.vllm_generation.sync_weights

            def timed_push():
                t0 = time.perf_counter()
                push()
                self._sync_s += time.perf_counter() - t0

            self.vllm_generation.sync_weights = timed_push

    def _generate(self, prompts: list):
        self._sync_s = 0.0
        t0 = time.perf_counter()
        out = super()._generate(prompts)
        self._metrics["train"]["timing/generation_s"].append(time.perf_counter() - t0 - self._sync_s)
        if self.use_vllm:
            self._metrics["train"]["timing/weight_sync_s"].append(self._sync_s)
        return out


def run(cfg: Config, force: bool = False, callbacks: list | None = None) -> dict[str, Any]:
    """Run RL for ``cfg.rl.init``; return the summary (also written to metrics.json).

    Raises:
        ConfigError: bad init checkpoint, tokenizer, rewards or batch shape, before any generation; or another
            process writing the same RL arm.
    """
    arm_dir, recipe = provenance.training_arm("rl", cfg)
    arm = arm_dir.name
    if not (is_done(arm_dir) and not force):
        tracking.check_installed(cfg)  # before any model is loaded
    return provenance.run_arm_once(
        arm_dir, force, lambda: _run(cfg, force, callbacks, arm, arm_dir), "pass --force to rerun", recipe=recipe
    )


def _truncate_metrics(path: Path, trainer_dir: Path) -> None:
    """On resume, drop metric lines logged after the last trainer checkpoint (they are logged again)."""
    ckpt, state = last_complete_checkpoint(trainer_dir)
    if not path.is_file() or ckpt is None:
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by the kill: it is logged again after the resume
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= state.global_step:
            rows.append(line)
    atomic_write_text(path, "".join(r + "\n" for r in rows))


def _init_path(cfg: Config) -> str:
    """The model RL starts from: ``rl.init`` (a checkpoint folder or a hub id) or the prepared base model."""
    if not cfg.rl.init:
        return models.resolve_model(cfg)
    init = models.resolve_checkpoint(
        cfg.rl.init,
        "rl.init",
        source_hint="an SFT checkpoint folder",
        missing=f"rl.init {Path(cfg.rl.init).expanduser()} does not exist: pass an SFT checkpoint folder "
        "(<run_dir>/<arm>/checkpoint)",
    )
    models.check_model_folder(Path(init), trust_remote_code=cfg.model.trust_remote_code)
    return init


def _run(cfg: Config, force: bool, callbacks: list | None, arm: str, arm_dir: Path) -> dict[str, Any]:
    out = ArmLayout(arm_dir)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    threads_at_start = backends.threads()
    set_seed(cfg.seed)
    build_grpo_config(cfg, out.trainer)  # its batch-shape errors come before any probe or model load
    # Under accelerate launch, rank 0 prepares what is cached (the base model when rl.init is unset, the `auto`
    # engine measurement) and the other ranks then read it: no two processes write one cache folder, and every
    # process takes the same engine. This creates the process group (TRL's trainer reuses it), with transformers'
    # ddp_timeout (30 min by default, or rl.trl.ddp_timeout), not torch's 10 minutes, as TRL alone would.
    timeout = timedelta(seconds=int(cfg.rl.trl.get("ddp_timeout", 1800)))
    state = PartialState(cpu=use_cpu(cfg), timeout=timeout)
    with state.main_process_first():
        init_path = _init_path(cfg)
    tokenizer = models.load_tokenizer(init_path, cfg.model)
    check_chat_format(tokenizer, init_path)
    reward_funcs = [get_reward(name) for name in cfg.rl.rewards]
    items = rl_prompts(cfg)
    with state.main_process_first():  # after every input check: the probe is the first costly step
        gen = backends.plan(cfg, "rl", init_path)
    if gen.engine == "vllm" and not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # every core (docs/measured.md)
        apply_cpu_colocate_patches(cfg.model.dtype)  # the engine samples in the trainer's precision
    if gen.engine == "vllm":
        backends.claim_rendezvous_port()  # a colocated engine's torch.distributed group, on a port of its own
    main_process = int(os.environ.get("RANK", "0")) == 0  # under accelerate launch only rank 0 writes the arm
    if main_process:  # the exact initial weights, recorded; a resume from other ones is refused
        provenance.check_same_init(arm_dir, init_path, force)
    with state.main_process_first():  # rank 0 samples (in a child process), the others read its file
        items, prompt_filter = filtered_prompts(cfg, items, init_path, gen.engine, arm_dir, main_process)
    rows = [{"prompt": prompt_messages(x, cfg.data.system_prompt), "answer": x["answer"]} for x in items]
    train_ds = rows_dataset(rows)
    if cfg.rl.algorithm == "ppo":
        return _run_ppo(
            cfg,
            arm,
            arm_dir,
            init_path,
            tokenizer,
            items,
            reward_funcs,
            force,
            gen,
            threads_at_start,
            prompt_filter,
        )
    args = build_grpo_config(cfg, out.trainer, gen.engine)
    model = models.load_model(init_path, cfg.model)

    if main_process:
        arm_dir.mkdir(parents=True, exist_ok=True)
        if force:  # from scratch: neither the finished arm nor its trainer checkpoints are reused
            out.done.unlink(missing_ok=True)
            shutil.rmtree(out.trainer, ignore_errors=True)
        atomic_write_text(out.config, dump_config(cfg))  # as given (auto stays auto)
    trainer_dir = out.trainer
    resume = checkpointing.last_complete_checkpoint(trainer_dir)[0] is not None  # the one train_resumable resumes from
    metrics_path = out.steps
    if resume and main_process:
        _truncate_metrics(metrics_path, trainer_dir)
    elif main_process:
        metrics_path.unlink(missing_ok=True)
    if use_cpu(cfg):
        copies = 4 + (1 if cfg.rl.training.beta > 0 else 0)
        if gen.engine == "vllm":
            copies += 2  # the colocated engine's weights in the trainer's precision and its packed copies
        store.warn_memory(sum(p.numel() for p in model.parameters()), copies=copies, what="GRPO", logger=log)
    trainer = TimedGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        callbacks=[JsonlMetrics(metrics_path), *(callbacks or []), *checkpointing.training_guards(model, trainer_dir)],
    )
    t0 = time.perf_counter()
    result = checkpointing.train_resumable(trainer, trainer_dir, cfg.rl.training.max_steps)
    train_s = time.perf_counter() - t0
    if not trainer.is_world_process_zero():
        return {"algorithm": "grpo", "arm": arm, "steps": trainer.state.global_step}

    save_checkpoint(trainer.model, tokenizer, out.checkpoint)

    steps = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    extra = {"steps": trainer.state.global_step, "train_loss": float(result.training_loss)}
    if prompt_filter:
        extra["prompt_filter"] = prompt_filter
    extra.update(_backend_facts(cfg, gen, init_path, steps, threads_at_start))
    return _finish(cfg, arm, arm_dir, init_path, steps, train_s, len(items), gen.engine, extra, trainer)


def _backend_facts(
    cfg: Config, gen: backends.GenerationPlan, init_path: str, steps: list[dict[str, Any]], threads_at_start: dict
) -> dict:
    """Why this engine generated, the process's threading at the start and after the run (an engine colocated in
    this process may rebind it), and (``backend: auto`` on vLLM) the speed it reached inside the RL steps."""
    facts: dict[str, Any] = {"backend_reason": gen.reason}
    facts["threads"] = {"at_start": threads_at_start, "after_run": backends.threads()}
    if gen.requested == "auto" and gen.engine == "vllm" and gen.figures:
        facts["generation_tokens_per_s"] = _learn_colocated_speed(cfg, gen, init_path, steps)
    return facts


def _learn_colocated_speed(
    cfg: Config, gen: backends.GenerationPlan, init_path: str, steps: list[dict[str, Any]]
) -> float | None:
    """The colocated engine's generation speed inside these RL steps (first step dropped: engine warm-up),
    recorded for ``backend: auto``; a warning when it fell below transformers' speed on this machine."""
    per_step = cfg.rl.training.per_device_train_batch_size * cfg.rl.training.gradient_accumulation_steps
    rates = [
        s["completions/mean_length"] * per_step / s["timing/generation_s"]
        for s in steps[1:] or steps
        if s.get("timing/generation_s") and s.get("completions/mean_length")
    ]
    if not rates:
        return None
    rate = sorted(rates)[len(rates) // 2]
    engine = backends.model_id(init_path, gen.dtype)  # the precision the plan's figures were measured in
    backends.record_colocated(Path(cfg.cache_dir) / backends.CACHE_FILE, model_id=engine, tokens_per_s=rate)
    hf = float(gen.figures["hf_tokens_per_s"])
    if rate < hf:
        log.warning(
            "vLLM generated %.0f tokens/s inside these RL steps, below transformers' %.0f tokens/s on this machine: "
            "the next rl.generation.backend=auto run uses transformers (set backend=hf to switch now)",
            rate,
            hf,
        )
    return round(rate, 1)


def _finish(
    cfg: Config,
    arm: str,
    arm_dir: Path,
    init_path: str,
    steps: list[dict[str, Any]],
    train_s: float,
    prompts: int,
    backend: str,
    extra: dict[str, Any],
    trainer=None,
) -> dict[str, Any]:
    """The one summary of an RL run (GRPO or PPO): the model card, ``metrics.json`` from its per-step rows, then
    ``DONE``."""
    out = ArmLayout(arm_dir)
    summary = {
        "algorithm": cfg.rl.algorithm,
        "arm": arm,
        "init": init_path,
        "backend": backend,
        "steps": len(steps),
        **extra,
        "train_runtime_s": train_s,
        "reward_first": steps[0].get("reward") if steps else None,
        "reward_last": steps[-1].get("reward") if steps else None,
        "frac_reward_zero_std_mean": (
            sum(s.get("frac_reward_zero_std", 0.0) for s in steps) / len(steps) if steps else None
        ),
        "rewards": cfg.rl.rewards,
        "prompts": prompts,
    }
    if out.init.is_file():  # the exact weights it started from (sha256 per file)
        summary["init_sha256"] = read_json(out.init).get("sha256")
    facts = {
        "method": f"{cfg.rl.algorithm} (RL)",
        "initialisation": init_path,
        "rewards": ", ".join(cfg.rl.rewards),
        "training": f"{summary['steps']} steps, lr {cfg.rl.training.learning_rate}, {prompts} prompts"
        + (f" (of {extra['prompt_filter']['prompts']}: those with mixed rewards)" if "prompt_filter" in extra else "")
        + ", "
        f"{cfg.rl.generation.num_generations} completions per prompt, generation {backend}, seed {cfg.seed}",
        "reward first -> last step": f"{summary['reward_first']} -> {summary['reward_last']}",
    }
    tracking.write_model_card(trainer, out.checkpoint, cfg, arm, facts)
    if (pushed := tracking.push_to_hub(cfg, arm, out.checkpoint)) is not None:
        summary["hub"] = pushed
    atomic_write_json(out.metrics, summary)
    mark_done(arm_dir)
    log.info(
        "%s done: %d steps, reward %s -> %s", arm, summary["steps"], summary["reward_first"], summary["reward_last"]
    )
    return summary


def _ppo_settings(cfg: Config) -> PPOSettings:
    """The PPO loop's settings from the config's rl section (the same batch shape and sampling as GRPO)."""
    t, g, p = cfg.rl.training, cfg.rl.generation, cfg.rl.ppo
    return PPOSettings(
        learning_rate=t.learning_rate,
        max_steps=t.max_steps,
        prompts_per_step=t.per_device_train_batch_size * t.gradient_accumulation_steps // g.num_generations,
        num_generations=g.num_generations,
        ppo_epochs=p.ppo_epochs,
        num_mini_batches=p.num_mini_batches,
        gamma=p.gamma,
        lam=p.lam,
        cliprange=p.cliprange,
        cliprange_value=p.cliprange_value,
        vf_coef=p.vf_coef,
        kl_coef=p.kl_coef,
        max_grad_norm=t.max_grad_norm,
        weight_decay=t.weight_decay,
        gen_kwargs={
            "temperature": g.temperature,
            "top_p": g.top_p,
            "top_k": g.top_k,
            "max_new_tokens": g.max_completion_length,
        },
        seed=cfg.seed,
    )


def _weighted_reward(reward_funcs, weights: list[float] | None):
    """Per completion, the weighted sum of the reward functions (weights 1 by default), and each function's own
    reward by its name (logged as ``rewards/<name>/mean``, as GRPO does)."""
    weights = weights or [1.0] * len(reward_funcs)

    def reward_fn(texts: list[str], rows: list[dict[str, Any]]) -> tuple[list[float], dict[str, list[float]]]:
        total = [0.0] * len(texts)
        parts = {}
        for w, fn in zip(weights, reward_funcs, strict=True):
            got = [float(r) for r in fn(texts, answer=[row["answer"] for row in rows])]
            parts[fn.__name__] = got
            for i, r in enumerate(got):
                total[i] += w * r
        return total, parts

    return reward_fn


def _run_ppo(
    cfg: Config,
    arm: str,
    arm_dir: Path,
    init_path: str,
    tokenizer,
    items,
    reward_funcs,
    force: bool,
    gen: backends.GenerationPlan,
    threads_at_start: dict,
    prompt_filter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """PPO (stages.ppo) with the same prompts, rewards, engines and outputs as GRPO; one process or several under
    ``accelerate launch`` (only rank 0 writes)."""
    from accelerate import Accelerator  # lazy: PPO alone builds its own accelerator (GRPO's comes with TRL)

    out = ArmLayout(arm_dir)
    t, g = cfg.rl.training, cfg.rl.generation
    accelerator = Accelerator(cpu=use_cpu(cfg))
    engines.check(engines.engine_of(accelerator), "this launch", rl_algorithm="ppo")
    main_process = accelerator.is_main_process
    settings = _ppo_settings(cfg)
    _check_ppo_processes(settings, accelerator.num_processes)
    device = accelerator.device
    torch.manual_seed(cfg.seed)  # the value head's initialisation: the same in every process and every rerun
    model = PolicyWithValue(models.load_model(init_path, cfg.model), temperature=g.temperature).to(device)
    ref = models.load_model(init_path, cfg.model).to(device).eval()
    for q in ref.parameters():
        q.requires_grad_(False)
    prompts = [
        {
            "text": prompt_text(tokenizer, prompt_messages(x, cfg.data.system_prompt)),
            "answer": x["answer"],
        }
        for x in items
    ]
    reward_fn = _weighted_reward(reward_funcs, cfg.rl.reward_weights)
    metrics_path = out.steps
    trainer_dir = out.trainer
    if main_process:
        arm_dir.mkdir(parents=True, exist_ok=True)
        out.done.unlink(missing_ok=True)
        atomic_write_text(out.config, dump_config(cfg))  # as given (auto stays auto)
        if force:  # --force trains again from the start, like the SFT stage
            shutil.rmtree(trainer_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    torch.manual_seed(cfg.seed)
    resumed = ppo_resume(model, trainer_dir)  # weights, optimizer, RNG and step of the last complete checkpoint
    start_step = resumed["step"] if resumed else 0
    steps: list[dict[str, float]] = []
    if resumed and main_process:
        log.info("resuming PPO from %s (step %d)", resumed["folder"], start_step)
        old = metrics_path.read_text().splitlines() if metrics_path.is_file() else []
        steps = [r for r in (json.loads(x) for x in old if x.strip().startswith("{")) if r.get("step", 0) <= start_step]
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in steps))
    elif main_process:
        metrics_path.unlink(missing_ok=True)
    rollouts = _ppo_rollouts(cfg, gen.engine, model, tokenizer, accelerator)

    writer = tracking.scalar_writer(cfg, arm) if main_process else None  # not a transformers Trainer: TensorBoard
    if main_process and (others := [x for x in cfg.tracking.report_to if x != "tensorboard"]):
        log.warning("tracking: PPO logs its steps to TensorBoard only, not to %s", others)

    def on_step(row: dict[str, float]) -> None:
        steps.append(row)
        store.report_progress(int(row["step"]), t.max_steps, "PPO steps")
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if writer is not None:
            for k, v in row.items():
                if k != "step":
                    writer.add_scalar(f"train/{k}", float(v), int(row["step"]))
            writer.flush()
        log.info("ppo step %d: reward %.3f, kl %.4f", row["step"], row["reward"], row["kl"])

    t0 = time.perf_counter()
    size = store.model_bytes(model) * 3  # weights + AdamW's two moments

    def on_save(step: int, opt) -> None:
        store.require_disk(trainer_dir, size, f"the PPO checkpoint of step {step}")
        ppo_save(model, opt, trainer_dir, step, t.save_total_limit)

    try:
        train_ppo(
            model,
            ref,
            tokenizer,
            prompts,
            reward_fn,
            settings,
            on_step,
            rollouts=rollouts,
            accelerator=accelerator,
            start_step=start_step,
            optimizer_state=resumed["optimizer"] if resumed else None,
            on_save=on_save,
            save_steps=t.save_steps,
        )
    finally:
        if writer is not None:
            writer.close()
    if not main_process:
        return {"algorithm": "ppo", "arm": arm, "steps": t.max_steps}
    save_checkpoint(model.policy, tokenizer, out.checkpoint)
    save_file(value_head_state(model), str(out.value_head))
    facts = _backend_facts(cfg, gen, init_path, steps, threads_at_start)
    extra = {"num_processes": accelerator.num_processes, **facts}
    if prompt_filter:
        extra["prompt_filter"] = prompt_filter
    return _finish(cfg, arm, arm_dir, init_path, steps, time.perf_counter() - t0, len(items), rollouts.name, extra)


def _check_ppo_processes(s: PPOSettings, n_proc: int) -> None:
    """Every process needs a slice of every PPO mini-batch (DDP runs each backward on all processes together).

    Raises:
        ConfigError: naming the batch shape and the fix.
    """
    rows = s.prompts_per_step * s.num_generations * n_proc
    if n_proc > 1 and rows % (s.num_mini_batches * n_proc):
        raise ConfigError(
            f"PPO on {n_proc} processes: {rows} completions per step do not split into rl.ppo.num_mini_batches="
            f"{s.num_mini_batches} mini-batches of a multiple of {n_proc} rows (one slice per process); change "
            "rl.training.per_device_train_batch_size or rl.ppo.num_mini_batches"
        )


def _ppo_rollouts(cfg: Config, engine: str, model: PolicyWithValue, tokenizer, accelerator):
    """The engine PPO samples with (the plan's): transformers, or vLLM through TRL's VLLMGeneration (as GRPO)."""
    g = cfg.rl.generation
    if engine != "vllm":
        return TransformersRollouts(model.policy, tokenizer, g.num_generations, _ppo_settings(cfg).gen_kwargs)
    # lazy: vLLM is an optional extra, imported only when this run generates with it
    from trl.generation.vllm_generation import VLLMGeneration

    engine = VLLMGeneration(
        model=model.policy,
        accelerator=accelerator,
        processing_class=tokenizer,
        mode=g.vllm_mode,
        server_base_url=g.vllm_server_base_url,
        tensor_parallel_size=g.vllm_tensor_parallel_size,
        gpu_memory_utilization=g.vllm_gpu_memory_utilization,
        max_num_seqs=cfg.rl.training.per_device_train_batch_size
        * cfg.rl.training.gradient_accumulation_steps
        * g.vllm_tensor_parallel_size,
        enable_sleep_mode=g.vllm_enable_sleep_mode,
        trust_remote_code=cfg.model.trust_remote_code,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        max_completion_length=g.max_completion_length,
        logprobs=0,  # the sampled token's log-prob: compared with the trainer's every step
    )
    return VLLMRollouts(engine, tokenizer, g.num_generations)


def ppo_save(model, opt, trainer_dir: Path, step: int, keep: int) -> Path:
    """``trainer/checkpoint-<step>/``: policy and value head (safetensors), optimizer and RNG states, the step;
    written to a temporary folder and renamed into place (complete or absent), older ones pruned to ``keep``."""
    trainer_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=trainer_dir))
    # clone: tied weights (embedding and head) would otherwise share storage, which safetensors refuses to write
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")  # tensors and numbers only: loads with weights_only=True
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))  # sampling and mini-batch order
    atomic_write_json(tmp / "state.json", {"step": step})
    final = store.publish_dir(tmp, trainer_dir / f"checkpoint-{step}")
    done = [d for d in checkpointing.checkpoints(trainer_dir) if is_done(d)]
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    fault = os.environ.get(checkpointing.FAULT_ENV)  # test-only: die right after this checkpoint, as a kill would
    if fault and int(fault) == step:
        os.kill(os.getpid(), 9)
    return final


def ppo_resume(model, trainer_dir: Path) -> dict[str, Any] | None:
    """Restore the last complete PPO checkpoint into ``model`` and torch's RNG; return its step and optimizer state
    (None when there is none). The optimizer state loads with ``weights_only=True`` (no arbitrary pickles)."""
    last, state = checkpointing.last_complete_checkpoint(trainer_dir, "state.json")
    if last is None:
        return None
    model.load_state_dict(load_file(str(last / "model.safetensors")))
    torch.set_rng_state(load_file(str(last / "rng.safetensors"))["torch"])
    return {
        "step": state["step"],
        # on the CPU: each process moves it to its own device when the optimizer is prepared
        "optimizer": torch.load(last / "optimizer.pt", weights_only=True, map_location="cpu"),
        "folder": last,
    }


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        argv,
        prog="python -m stages.rl",
        description="RL (GRPO or PPO) from an SFT checkpoint or the base model.",
        run=lambda cfg, force: run(cfg, force=force),
        shortcuts=SHORTCUTS,
        per_seed=init_for_seed,
    )


def init_for_seed(main: Config, seed_cfg: Config) -> Config | None:
    """On a multi-seed config, an ``rl.init`` inside the run folder (``runs/<run>/<arm>/checkpoint``) means that arm
    of each seed (``runs/<run>/seeds/seed-<s>/<arm>/checkpoint``); any other init is shared by every seed. None for
    a seed that ``rl.seeds`` leaves out."""
    if not main.rl_for_seed(seed_cfg.seed):
        return None
    if not main.rl.init:
        return seed_cfg
    try:
        rel = Path(main.rl.init).expanduser().resolve().relative_to(main.run_dir.resolve())
    except ValueError:
        return seed_cfg
    return seed_cfg.model_copy(update={"rl": seed_cfg.rl.model_copy(update={"init": str(seed_cfg.run_dir / rel)})})


if __name__ == "__main__":
    sys.exit(main())
