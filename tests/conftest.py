"""Shared fixtures: the tiny config with outputs in a temp folder and one model cache per test session."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Threads per test process: the cores shared among pytest-xdist's workers (``make test`` runs two), so that two
# workers' torch never fight over the same cores (two 2-thread torch jobs on 2 cores run several times slower than
# one). Child processes the tests start inherit it. Without xdist: 2, as before.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
CONFIGS = REPO / "configs"


def pytest_collection_finish(session) -> None:
    """What collecting imported (torch, transformers, vLLM, sympy: modules that live until the worker exits) is
    moved out of the garbage collector's walks, as a stage process does after its imports (stages/startup.py)."""
    gc.freeze()


def write_eval(run_dir: Path, name: str, kind: str, init: str | None, metrics: dict, scores: dict) -> None:
    """One model's finished evaluation folder as the evaluate stage writes it (metrics.json, scores.json, DONE), for
    tests that feed synthetic per-item scores through the report's own aggregation."""
    import json  # noqa: PLC0415 - only the tests that write evaluations need it

    d = run_dir / "eval" / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"name": name, "kind": kind, "init": init, "metrics": metrics}))
    (d / "scores.json").write_text(json.dumps(scores))
    (d / "DONE").write_text("")


DOCS = REPO / "docs"


def doc_section(page: str, heading: str) -> str:
    """The text of ``docs/<page>`` (or ``README.md``) from the heading that starts with ``heading`` to the next
    heading of the same or a higher level (or the end of the page)."""
    text = (REPO / page if page == "README.md" else DOCS / page).read_text()
    start = text.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    for pos in range(start + len(heading), len(text)):
        if text[pos - 1] == "\n" and text.startswith("#", pos):
            hashes = len(text[pos:]) - len(text[pos:].lstrip("#"))
            if hashes <= level and text[pos + hashes : pos + hashes + 1] == " ":
                return text[start:pos]
    return text[start:]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sft2rl-cache")


@pytest.fixture
def tiny_cfg(tmp_path, cache_dir):
    """A loader of configs/tiny.yaml writing into tmp_path, with extra dotted overrides."""
    from stages.config import load_config

    def make(*overrides: str):
        return load_config(
            CONFIGS / "tiny.yaml", [f"runs_root={tmp_path / 'runs'}", f"cache_dir={cache_dir}", *overrides]
        )

    return make


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
