"""Trainer checkpoints: the final model saved atomically, the guards a training loop runs under (disk before each save,
a test-only kill after one), the one rule for "the last complete checkpoint", and resume from it."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
from pathlib import Path

from stages.store import model_bytes, publish_dir, report_progress, require_disk


def save_checkpoint(model, tokenizer, folder: str | os.PathLike, state_dict: dict | None = None) -> Path:
    """Write a HF model (safetensors) and its tokenizer to a temporary folder beside ``folder``, then publish it.
    ``state_dict``: the whole weights when the model holds shards (gathered by the engine).

    Raises:
        ResourceError: the disk has no room for the checkpoint (checked before writing anything).
    """
    folder = Path(folder)
    require_disk(folder.parent, int(model_bytes(model) * 1.05), f"the checkpoint {folder.name}")
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        if os.environ.get(FAULT_DURING_SAVE_ENV):  # test-only: a crash in the middle of writing a checkpoint
            os.kill(os.getpid(), signal.SIGKILL)
        tokenizer.save_pretrained(tmp)
        return publish_dir(tmp, folder)
    except BaseException:  # a failed write (a full disk) leaves no half-written folder; the last complete one stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise


FAULT_ENV = "SFT2RL_FAULT_KILL_AFTER_SAVE"


FAULT_DURING_SAVE_ENV = "SFT2RL_FAULT_KILL_DURING_SAVE"


def training_guards(model, checkpoint_dir: Path, *, optimizer_copies: int = 2) -> list:
    """Trainer callbacks every training stage uses:

    - before each trainer checkpoint, check the disk has room for it (weights + optimizer states);
    - a non-finite logged loss stops training with FloatingPointError naming the step (the last checkpoint stays);
    - test-only fault injection: ``SFT2RL_FAULT_KILL_AFTER_SAVE=N`` SIGKILLs the process right after the trainer
      checkpoint of step N is written (the crash-and-resume tests use it; unset in normal runs).
    """
    from transformers import TrainerCallback  # lazy: pipeline/ imports this module and must not load torch

    size = model_bytes(model) * (1 + optimizer_copies)

    class Guards(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                report_progress(state.global_step, state.max_steps, "optimizer steps")
            if control.should_save and state.is_world_process_zero:
                require_disk(checkpoint_dir, size, f"the trainer checkpoint of step {state.global_step}")

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if isinstance(loss, float) and not math.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss ({loss}) at step {state.global_step}: lower the learning rate or "
                    "check the data; the last good trainer checkpoint is kept"
                )

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:  # the data may end before max_steps: the stage is done all the same
                report_progress(state.global_step, max(1, state.global_step), "optimizer steps")

        def on_save(self, args, state, control, **kwargs):
            step = os.environ.get(FAULT_ENV)
            if step and state.global_step == int(step):
                os.kill(os.getpid(), signal.SIGKILL)

    return [Guards()]


def checkpoints(trainer_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of a trainer folder, oldest first (by step number, not by name or mtime)."""
    found = [p for p in Path(trainer_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def last_complete_checkpoint(trainer_dir: Path, state_file: str = "trainer_state.json"):
    """The newest ``checkpoint-N`` whose state file reads, and that state; (None, None) if none. The one rule of
    "the last checkpoint" for every trainer: resume, the metrics kept on resume, and what a stage reports.

    ``state_file``: ``trainer_state.json`` (transformers' Trainer: SFT and GRPO; returns its ``TrainerState``) or
    ``state.json`` (the PPO loop's own checkpoints; returns the dict). A checkpoint a kill interrupted (no state file,
    or a truncated one) is skipped with a warning, so the rerun resumes from the one before it instead of failing on
    every rerun.
    """
    for ckpt in reversed(checkpoints(trainer_dir)):
        try:
            if state_file == "trainer_state.json":
                from transformers.trainer_callback import TrainerState  # lazy: pipeline/ must not load torch

                return ckpt, TrainerState.load_from_json(str(ckpt / state_file))
            state = json.loads((ckpt / state_file).read_text())
            if not isinstance(state, dict):
                raise ValueError(f"{state_file} is not an object")
            return ckpt, state
        except (OSError, ValueError) as e:
            logging.getLogger(__name__).warning("skipping incomplete trainer checkpoint %s (%s)", ckpt, e)
    return None, None


def train_resumable(trainer, trainer_dir: Path, max_steps: int):
    """``trainer.train()``, resuming from the newest checkpoint in ``trainer_dir`` if there is one.

    When that checkpoint already holds the last step (a crash after it, before the final save), its weights and
    state are loaded without training: transformers 5.x would otherwise run one step past ``max_steps``.
    """
    from transformers.trainer_utils import TrainOutput  # lazy: pipeline/ imports this module and must not load torch

    last, state = last_complete_checkpoint(trainer_dir)
    if last is None:
        return trainer.train()
    # The budget the trainer resolved itself (state.max_steps): for an epoch-based run (max_steps = -1) it is the
    # number of steps of all epochs, which the config value does not say.
    budget = state.max_steps if state.max_steps and state.max_steps > 0 else max_steps
    if state.global_step < budget:
        return trainer.train(resume_from_checkpoint=str(last))
    trainer._load_from_checkpoint(str(last))
    trainer.state = state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    return TrainOutput(state.global_step, sum(losses) / len(losses) if losses else float("nan"), {})
