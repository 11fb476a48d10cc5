"""A page as a user's browser shows it: headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.
Returns the page's text and every image with its natural width (0: the image did not load), and a screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

_JS = (
    "JSON.stringify({ready: document.readyState, text: document.body ? document.body.innerText : '', "
    "images: Array.from(document.images).map(i => ({src: i.src, width: i.naturalWidth, complete: i.complete}))})"
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """Open ``url`` and wait until ``until(state)`` holds (or ``timeout`` passes); ``state`` is the last look."""

    def __init__(self, url: str, until, timeout: float = 60.0, screenshot: Path | None = None):
        exe = chromium()
        if exe is None:
            raise RuntimeError("chromium is not installed (apt-get install -y chromium)")
        profile = Path(tempfile.mkdtemp(prefix="sft2rl-chromium-"))
        args = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,2000",
            "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._ids = itertools.count(1)
        try:
            port = self._port(profile)
            pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page")
            with connect(ws_url, max_size=64 << 20, open_timeout=20) as ws:
                self.ws = ws
                self._call("Page.enable")
                self._call("Page.navigate", url=url)
                deadline = time.monotonic() + timeout
                while True:
                    res = self._call("Runtime.evaluate", expression=_JS, returnByValue=True)
                    self.state = json.loads(res["result"]["value"])
                    if until(self.state) or time.monotonic() > deadline:
                        break
                    time.sleep(1.0)
                if screenshot is not None:
                    shot = self._call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                    screenshot.write_bytes(base64.b64decode(shot["data"]))
        finally:
            self.proc.kill()
            self.proc.wait(timeout=30)
            shutil.rmtree(profile, ignore_errors=True)

    @staticmethod
    def _port(profile: Path) -> int:
        f = profile / "DevToolsActivePort"
        for _ in range(300):
            if f.is_file() and f.read_text().strip():
                return int(f.read_text().splitlines()[0])
            time.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    def _call(self, method: str, **params):
        i = next(self._ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
