"""Final answers of math completions and their equivalence to gold answers: the one scorer behind both the RL reward
(``math_correct``) and the evaluation.

A completion's final answer is the last of: a ``#### X`` line, a ``\\boxed{X}``, a "final answer is X" / "Final
Answer: X" phrase. Failing those, a completion whose last line is a ``$...$`` (or ``\\(...\\)``, ``\\[...\\]``) formula
answers with that formula. ``lenient`` scoring (reported beside the strict one) also takes the last number of a
completion with no marked answer.

Gold and prediction are both read by math-verify the way it intends: wrapped as ``\\boxed{...}`` so that its LaTeX
extraction sees the *whole* answer (a bare ``3\\sqrt{13}`` would otherwise be read by the expression fallback as
``3``). Before that, a few spellings math-verify does not know are rewritten: ``4.5e33`` as ``4.5 \\times 10^{33}``,
Python expressions (``np.arcsin(10/13)``, ``2**10``, ``sqrt(2)``) as LaTeX, plain words as ``\\text{...}`` and
``6 - 5 i`` as ``6 - 5i``. A gold that does not parse as a whole raises :class:`GoldError` naming it: it is never
replaced by a fragment of itself.

math-verify guards parsing and comparison with ``signal.alarm``, which works on the main thread only; elsewhere (a
Prefect or TRL worker thread) each call runs in a helper thread with the same limit, and a timed-out comparison is
scored 0 with a warning.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

log = logging.getLogger(__name__)

TIMEOUT_S = 5
MAX_ANSWER_CHARS = 2000  # longer "answers" are not answers; parsing them can take sympy minutes

_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_FINAL_PHRASE = re.compile(
    r"final answer\s*(?:is|:)\s*[:\s]*(?P<ans>[^\n]*)",
    re.IGNORECASE,
)
_TRAILING = re.compile(r"(?:\s*I hope it is correct\.?|\s*[.;,]\s*)+$", re.IGNORECASE)
_MATH_DELIMS = [("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)")]
_SCI = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)[eE]([+-]?\d+)(?![\w.])")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+)?|-?\.\d+")
_PY_FUNCS = ("arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sin", "cos", "tan", "log", "ln", "exp")
_MATH_WORDS = {"sqrt", "pi", "infty", "inf", "oo", "sec", "csc", "cot", *_PY_FUNCS}
_LETTER = re.compile(r"^\(?([A-J])\)?[.:]?$")


class GoldError(ValueError):
    """A gold answer that cannot be read as a whole; the message names it."""


# ------------------------------------------------------------------------------------------ final answers
def last_boxed(text: str) -> tuple[int, str] | None:
    """Position and content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces), or None."""
    starts = [m.start() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        i = text.index("{", start) + 1
        depth, j = 1, i
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth == 0:
            return start, text[i : j - 1]
    return None


def _unwrap_math(s: str) -> str:
    """``$x$``, ``\\(x\\)``, ``\\[x\\]`` -> ``x`` (outermost delimiters only), trailing punctuation dropped."""
    s = _TRAILING.sub("", s.strip())
    for left, right in _MATH_DELIMS:
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            return _TRAILING.sub("", s[len(left) : -len(right)].strip())
    return s


def _last_formula(line: str) -> str | None:
    """The last ``$...$`` / ``\\(...\\)`` / ``\\[...\\]`` formula of a line, or None."""
    best: tuple[int, str] | None = None
    for left, right in _MATH_DELIMS:
        pattern = r"(?<!\\)" + re.escape(left) + r"(.+?)(?<!\\)" + re.escape(right)
        for m in re.finditer(pattern, line):
            if best is None or m.start() > best[0]:
                best = (m.start(), m.group(1).strip())
    return best[1] if best else None


def extract_final_answer(text: str) -> str | None:
    """The completion's marked final answer (see the module docstring); None when it has none."""
    if not text:
        return None
    candidates: list[tuple[int, str]] = []
    hashes = list(_HASHES.finditer(text))
    if hashes:
        candidates.append((hashes[-1].start(), hashes[-1].group(1)))
    boxed = last_boxed(text)
    if boxed is not None:
        candidates.append(boxed)
    phrases = list(_FINAL_PHRASE.finditer(text))
    if phrases:
        m = phrases[-1]
        ans = m.group("ans")
        while (again := _FINAL_PHRASE.search(ans)) is not None:  # "Final Answer: The final answer is $5$."
            ans = again.group("ans")
        inner = last_boxed(ans)
        candidates.append((m.start(), inner[1] if inner else ans))
    if not candidates:
        last_line = text.strip().rsplit("\n", 1)[-1]
        formula = _last_formula(last_line)
        if formula is None:
            return None
        candidates.append((0, formula))
    answer = _unwrap_math(max(candidates, key=lambda c: c[0])[1])
    return answer or None


