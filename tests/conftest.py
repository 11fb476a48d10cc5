"""Shared fixtures: the tiny config with outputs in a temp folder and one model cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


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
