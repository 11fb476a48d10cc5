"""Verifiable rewards: pure functions ``(completions, **columns) -> list[float]``, registered by name.

Configs and deployment parameters name rewards (``math_correct``, ``format``); they never import arbitrary code.
The final answer of a completion is whichever comes last of its last ``#### N`` line and its last ``\\boxed{...}``;
the gold answer is parsed with math-verify, and a gold answer that does not parse never scores as correct.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

RewardFn = Callable[..., list[float]]
REWARDS: dict[str, RewardFn] = {}

_HASHES = re.compile(r"####[ \t]*([^\n]*)")


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is registered twice")
        REWARDS[name] = fn
        fn.__name__ = name  # TRL logs rewards under the function name
        return fn

    return deco


def get_reward(name: str) -> RewardFn:
    """The registered reward ``name``. Raises ValueError naming the known ones."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; registered rewards: {', '.join(sorted(REWARDS))}")
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


def _last_boxed(text: str) -> tuple[int, str] | None:
    """Position and content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    while start != -1:
        i = start + len("\\boxed{")
        depth = 1
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            return start, text[start + len("\\boxed{") : i - 1]
        start = text.rfind("\\boxed{", 0, start)  # unbalanced: try an earlier one
    return None


def extract_final_answer(text: str) -> str | None:
    """The completion's final answer: the later of its last ``#### N`` and its last ``\\boxed{}``; None if neither."""
    candidates: list[tuple[int, str]] = []
    hashes = list(_HASHES.finditer(text))
    if hashes:
        m = hashes[-1]
        candidates.append((m.start(), m.group(1).strip()))
    boxed = _last_boxed(text)
    if boxed is not None:
        candidates.append((boxed[0], boxed[1].strip()))
    if not candidates:
        return None
    answer = max(candidates)[1]
    return answer or None


def _parse(text: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(text, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()])


def _normalise_number(text: str) -> str:
    # "1,234" and "$1,234" are the same number; math-verify reads commas as tuples.
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text).replace("$", "").strip()


def gold_parses(gold: Any) -> bool:
    """Whether math-verify can read a gold answer (an unreadable gold answer would make every completion wrong)."""
    return gold is not None and bool(_parse(_normalise_number(str(gold))))


def is_correct(prediction: str | None, gold: Any) -> bool:
    """math-verify equivalence of a predicted final answer and a gold answer. Unparsable gold is never correct."""
    if prediction is None or gold is None:
        return False
    from math_verify import verify

    gold_parsed = _parse(_normalise_number(str(gold)))
    if not gold_parsed:
        return False
    pred = _normalise_number(prediction)
    pred_parsed = _parse(pred) or _parse(f"\\boxed{{{pred}}}")
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed))


@register("math_correct")
def math_correct(completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """1.0 when the completion's final answer equals the gold ``answer`` (math-verify), else 0.0."""
    return [
        float(is_correct(extract_final_answer(completion_text(c)), a)) for c, a in zip(completions, answer, strict=True)
    ]


@register("format")
def format_reward(completions: list[Any], **_: Any) -> list[float]:
    """1.0 when the completion ends with its final answer (a ``#### N`` last line or a last ``\\boxed{}``), else 0.0."""
    out = []
    for c in completions:
        text = completion_text(c).strip()
        last_line = text.rsplit("\n", 1)[-1]
        ok = bool(re.fullmatch(r"####[ \t]*\S.*", last_line)) or (
            (b := _last_boxed(text)) is not None and not text[b[0] :].split("}", 1)[-1].strip("}. $\n")
        )
        out.append(float(ok))
    return out
