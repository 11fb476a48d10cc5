"""A read-only view of the runs folder over HTTP on 127.0.0.1, so that the Prefect UI can show the report's plots
and open the HTML report and run folders (a browser opens no ``file://`` link from a web page).

Python's own ``http.server`` serves the folder (GET and HEAD only, directory listings); it starts beside the Prefect
server (``sft2rl run``, ``sft2rl server --background``) and stops with it. Its address and folder are recorded in
``PREFECT_HOME/files.json``, where the flows read them to turn a path into a link.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_PORT = 4201


def _state_file() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.cwd() / ".prefect") / "files.json"


def _state() -> dict | None:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None


def _answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a local http URL
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def command(root: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--bind", HOST, "--directory", str(root)]


def start_background(root: str | os.PathLike, port: int | None = None, wait_s: float = 15.0) -> str:
    """Serve ``root`` (read-only) in the background unless it is already served; return its base URL.

    Raises:
        RuntimeError: the server did not answer in time (the message points at its log).
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = int(port or os.environ.get("SFT2RL_FILES_PORT", DEFAULT_PORT))
    state = _state()
    if state and _answers(state["url"] + "/"):
        if Path(state["root"]) == root:
            return state["url"]
        stop_background()  # another folder: serve this run's instead
    url = f"http://{HOST}:{port}"
    log_path = _state_file().with_name("files.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command(root, port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _answers(url + "/"):
            _state_file().write_text(json.dumps({"url": url, "root": str(root), "pid": proc.pid}))
            return url
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the file server for {root} did not start on {url} (port in use?); see {log_path}")


def stop_background() -> bool:
    """Stop the file server this project started. True if one was stopped."""
    state = _state()
    _state_file().unlink(missing_ok=True)
    if not state:
        return False
    try:
        os.killpg(int(state["pid"]), signal.SIGTERM)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return True


def url_for(path: str | os.PathLike) -> str | None:
    """The http URL of ``path`` when the file server serves a folder holding it, else None (links then fall back to
    ``file://``, which the UI shows but a browser will not open)."""
    state = _state()
    if not state:
        return None
    p = Path(path).resolve()
    root = Path(state["root"])
    if not p.is_relative_to(root) or not _answers(state["url"] + "/", timeout=1.0):
        return None
    rel = p.relative_to(root).as_posix()
    return state["url"] + "/" + urllib.parse.quote(rel) + ("/" if p.is_dir() and rel else "")
