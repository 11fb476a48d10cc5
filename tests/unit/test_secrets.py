"""Secret values from the environment are replaced by *** in log lines and messages."""

from __future__ import annotations

import logging

from stages.secrets import SecretFilter, scrub, secret_values


def test_secret_values_are_picked_by_name_and_length():
    env = {"HF_TOKEN": "hf_abcdef123", "WANDB_API_KEY": "k" * 40, "POSTGRES_PASSWORD": "pw", "PATH": "/usr/bin"}
    assert set(secret_values(env)) == {"hf_abcdef123", "k" * 40}  # short values and ordinary variables are left


def test_scrub_replaces_every_occurrence():
    env = {"HF_TOKEN": "hf_abcdef123"}
    assert scrub("token hf_abcdef123 in https://x/hf_abcdef123/y", env) == "token *** in https://x/***/y"
    assert scrub("nothing secret here", env) == "nothing secret here"


def test_log_filter_scrubs_formatted_messages(monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", "hf_zyxwvu987")
    log = logging.getLogger("test.secrets")
    log.addFilter(SecretFilter())
    with caplog.at_level(logging.INFO, logger="test.secrets"):
        log.info("loading %s with %s", "model", "hf_zyxwvu987")
    assert "hf_zyxwvu987" not in caplog.text and "loading model with ***" in caplog.text
