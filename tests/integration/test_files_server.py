"""The read-only file server that lets the Prefect UI show the report's plots: starts on 127.0.0.1, turns run paths
into links a browser opens, refuses writes and paths outside the runs folder, and stops."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from pipeline import files


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = tmp_path / "runs"
    (runs / "my-run" / "plots").mkdir(parents=True)
    (runs / "my-run" / "plots" / "tradeoff.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    url = files.start_background(runs, port=port)
    yield url, runs, tmp_path
    files.stop_background()


def test_run_files_get_links_that_open(served):
    url, runs, _ = served
    assert url.startswith("http://127.0.0.1:")
    assert files.start_background(runs) == url  # already serving this folder: the same server
    link = files.url_for(runs / "my-run" / "plots" / "tradeoff.png")
    assert link == f"{url}/my-run/plots/tradeoff.png"
    with urllib.request.urlopen(link, timeout=5) as r:
        assert r.read() == b"\x89PNG\r\n\x1a\nfake"
    assert files.url_for(runs / "my-run") == f"{url}/my-run/"


def test_nothing_outside_the_runs_folder_and_no_writes(served):
    url, runs, tmp = served
    (tmp / "secret.txt").write_text("no")
    assert files.url_for(tmp / "secret.txt") is None
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{url}/../secret.txt", timeout=5)
    assert e.value.code == 404
    req = urllib.request.Request(f"{url}/my-run/new.txt", data=b"x", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 501 and not (runs / "my-run" / "new.txt").exists()


def test_stopped_server_gives_no_links(served):
    _, runs, _ = served
    assert files.stop_background()
    assert files.url_for(runs / "my-run") is None
