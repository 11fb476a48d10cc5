"""A local Prefect server for sft2rl: bound to 127.0.0.1, SQLite under the project's ``.prefect/``, offline-safe.

Prefect reads its settings from the environment, so :func:`configure` runs before ``prefect`` is imported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


def configure(
    home: str | os.PathLike | None = None, port: int | None = None, host: str = DEFAULT_HOST, api: bool = True
) -> str | None:
    """Set offline-safe Prefect settings (without overriding what the user set) and return the API URL.

    ``api=False`` leaves PREFECT_API_URL unset when the user has not set it: Prefect then runs flows against a
    temporary in-process server.
    """
    home = Path(home or os.environ.get("PREFECT_HOME") or Path.cwd() / ".prefect").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Stream run logs to subscribers: `prefect deployment run --watch` then prints each log line of the run (a failed
    # stage's cause and fix included) between the state events; Prefect leaves both off by default.
    os.environ.setdefault("PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED", "true")
    os.environ.setdefault("PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED", "true")
    os.environ.setdefault("PREFECT_SERVER_API_HOST", host)
    if port is not None:
        os.environ["PREFECT_SERVER_API_PORT"] = str(port)
    os.environ.setdefault("PREFECT_SERVER_API_PORT", str(DEFAULT_PORT))
    if api:
        host_port = f"{os.environ['PREFECT_SERVER_API_HOST']}:{os.environ['PREFECT_SERVER_API_PORT']}"
        os.environ.setdefault("PREFECT_API_URL", f"http://{host_port}/api")
    return os.environ.get("PREFECT_API_URL")


def ui_url(api_url: str | None = None) -> str:
    api = api_url or os.environ.get("PREFECT_API_URL", f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/api")
    return api.removesuffix("/").removesuffix("/api")


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:  # noqa: S310 - local URL
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _pid_file() -> Path:
    return Path(os.environ["PREFECT_HOME"]) / "server.pid"


def server_command() -> list[str]:
    return [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        os.environ["PREFECT_SERVER_API_HOST"],
        "--port",
        os.environ["PREFECT_SERVER_API_PORT"],
    ]


def start_background(wait_s: float = 90.0) -> tuple[str, bool]:
    """Start the server detached (log in PREFECT_HOME/server.log) unless one already answers.

    Returns:
        (API URL, whether this call started it).

    Raises:
        RuntimeError: the server did not become healthy in time (the message points at its log).
    """
    api = os.environ["PREFECT_API_URL"]
    if healthy(api):
        return api, False
    log_path = Path(os.environ["PREFECT_HOME"]) / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(server_command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _pid_file().write_text(str(proc.pid))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if healthy(api):
            return api, True
        if proc.poll() is not None:
            break
        time.sleep(0.2)  # a health request costs milliseconds; a longer wait only delays the run that waits for it
    raise RuntimeError(f"the Prefect server did not start at {api}; see {log_path}")


def stop_background() -> bool:
    """Stop a server started by :func:`start_background` (its process group). True if one was stopped."""
    pid_file = _pid_file()
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text().strip() or 0)
    pid_file.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    for _ in range(150):  # up to 15 s
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)
    return True
