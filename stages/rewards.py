"""Verifiable rewards: pure functions ``(completions, **columns) -> list[float]``, registered by name.

Configs and deployment parameters name rewards (``math_correct``, ``format``); they never import arbitrary code.
``math_correct`` is :func:`stages.answers.score_math`, the same scorer the evaluation uses: the completion's marked
final answer (``#### X``, ``\\boxed{X}``, "The final answer is X") against the gold, both read whole by math-verify.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from stages.answers import GoldError, extract_final_answer, gold_parses, last_boxed, score_math

__all__ = ["REWARDS", "GoldError", "extract_final_answer", "get_reward", "gold_parses", "math_correct", "register"]

log = logging.getLogger(__name__)

RewardFn = Callable[..., list[float]]
REWARDS: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is registered twice")
        REWARDS[name] = fn
        fn.__name__ = name  # TRL logs rewards under the function name
        return fn

    return deco


ENTRY_POINT_GROUP = "sft2rl.rewards"


def installed_rewards() -> dict[str, Any]:
    """Rewards that installed packages declare under the ``sft2rl.rewards`` entry-point group (name -> entry point),
    e.g. in a package's pyproject.toml: ``[project.entry-points."sft2rl.rewards"] my_reward = "my_pkg.rewards:fn"``.
    Only what the machine's operator installed: configs still name rewards, never import paths."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_reward(name: str) -> RewardFn:
    """The registered reward ``name`` (built in, or declared by an installed package). Raises ValueError naming the
    known ones."""
    if name not in REWARDS:
        installed = installed_rewards()
        if name in installed:
            fn = installed[name].load()
            if not callable(fn):
                raise ValueError(f"reward {name!r} of an installed package ({installed[name].value}) is not callable")
            register(name)(fn)
        else:
            known = sorted({*REWARDS, *installed})
            raise ValueError(
                f"unknown reward {name!r}; registered rewards: {', '.join(known)} (packages add rewards through the "
                f"{ENTRY_POINT_GROUP!r} entry-point group)"
            )
    return REWARDS[name]


def completion_text(completion: Any) -> str:
    """Text of a completion: a string, or TRL's conversational form (a list of messages)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict) and m.get("role") == "assistant")
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return ""


@register("math_correct")
def math_correct(completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """1.0 when the completion's final answer equals the gold ``answer`` (:func:`stages.answers.score_math`).

    Golds are checked before training (``rl_prompts``); one that still cannot be read scores 0.0 with a warning
    rather than ending a long run."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        try:
            out.append(score_math(completion_text(c), a))
        except GoldError as e:
            log.warning("math_correct: %s; scored 0.0", e)
            out.append(0.0)
    return out


@register("format")
def format_reward(completions: list[Any], **_: Any) -> list[float]:
    """1.0 when the completion ends with its final answer (a ``#### N`` last line or a last ``\\boxed{}``), else 0.0."""
    out = []
    for c in completions:
        text = completion_text(c).strip()
        last_line = text.rsplit("\n", 1)[-1]
        ok = bool(re.fullmatch(r"####[ \t]*\S.*", last_line)) or (
            (b := last_boxed(text)) is not None and not text[b[0] :].split("}", 1)[-1].strip("}. $\n")
        )
        out.append(float(ok))
    return out