def lenient_final_answer(text: str) -> str | None:
    """The marked final answer, or else the last number in the completion (the "lenient" reading)."""
    marked = extract_final_answer(text)
    if marked is not None:
        return marked
    numbers = _NUMBER.findall(text or "")
    return numbers[-1] if numbers else None


# ----------------------------------------------------------------------------------------- normalisation
def _python_to_latex(s: str) -> str:
    """``np.arcsin(10/13)`` -> ``\\arcsin(10/13)``, ``2**10`` -> ``2^{10}``, ``sqrt(2)`` -> ``\\sqrt{2}``."""
    s = re.sub(r"\b(?:np|numpy|math|sympy|sp)\.", "", s)
    s = re.sub(r"\*\*\s*\(([^()]*)\)", r"^{\1}", s)
    s = re.sub(r"\*\*\s*(-?[\w.]+)", r"^{\1}", s)
    s = re.sub(r"(?<![\\\w])pi\b", r"\\pi", s)
    s = re.sub(r"(?<![\\\w])(" + "|".join(_PY_FUNCS) + r")\s*\(", r"\\\1(", s)
    out, i = [], 0
    while (j := s.find("sqrt(", i)) != -1:  # sqrt(...) with balanced parentheses -> \sqrt{...}
        if j > 0 and (s[j - 1].isalnum() or s[j - 1] == "\\"):
            out.append(s[i : j + 5])
            i = j + 5
            continue
        depth, k = 1, j + 5
        while k < len(s) and depth:
            depth += {"(": 1, ")": -1}.get(s[k], 0)
            k += 1
        if depth:
            break
        out.append(s[i:j] + "\\sqrt{" + s[j + 5 : k - 1] + "}")
        i = k
    out.append(s[i:])
    return "".join(out).replace("*", " \\cdot ")


def normalise(answer: str) -> str:
    """Rewrite spellings math-verify does not read (see the module docstring). Idempotent."""
    s = answer.strip()
    boxed = last_boxed(s)
    if boxed is not None and boxed[0] == 0 and s.endswith("}"):
        s = boxed[1].strip()
    s = _unwrap_math(s)
    s = re.sub(r"\\(?:left|right)(?=[()\[\]|.])", "", s)
    s = re.sub(r"(?<=\d)\\[,!;:](?=\d{3}\b)", ",", s)  # 10,\!080 and 10\,080: thousands separators
    unit = re.fullmatch(r"([-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+))\s+([A-Za-z]{2,}(?:\s+[A-Za-z]+)*)", s)
    if unit and not any(w.lower() in _MATH_WORDS for w in unit.group(2).split()):
        s = unit.group(1)  # "18.90 dollars": a number followed by a unit in words
    s = _SCI.sub(lambda m: f"{m.group(1)} \\times 10^{{{int(m.group(2))}}}", s)
    if "\\" not in s and (re.search(r"\*\*|\b(?:np|math)\.|\b(?:sqrt|pi)\b", s) or re.search(r"\d\s*\*\s*\d", s)):
        s = _python_to_latex(s)
    s = re.sub(r"(\d)\s+i\b", r"\1i", s)  # "6 - 5 i": a spaced imaginary unit reads as another product
    words = re.findall(r"[A-Za-z]+", s)
    if re.fullmatch(r"[A-Za-z][A-Za-z' -]*[A-Za-z]", s) and any(
        len(w) > 2 and w.lower() not in _MATH_WORDS for w in words
    ):
        s = f"\\text{{{s}}}"  # a plain word: compare it as text, not as a commutative product of letters
    return s


