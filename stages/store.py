"""Files a stage writes and the machine it writes on: atomic writes, completion markers, folder locks, content
hashes, disk and memory checks, progress marks. A half-written output is never taken for a finished one."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.config import ConfigError
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


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file a stage wrote (metrics, records), parsed. One that is not valid JSON (truncated by a crash outside
    the atomic writes, edited by hand) is a ConfigError naming it, not a parser's message without a file name."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path} is not valid JSON ({str(e)[:120]}): it was damaged or edited. Restore it, or remove it and run "
            "the stage that wrote it again (with --force)"
        ) from None


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


PROGRESS_MARK = "sft2rl-progress"


PROGRESS_ENV = "SFT2RL_PROGRESS_LINES"  # set by the flows for their child stages


def report_progress(done: int, total: int, what: str) -> None:
    """One machine-readable progress line on stdout (``sft2rl-progress 12/80 optimizer steps``) when a flow runs the
    stage (``SFT2RL_PROGRESS_LINES=1``): the flow turns it into the stage's Prefect progress artifact. A stage run by
    hand prints none (its progress bars show)."""
    if os.environ.get(PROGRESS_ENV):
        print(f"{PROGRESS_MARK} {done}/{total} {what}", flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS assigns from its ephemeral range (free when asked; never a well-known
    default such as torch.distributed's 29500, which concurrent launches would share)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
