"""Keep secrets out of logs and artifacts: values of secret-looking environment variables are replaced by ``***``.

A variable counts as secret when its name contains TOKEN, SECRET, PASSWORD, API_KEY or ACCESS_KEY (HF_TOKEN,
HUGGING_FACE_HUB_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, POSTGRES_PASSWORD, ...). Values shorter than 6
characters are ignored (too likely to occur by chance). No secret is ever a config field, so the resolved configs
written beside every output cannot hold one.
"""

from __future__ import annotations

import logging
import os
import re

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY", re.I)


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    return sorted({v for k, v in env.items() if _SECRET_NAME.search(k) and v and len(v) >= 6}, key=len, reverse=True)


def scrub(text: str, env: dict[str, str] | None = None) -> str:
    """``text`` with every secret value replaced by ``***``."""
    for v in secret_values(env):
        text = text.replace(v, "***")
    return text


class SecretFilter(logging.Filter):
    """A logging filter that scrubs the formatted message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = scrub(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True