# ------------------------------------------------------------------------------------------------ parsing
def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="math-verify")


def _guarded(fn, *args, default):
    """``fn(*args)`` under a timeout that also works off the main thread."""
    if _on_main_thread():
        return fn(*args, timeout=TIMEOUT_S)
    future = _pool().submit(fn, *args, timeout=None)
    try:
        return future.result(timeout=TIMEOUT_S)
    except FutureTimeout:
        log.warning("math-verify took over %ss on %r; scored as not equivalent", TIMEOUT_S, args[0])
        return default


def _mv_parse(text: str, with_expr: bool, timeout: int | None):
    # lazy: stages.config validates rl.rewards by importing stages.rewards (and so this module) in pipeline/
    # processes; math-verify pulls in sympy, needed only when an answer is scored
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(boxed_match_priority=0)] + ([ExprExtractionConfig()] if with_expr else [])
    return parse(text, extraction_config=configs, parsing_timeout=timeout)


def _mv_verify(gold, pred, timeout: int | None) -> bool:
    from math_verify import verify  # lazy: as in _mv_parse (sympy, off the config-validation path)

    return bool(verify(gold, pred, timeout_seconds=timeout))


def _digits(s: str) -> str:
    return "".join(re.findall(r"\d", s))


def _is_fragment(extracted: str, source: str) -> bool:
    """Whether math-verify kept only part of ``source``: the piece it read drops digits of the whole."""
    a, b = re.sub(r"\s+", "", extracted), re.sub(r"\s+", "", source)
    return a != b and a in b and _digits(a) != _digits(b)


@functools.lru_cache(maxsize=65536)
def _parse_gold_text(text: str) -> tuple:
    norm = normalise(text)
    if not norm:
        raise GoldError(f"gold answer {text!r} is empty")
    parsed = _guarded(_mv_parse, f"\\boxed{{{norm}}}", False, default=[])
    if len(parsed) < 2 or _is_fragment(str(parsed[-1]), norm):
        # math-verify keeps the raw string when sympy cannot read it: accept that only as a text answer
        if parsed and isinstance(parsed[0], str) and not re.search(r"\d", norm):
            return tuple(parsed)
        raise GoldError(
            f"gold answer {text!r} cannot be read as a whole by math-verify (read as {parsed[-1:]!r}); write it in "
            "LaTeX (e.g. \\frac{1}{2}, 3\\sqrt{13}, (1,2), \\text{word}) or set answer_type: text"
        )
    return tuple(parsed)


def parse_gold(gold: Any) -> tuple:
    """math-verify's reading of a gold answer (cached). Raises GoldError for unreadable or non-scalar golds."""
    if isinstance(gold, bool) or gold is None or isinstance(gold, dict | list | tuple | set):
        raise GoldError(
            f"gold answer {gold!r} is a {type(gold).__name__}, not a single answer: map the field to the answer "
            "itself (e.g. fields.answer=reward_model.ground_truth)"
        )
    if isinstance(gold, float) and gold != gold:
        raise GoldError("gold answer is NaN")
    text = repr(gold) if isinstance(gold, float) else str(gold)
    return _parse_gold_text(text[:MAX_ANSWER_CHARS])


def unreadable_golds(items: list[dict[str, Any]], where) -> list[str]:
    """Messages for the items whose ``answer`` :func:`parse_gold` cannot read; ``where(item)`` names an item."""
    errors = []
    for x in items:
        try:
            parse_gold(x["answer"])
        except GoldError as e:
            errors.append(f"{where(x)}: {e}")
    return errors


def gold_parses(gold: Any) -> bool:
    """Whether a gold answer is readable as a whole (:func:`parse_gold` does not raise)."""
    try:
        parse_gold(gold)
    except GoldError:
        return False
    return True


