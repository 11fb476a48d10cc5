"""A run folder mirrored to shared storage, so that stages on different machines meet only there.

The store is any fsspec URL (``file:///mnt/shared/runs``, ``s3://bucket/runs``, ``gs://...``; the protocol's fsspec
package and credentials are the machine's). A run's files live under ``<store>/<run_name>/`` with the same layout as
the local run folder. Every stage works in its machine's local run folder as it always does (locks, atomic writes,
resume); with a store, a stage first pulls what the store has that this machine lacks, and after it succeeds pushes
what it wrote. Trainer checkpoints (``<arm>/trainer/``, the resume state) and lock files stay local. Completion
markers (``DONE``) travel last, so a reader never sees a finished arm whose files are still on their way; a file is
copied to a temporary name and renamed, so a reader never sees half a file.

Each side keeps a small manifest in the local run folder (``.store-state.json``): for every file, the local size and
modification time it had when it last went to or came from the store, and the store's own key for it. An unchanged
file is not copied again, in either direction.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE = ".store-state.json"
LOCAL_ONLY_DIRS = {"trainer"}  # resume state: large, and only the machine that trains resumes
LOCAL_ONLY_NAMES = {STATE}  # and every lock file (``*.lock``): a lock holds on its own machine only


class StoreError(RuntimeError):
    """The store cannot be reached or written; the message names the URL and the cause."""


def _fs(url: str):
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise StoreError(f"store {url!r}: {e} (install the fsspec package for its protocol)") from None
    return fs, root.rstrip("/")


def _local_only(rel: str) -> bool:
    parts = rel.split("/")
    name = parts[-1]
    return name in LOCAL_ONLY_NAMES or name.endswith((".lock", ".tmp")) or any(p in LOCAL_ONLY_DIRS for p in parts[:-1])


def _done_last(paths: list[str]) -> list[str]:
    return sorted(paths, key=lambda r: (posixpath.basename(r) == "DONE", r))


def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(run_dir: Path, state: dict[str, Any]) -> None:
    tmp = run_dir / f"{STATE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, sort_keys=True))
    os.replace(tmp, run_dir / STATE)


def _local_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _remote_key(info: dict[str, Any]) -> str:
    """What identifies a version of a stored file: its size and whichever of mtime / ETag / generation the backend
    reports."""
    stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("etag") or info.get("created")
    return f"{info.get('size')}:{stamp}"


def push(url: str, run_dir: str | Path, run_name: str) -> int:
    """Upload the files of ``run_dir`` that changed since they last went to or came from the store; returns how many
    were copied."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return 0
    fs, root = _fs(url)
    base = f"{root}/{run_name}"
    state = _read_state(run_dir)
    changed = []
    for path in run_dir.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(run_dir).as_posix()
        if _local_only(rel):
            continue
        if state.get(rel, {}).get("local") != _local_key(path):
            changed.append(rel)
    try:
        for rel in _done_last(changed):
            dest = f"{base}/{rel}"
            tmp = f"{dest}.{uuid.uuid4().hex[:8]}.tmp"
            fs.makedirs(posixpath.dirname(dest), exist_ok=True)
            fs.put_file(str(run_dir / rel), tmp)
            fs.mv(tmp, dest)
            state[rel] = {"local": _local_key(run_dir / rel), "remote": _remote_key(fs.info(dest))}
    except OSError as e:
        raise StoreError(f"store {url!r}: could not write {run_name}: {e}") from None
    finally:
        _write_state(run_dir, state)
    if changed:
        log.info("pushed %d file(s) of %s to %s", len(changed), run_name, url)
    return len(changed)


def pull(url: str, run_dir: str | Path, run_name: str) -> int:
    """Download the files of the store's copy of the run that this machine lacks or that changed there since they
    last came from or went to it; returns how many were copied. A run the store does not have yet pulls nothing."""
    run_dir = Path(run_dir)
    fs, root = _fs(url)
    base = f"{root}/{run_name}"
    try:
        if not fs.exists(base):
            return 0
        listing = fs.find(base, detail=True)
    except OSError as e:
        raise StoreError(f"store {url!r}: could not list {run_name}: {e}") from None
    run_dir.mkdir(parents=True, exist_ok=True)
    state = _read_state(run_dir)
    wanted = {}
    for path, info in listing.items():
        rel = posixpath.relpath(path, base)
        if info.get("type") == "directory" or _local_only(rel):
            continue
        key = _remote_key(info)
        local = run_dir / rel
        if state.get(rel, {}).get("remote") == key and local.is_file():
            continue
        wanted[rel] = key
    try:
        for rel in _done_last(list(wanted)):
            local = run_dir / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f"{local.name}.{uuid.uuid4().hex[:8]}.tmp")
            fs.get_file(f"{base}/{rel}", str(tmp))
            os.replace(tmp, local)
            state[rel] = {"local": _local_key(local), "remote": wanted[rel]}
    except OSError as e:
        raise StoreError(f"store {url!r}: could not read {run_name}: {e}") from None
    finally:
        _write_state(run_dir, state)
    if wanted:
        log.info("pulled %d file(s) of %s from %s", len(wanted), run_name, url)
    return len(wanted)
