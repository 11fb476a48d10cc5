"""Atomic file writes and completion markers: a half-written output is never taken for a finished one."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.layout import DONE

DONE_MARKER = DONE


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """The one way files are written: ``write(tmp)`` fills a uniquely named temporary file beside ``path``, which is
    synced and renamed into place, so a reader sees the old file or the whole new one, never a part (several ranks
    may write the same path at once). The temporary file is removed on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600: outputs get the mode any other file would
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def publish_dir(tmp_dir: Path, final_dir: Path) -> Path:
    """Move a fully written folder into place (rename), replacing an older one; then mark it complete."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
    mark_done(final_dir)
    return final_dir


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
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    if os.environ.get(FAULT_DURING_SAVE_ENV):  # test-only: a crash in the middle of writing a checkpoint
        os.kill(os.getpid(), signal.SIGKILL)
    tokenizer.save_pretrained(tmp)
    return publish_dir(tmp, folder)


def mark_done(folder: Path) -> None:
    atomic_write_text(Path(folder) / DONE_MARKER, "complete\n")


def is_done(folder: str | os.PathLike) -> bool:
    return (Path(folder) / DONE_MARKER).is_file()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_stamp(folder: str | os.PathLike) -> str:
    """Name, size and mtime of each safetensors file of a model folder: a cheap key that changes when the weights
    are rewritten (a content hash is ``stages.provenance.weights_digest``)."""
    return "".join(  # concatenated as the evaluation fingerprint always hashed them
        f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(Path(folder).glob("*.safetensors"))
    )


class LockedError(RuntimeError):
    """Another live process is writing the same output folder."""


class FolderLock:
    """An exclusive lock on an output folder: ``flock`` on ``<folder>/.lock``, which records the owner for messages.

    The kernel holds the lock, so it is released when its holder dies however it dies (no stale pid to judge), two
    processes starting at the same instant cannot both get it, and it holds across containers that share the run
    volume on one host. A second process is refused at once with a message naming the owner. Use as a context
    manager.
    """

    def __init__(self, folder: str | os.PathLike, name: str = ".lock"):
        self.path = Path(folder) / name
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        self._created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise LockedError(
                    f"{self.path.parent} is being written by process {owner}; wait for it to finish, or use "
                    "another run_name"
                ) from None
            try:  # the holder before us may have removed the file after we opened it: lock the file that is there
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}".encode(), 0)
            self.fd = fd
            return self
        raise LockedError(f"could not lock {self.path.parent}: the lock file keeps being replaced")

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # still holding it: a waiter that opened the old file retries (inode check)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        if getattr(self, "_created", False):
            try:
                self.path.parent.rmdir()  # only when nothing was written: bad input leaves no empty folder behind
            except OSError:
                pass


# ------------------------------------------------------------------------------------------- resources, faults
class ResourceError(RuntimeError):
    """Not enough disk (or another resource) to continue safely; the message names the place and the amounts."""


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


_DISK_RESERVE = 64 << 20  # bytes every write must leave free (config disk_reserve_gb; set by the stage entry point)


def set_disk_reserve(gib: float) -> None:
    global _DISK_RESERVE
    _DISK_RESERVE = int(gib * 2**30)


def require_disk(path: str | os.PathLike, needed: int, what: str) -> None:
    """Raise ResourceError unless ``needed`` bytes plus the reserve (``disk_reserve_gb``, 64 MiB by default) are
    free where ``path`` lives.

    Raises:
        ResourceError: names the folder, the bytes needed and free, and the fix.
    """
    free = free_bytes(path)
    if free < needed + _DISK_RESERVE:
        raise ResourceError(
            f"not enough disk for {what} in {path}: needs about {needed / 2**30:.2f} GiB and keeps "
            f"{_DISK_RESERVE / 2**30:.2f} GiB free (disk_reserve_gb), {free / 2**30:.2f} GiB free. Free space or point "
            "runs_root / cache_dir elsewhere; the last complete checkpoint is kept and the run resumes from it"
        )


def model_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def warn_memory(n_params: int, *, copies: float, what: str, logger) -> float:
    """Log a warning when a CPU run's estimated memory (``copies`` fp32 copies of the parameters plus 1 GiB for
    activations and the runtime) exceeds 80% of the available memory; return the estimate in GiB."""
    estimate = n_params * 4 * copies + (1 << 30)
    avail = available_memory_bytes()
    if avail is not None and estimate > 0.8 * avail:
        logger.warning(
            "%s on CPU needs an estimated %.1f GiB (%.1fB parameters x %.1f fp32 copies: weights, gradients, Adam "
            "states, anchors or reference model) but %.1f GiB are available: expect swapping or an out-of-memory kill. "
            "Lower per_device_train_batch_size / max_length, use LoRA, or run on a GPU",
            what, estimate / 2**30, n_params / 1e9, copies, avail / 2**30,
        )  # fmt: skip
    return estimate / 2**30


FAULT_ENV = "SFT2RL_FAULT_KILL_AFTER_SAVE"
FAULT_DURING_SAVE_ENV = "SFT2RL_FAULT_KILL_DURING_SAVE"


PROGRESS_MARK = "sft2rl-progress"
PROGRESS_ENV = "SFT2RL_PROGRESS_LINES"  # set by the flows for their child stages


def report_progress(done: int, total: int, what: str) -> None:
    """One machine-readable progress line on stdout (``sft2rl-progress 12/80 optimizer steps``) when a flow runs the
    stage (``SFT2RL_PROGRESS_LINES=1``): the flow turns it into the stage's Prefect progress artifact. A stage run by
    hand prints none (its progress bars show)."""
    if os.environ.get(PROGRESS_ENV):
        print(f"{PROGRESS_MARK} {done}/{total} {what}", flush=True)


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