@functools.lru_cache(maxsize=65536)
def _parse_prediction(text: str) -> tuple:
    norm = normalise(text)
    if not norm:
        return ()
    return tuple(_guarded(_mv_parse, f"\\boxed{{{norm}}}", True, default=[]))


def _text_key(s: str) -> str:
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
    return re.sub(r"\s+", " ", s.replace("$", "")).strip(" .").lower()


def answers_match(prediction: str | None, gold: Any) -> bool:
    """Whether a predicted final answer equals the gold one (math-verify equivalence). The gold must parse."""
    if prediction is None:
        return False
    gold_parsed = parse_gold(gold)
    pred = prediction[:MAX_ANSWER_CHARS]
    key = _text_key(pred)
    if key and key == _text_key(str(gold)):
        return True
    pred_parsed = _parse_prediction(pred)
    if not pred_parsed:
        return False
    gold_text = str(gold)
    numbers = _real_values(gold_parsed[0], pred_parsed[0])
    if numbers is not None and "%" not in gold_text:
        x, y = numbers
        if exact_equal(gold_parsed[0], pred_parsed[0]) or (
            not _both_rational(gold_parsed[0], pred_parsed[0]) and abs(x - y) <= 1e-12 * max(abs(x), abs(y))
        ):
            return True  # 6.02 \\times 10^{23} and 602 \\times 10^{21}: math-verify's decimal rounding misses these
        if abs(x - y) > 1e-3 * max(1.0, abs(x), abs(y)):
            return False  # clearly different numbers: skip sympy, which can take seconds on log_2 5 vs 10^{-8}
    if _guarded(_mv_verify, list(gold_parsed), list(pred_parsed), default=False):
        return True
    if "%" in gold_text:  # "12.5" answers "12.5\\%" (math-verify accepts this for whole percentages only)
        try:
            without = parse_gold(gold_text.replace("\\%", "").replace("%", ""))
        except GoldError:
            return False
        return bool(_guarded(_mv_verify, list(without), list(pred_parsed), default=False))
    return False


def _both_rational(a: Any, b: Any) -> bool:
    return bool(getattr(a, "is_Rational", False) and getattr(b, "is_Rational", False))


def exact_equal(a: Any, b: Any) -> bool:
    """Exact equality of two rationals (integers compare exactly, however large)."""
    return _both_rational(a, b) and bool(a == b)


def _real_values(a: Any, b: Any):
    """Both sympy readings as 30-digit floats when both are real numbers, else None (1e400 stays 1e400)."""
    try:
        if not (getattr(a, "is_number", False) and getattr(b, "is_number", False)):
            return None
        if not (a.is_real and b.is_real):
            return None
        x, y = a.evalf(30), b.evalf(30)
        if not (x.is_Float or x.is_Integer) or not (y.is_Float or y.is_Integer):
            return None
        return x, y
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None


def score_math(text: str, gold: Any, *, lenient: bool = False) -> float:
    """1.0 when the completion's final answer equals ``gold``, else 0.0: the RL reward and the evaluation both use
    this. ``lenient`` also accepts the last number of a completion with no marked final answer."""
    final = lenient_final_answer(text) if lenient else extract_final_answer(text)
    return float(answers_match(final, gold))


# ----------------------------------------------------------------------------------------- multiple choice
def choice_letter(text: str, n_options: int) -> str | None:
    """The option letter a completion answers with (``C``, ``(C)``, ``\\text{(C)}``, ``\\boxed{\\text{C}}``, "the
    answer is (C)"), or None. Only letters among the first ``n_options`` count."""
    letters = "ABCDEFGHIJ"[:n_options]
    final = extract_final_answer(text)
    if final is not None:
        m = _LETTER.match(_text_key(final).upper().strip())
        if m and m.group(1) in letters:
            return m.group(1)
        m = re.match(r"^\(?([A-J])\)[\s.:]", _text_key(final).upper() + " ")
        if m and m.group(1) in letters:
            return m.group(1)
        return None
    last_line = (text or "").strip().rsplit("\n", 1)[-1]
    m = _LETTER.match(_text_key(last_line).upper())
    return m.group(1) if m and m.group(1) in letters else None
