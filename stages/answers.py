"""Final answers of math completions and their equivalence to gold answers: the one scorer behind both the RL reward
(``math_correct``) and the evaluation.

A completion's final answer is the last of: a ``#### X`` line, a ``\\boxed{X}`` (an empty ``\\boxed{}`` does not
count; ``\\boxed 5`` boxes one token), a "final answer is X" / "Final Answer: X" / "**Answer:** X" / line-initial
"Answer: X" phrase (or a "**Final Answer**" heading with X below it). A ``#### X`` line counts only when X looks like
an answer: markdown headings ("#### 3. Double-check", "#### Step 1: Setup", a one-word "#### Verification" with text
below) are not answers. After a phrase only the *first* answer counts, never the prose after it (math-verify would
read the prose's last expression): a ``\\boxed{}`` on that line, else the formula the text begins with (``$5$
dollars``, a ``\\[...\\]`` on the next lines; formulas joined by "and" or commas form a list, by "or" stay "3 or
5", which is neither), else the plain text up to the first sentence end or clause break (". More", ", since",
", not", " (the other root", "; ", ": "); plain text that is a sentence ("7 apples minus 2 equals 5") is no answer.
Failing all those, a completion that *ends* with a ``$...$`` (or ``\\(...\\)``, ``\\[...\\]``) formula, only
punctuation after it, answers with that formula; one followed by prose (a completion cut off mid-sentence) does not.
``lenient`` scoring (reported beside the strict one) also takes the last number of a completion with no marked
answer.

Gold and prediction are both read by math-verify the way it intends: wrapped as ``\\boxed{...}`` so that its LaTeX
extraction sees the *whole* answer (a bare ``3\\sqrt{13}`` would otherwise be read by the expression fallback as
``3``). Before that, a few spellings math-verify does not know are rewritten: Unicode math (``½``, ``3√2``, full-width
``５``, ``30°``, ``−``, ``∞``, ``π``, ``x²``, ``≤``) as LaTeX, ``4.5e33`` as ``4.5 \\times 10^{33}``, Python
expressions (``np.arcsin(10/13)``, ``2**10``, ``sqrt(2)``) as LaTeX, plain words as ``\\text{...}`` and ``6 - 5 i``
as ``6 - 5i``. A number followed by unit words loses them ("18 dollars" is 18), but not words that change the number:
"2.5 million" is 2500000, "3 dozen" 36, "40 percent" 40%, and "5 or more", "5 squared" are text, never 5. A gold that
does not parse as a whole raises :class:`GoldError` naming it: it is never replaced by a fragment of itself.

Comparison is exact, as in MATH and PRM800K grading: a decimal is the fraction it spells, so ``0.5`` equals
``\\frac12`` and ``2.50`` equals ``2.5``, but ``0.333333`` is not ``\\frac13`` nor ``3.141593`` ``\\pi`` (math-verify
alone rounds both sides to 6 places when one is a decimal), and a gold ``0.33`` is not ``1/3``.

math-verify guards parsing and comparison with ``signal.alarm``, which works on the main thread only; elsewhere (a
Prefect or TRL worker thread) each call runs in a helper thread with the same limit, and a timed-out comparison is
scored 0 with a warning.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from decimal import Decimal, InvalidOperation
from typing import Any

log = logging.getLogger(__name__)

TIMEOUT_S = 5
MAX_ANSWER_CHARS = 2000  # longer "answers" are not answers; parsing them can take sympy minutes

_HASHES = re.compile(r"(?<!#)####(?!#)[ \t]*([^\n]*)")
# a markdown heading, not a GSM8K answer: "#### 3. Double-check", "#### Step 1: Setup", "#### Why this works"
_HEADING = re.compile(r"\d+[.)][ \t]+[A-Za-z]|[A-Za-z][A-Za-z'-]+[:.]?[ \t]+[A-Za-z0-9]")
_NON_SPACE = re.compile(r"\S")
_ONE_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]:?")
_FINAL_PHRASE = re.compile(
    r"(?:final answer|^[ \t>#*_]*answer)[ \t*_]*(?:is\b|:)[ \t*_:]*"  # "The final answer is", "**Answer:**"
    r"|^[ \t>#*_]*final answer[ \t*_:]*$",  # a "**Final Answer**" heading: the answer is below it
    re.IGNORECASE | re.MULTILINE,
)
_BARE_BOXED = re.compile(r"\\(?:boxed|fbox)(?:[ \t]+|(?=\d))([-+]?[\w.]*\w)")  # "\boxed 5": TeX boxes one token
_SPAN = re.compile(
    r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)"
    r"|(?<!\\)\$((?:\\.|[^$\n\\])+?)(?<!\\)\$(?!\d)",  # "$2 each and $3": dollars, not a formula
    re.DOTALL,
)
_SPAN_JOIN = re.compile(r"[ \t]*(?:,[ \t]*(?:(?:and|or)\b[ \t]*)?|(?:and|or)\b[ \t]*)", re.IGNORECASE)
# where the first answer after "The final answer is" ends: "5. We had 12", "5, since 3 + 2 = 5", "5 (the other
# root, 7, ...)", "20 minutes, i.e. 1/3 of an hour"
_CLAUSE_BREAK = re.compile(
    r"[.!?:](?=\s+\S)|;"
    r"|,\s*(?=(?!(?:and|or)\b)[A-Za-z]{2,}\b|i\.e\.|e\.g\.)"
    r"|\s+(?=(?:because|since|which|where|as|so|but|given|when)\b|i\.e\.|e\.g\.)"
    r"|\s+\((?=[A-Za-z]{2,}\b)",
    re.IGNORECASE,
)
_TRAILING = re.compile(r"(?:\s*I hope it is correct\.?|\s*[.;,]\s*)+$", re.IGNORECASE)
_MATH_DELIMS = [("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)")]
_SCI = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)[eE]([+-]?\d+)(?![\w.])")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+)?|-?\.\d+")
_PY_FUNCS = ("arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sin", "cos", "tan", "log", "ln", "exp")
_MATH_WORDS = {"sqrt", "pi", "infty", "inf", "oo", "sec", "csc", "cot", *_PY_FUNCS}
_MULTIPLIERS = {"dozen": 12, "hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
# words after a number that change what it means: "5 or more", "5 squared" are not 5 of a unit
_NOT_UNITS = {"or", "and", "more", "less", "fewer", "than", "times", "plus", "minus", "over", "squared", "cubed"}
_NOT_UNITS |= {"to", "by", "of", "at", "least", "most", "not", "only", "about", "approximately", "half", "percent"}
_LETTER = re.compile(r"^\(?([A-J])\)?[.:]?$")
_UNICODE_MATH = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",
    "\u221e": "\\infty ",
    "\u03c0": "\\pi ",
    "\u00b0": "^\\circ",
    "\u00d7": "\\times ",
    "\u22c5": "\\cdot ",
    "\u00b7": "\\cdot ",
    "\u00f7": "\\div ",
    "\u2264": "\\le ",
    "\u2265": "\\ge ",
    "\u2260": "\\ne ",
    "\u00b1": "\\pm ",
    "\u222a": "\\cup ",
    "\u2229": "\\cap ",
    "\u2208": "\\in ",
}
_SUPERSCRIPTS = str.maketrans("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207b", "0123456789-")


class GoldError(ValueError):
    """A gold answer that cannot be read as a whole; the message names it."""


# ------------------------------------------------------------------------------------------ final answers
def last_boxed(text: str) -> tuple[int, str] | None:
    """Position and content of the last non-empty ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces), or None.
    An empty ``\\boxed{}`` (a template left unfilled) does not hide an earlier answer."""
    starts = [m.start() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        i = text.index("{", start) + 1
        depth, j = 1, i
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth == 0 and text[i : j - 1].strip():
            return start, text[i : j - 1]
    return None


def _unwrap_math(s: str) -> str:
    """``$x$``, ``\\(x\\)``, ``\\[x\\]`` -> ``x`` (outermost delimiters only), trailing punctuation dropped."""
    s = _TRAILING.sub("", s.strip())
    for left, right in _MATH_DELIMS:
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            return _TRAILING.sub("", s[len(left) : -len(right)].strip())
    return s


def _span_content(m: re.Match) -> str:
    return next(g for g in m.groups() if g is not None).strip()


def _leading_formulas(text: str) -> str | None:
    """The formula ``text`` begins with (``$5$ dollars`` -> ``5``), with any formulas joined to it by "and", "or"
    or a comma (``$x = -2$ and $x = 3$`` -> ``x = -2, x = 3``; "or" stays ``\\text{ or }``, which is not either
    one); None when ``text`` does not begin with one."""
    parts: list[str] = []
    pos = 0
    while (m := _SPAN.match(text, pos)) is not None:
        parts.append(_span_content(m))
        join = _SPAN_JOIN.match(text, m.end())
        if join is None or not join.group(0).strip() or _SPAN.match(text, join.end()) is None:
            break
        parts.append(" \\text{ or } " if "or" in join.group(0).lower() else ", ")
        pos = join.end()
    return "".join(parts) or None


def _first_answer(text: str) -> str:
    """The answer a "final answer is" phrase introduces, ``text`` being what follows the phrase: a ``\\boxed{}`` on
    its line, else the formula it begins with (which may span lines: ``\\[\\n5\\n\\]``), else its plain text up to
    the first sentence end or clause break. Prose after the answer is never read: math-verify would otherwise take
    the *last* expression of "5 (the other root, 7, is extraneous)"."""
    text = text.lstrip()
    line = text.split("\n", 1)[0]
    boxed = last_boxed(line)
    if boxed is not None:
        return boxed[1]
    formula = _leading_formulas(text)
    if formula is not None:
        return formula
    cut = _CLAUSE_BREAK.search(line)
    answer = _TRAILING.sub("", line[: cut.start()] if cut else line).strip("*_ \t")
    if _is_prose(answer):
        return ""
    # "1, 2, and 3" is the list 1, 2, 3; "3 or 5" is neither 3 nor 5 (as for formulas above)
    answer = re.sub(r",?\s+and\s+(?=[-+$\\\d(])", ", ", answer)
    return re.sub(r"\s+or\s+(?=[-+$\\\d(])", lambda _: " \\text{ or } ", answer)


def _is_prose(answer: str) -> bool:
    """Whether a plain-text answer is a sentence rather than an answer: a word followed by more numbers ("7 apples
    minus 2 equals 5", "Let me check 2+3 = 5"), which math-verify would read as its last expression, or four words
    and more ("Answer: Let's think step by step."). A number with unit words after it ("18 square units"), a short
    text ("no real solutions") and function names (``np.arcsin(10/13)``) are answers."""
    bare = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}|\\[A-Za-z]+", " ", answer)
    words = [m for m in re.finditer(r"\b[A-Za-z]{2,}\b(?![.(])", bare) if m.group(0).lower() not in _MATH_WORDS]
    if len(words) >= 4:
        return True
    return any(m.group(0).lower() not in {"and", "or"} and re.search(r"\d", bare[m.end() :]) for m in words)


def _is_heading(answer: str, text_below: bool) -> bool:
    """Whether a ``#### X`` line is a markdown heading rather than a GSM8K answer: X is a numbered or worded title
    ("3. Double-check", "Step 1: Setup"), or a single word with a section below it ("#### Verification\\n...")."""
    x = answer.strip().strip("*_").strip()
    return bool(_HEADING.match(x)) or (bool(_ONE_WORD.fullmatch(x)) and text_below)


def _trailing_formula(text: str) -> str | None:
    """The formula a completion ends with (only punctuation after it), on its last line or as a display block; None
    when prose follows the last formula ("substituting $x = 5$ into the second equation, we")."""
    tail = text.rstrip()[-MAX_ANSWER_CHARS:]
    spans = list(_SPAN.finditer(tail))
    if not spans or tail[spans[-1].end() :].strip(" \t\n.,;:!"):
        return None
    last = spans[-1]
    display = last.group(1) is not None or last.group(2) is not None
    if not display and "\n" in tail[last.start() :]:
        return None
    return _span_content(last)


def extract_final_answer(text: str) -> str | None:
    """The completion's marked final answer (see the module docstring); None when it has none."""
    if not text:
        return None
    candidates: list[tuple[int, str]] = []
    hashes = [
        m for m in _HASHES.finditer(text) if not _is_heading(m.group(1), _NON_SPACE.search(text, m.end()) is not None)
    ]
    if hashes:
        candidates.append((hashes[-1].start(), hashes[-1].group(1)))
    boxed = last_boxed(text)
    if boxed is not None:
        candidates.append(boxed)
    bare = list(_BARE_BOXED.finditer(text))
    if bare:
        candidates.append((bare[-1].start(), bare[-1].group(1)))
    phrases = list(_FINAL_PHRASE.finditer(text))
    if phrases:
        m = phrases[-1]
        if first := _first_answer(text[m.end() :]):  # "The final answer is" cut short: the other markers stand
            candidates.append((m.start(), first))
    if not candidates:
        formula = _trailing_formula(text)
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


def _unicode_to_latex(s: str) -> str:
    """``½`` -> ``\\frac{1}{2}``, ``3√2`` -> ``3\\sqrt{2}``, ``５`` -> ``5``, ``30°`` -> ``30^\\circ``, ``−`` -> ``-``,
    ``∞`` -> ``\\infty``, ``x²`` -> ``x^{2}``: math-verify reads none of these."""
    s = re.sub(
        "[\u2070\u00b9\u00b2\u00b3\u2074-\u2079\u207b]+", lambda m: "^{" + m.group(0).translate(_SUPERSCRIPTS) + "}", s
    )
    out = []
    for ch in s:  # vulgar fractions, before NFKC turns "3½" into "31⁄2"
        nfkc = unicodedata.normalize("NFKC", ch)
        if "\u2044" in nfkc and ch != "\u2044":
            num, den = nfkc.split("\u2044")
            out.append(f"\\frac{{{num or 1}}}{{{den}}}")
        else:
            out.append(ch)
    s = unicodedata.normalize("NFKC", "".join(out)).replace("\u2044", "/")
    s = "".join(_UNICODE_MATH.get(ch, ch) for ch in s)
    root = r"\s*(\d+(?:\.\d+)?|[A-Za-z]|\\[A-Za-z]+|\([^()]*\)|\{[^{}]*\})"
    s = re.sub("\u221b" + root, lambda m: "\\sqrt[3]{" + _strip_group(m.group(1)) + "}", s)
    return re.sub("\u221a" + root, lambda m: "\\sqrt{" + _strip_group(m.group(1)) + "}", s).strip()


def _strip_group(s: str) -> str:
    return s[1:-1] if s[:1] in "({" and s[-1:] in ")}" else s


def _number_and_words(number: str, words: str) -> str:
    """``18.90 dollars`` -> ``18.90`` (a unit in words), ``2.5 million`` -> ``2500000``, ``40 percent`` ->
    ``40\\%``; words that change the number ("5 or more", "5 squared") make the whole a text answer, never 5."""
    lower = [w.lower() for w in words.split()]
    if any(w in _MATH_WORDS for w in lower):
        return f"{number} {words}"  # "2 pi", "3 sqrt 2": math-verify reads these itself
    if lower in (["percent"], ["per", "cent"]):
        return f"{number}\\%"
    if lower[0] in _MULTIPLIERS and not any(w in _NOT_UNITS or w in _MULTIPLIERS for w in lower[1:]):
        try:
            value = Decimal(number.replace(",", "")) * _MULTIPLIERS[lower[0]]
        except InvalidOperation:
            return f"\\text{{{number} {words}}}"
        return format(value.normalize(), "f")
    if any(w in _NOT_UNITS or w in _MULTIPLIERS for w in lower):
        return f"\\text{{{number} {words}}}"
    return number


def normalise(answer: str) -> str:
    """Rewrite spellings math-verify does not read (see the module docstring). Idempotent."""
    s = answer.strip()
    if not s.isascii():
        s = _unicode_to_latex(s)
    boxed = last_boxed(s)
    if boxed is not None and boxed[0] == 0 and s.endswith("}"):
        s = boxed[1].strip()
    s = _unwrap_math(s)
    s = re.sub(r"\\(?:left|right)(?=[()\[\]|.])", "", s)
    s = re.sub(r"(?<=\d)\\[,!;:](?=\d{3}\b)", ",", s)  # 10,\!080 and 10\,080: thousands separators
    # a unit written after the number, squared or cubed: 36\mbox{ inches}^2, \frac12\text{ cm}^3 (math-verify reads
    # the number and drops the rest, which would make the gold a fragment of itself)
    s = re.sub(
        r"(?<=[\d}])\s*\\(?:mbox|text|textrm|mathrm)\{\s*(?![eEi]\s*\})[A-Za-z][A-Za-z ]*\}\^\{?[23]\}?\s*$", "", s
    )  # (not \mathrm{e}^2: Euler's number squared)
    s = re.sub(r"(?<=\d)\.(?=\s*/)", "", s)  # -1./3: a number written with a bare point, then divided
    # E_1 and e_{2} are read as Euler's number with a subscript, and fail; upright E reads as a plain symbol
    s = re.sub(r"(?<![A-Za-z\\])(?<!\\mathrm\{)([Ee])(?=_)", r"\\mathrm{\1}", s)
    unit = re.fullmatch(r"([-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+))\s+([A-Za-z]{2,}(?:\s+[A-Za-z]+)*)", s)
    if unit:
        s = _number_and_words(unit.group(1), unit.group(2))
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


def _exact_decimals(parsed: tuple) -> tuple[tuple, bool]:
    """math-verify's readings with every decimal replaced by the fraction it spells (``0.333333`` ->
    ``333333/1000000``), and whether there was one. math-verify compares a decimal to anything by rounding both to
    6 places (``float_rounding=6``), so ``0.333333`` would equal ``\\frac13`` and ``3.141593`` equal ``\\pi``;
    competition answers are exact (MATH, PRM800K), and an exact decimal equals only the same number."""
    import sympy  # lazy: as in _mv_parse

    out, found = [], False
    for p in parsed:
        floats = p.atoms(sympy.Float) if isinstance(p, sympy.Basic | sympy.MatrixBase) else set()
        exact = {}
        for f in floats:
            try:
                exact[f] = sympy.Rational(str(f))  # str keeps the digits written: Float("0.1") -> "0.100000000000000"
            except (TypeError, ValueError):
                continue  # inf, nan
        if exact:
            found = True
            try:
                p = p.xreplace(exact)
            except (TypeError, ValueError, AttributeError):
                pass
        out.append(p)
    return tuple(out), found


def answers_match(prediction: str | None, gold: Any) -> bool:
    """Whether a predicted final answer equals the gold one (math-verify equivalence, decimals exact). The gold
    must parse."""
    if prediction is None:
        return False
    gold_parsed, gold_decimal = _exact_decimals(parse_gold(gold))
    pred = prediction[:MAX_ANSWER_CHARS]
    key = _text_key(pred)
    if key and key == _text_key(str(gold)):
        return True
    pred_parsed, pred_decimal = _exact_decimals(_parse_prediction(pred))
    if not pred_parsed:
        return False
    gold_text = str(gold)
    numbers = _real_values(gold_parsed[0], pred_parsed[0])
    if numbers is not None and "%" not in gold_text:
        if _both_rational(gold_parsed[0], pred_parsed[0]):
            # exact, however large; 6.02 \\times 10^{23} and 602 \\times 10^{21} are one integer once decimals are
            # fractions, and 0.33 is not \\frac13
            return bool(gold_parsed[0] == pred_parsed[0])
        x, y = numbers
        if not (gold_decimal or pred_decimal) and abs(x - y) <= 1e-12 * max(abs(x), abs(y)):
            return True  # \\frac{1}{\\sqrt2} and \\frac{\\sqrt2}{2}, without sympy; a decimal goes to sympy exactly
        if abs(x - y) > 1e-3 * max(1.0, abs(x), abs(y)):
            return False  # clearly different numbers: skip sympy, which can take seconds on log_2 5 vs 10^{-8}
    if _guarded(_mv_verify, list(gold_parsed), list(pred_parsed), default=False):
        return True
    if "%" in gold_text:  # "12.5" answers "12.5\\%" (math-verify accepts this for whole percentages only)
        try:
            without, _ = _exact_decimals(parse_gold(gold_text.replace("\\%", "").replace("%", "")))
        except GoldError:
            return False
        return bool(_guarded(_mv_verify, list(without), list(pred_parsed), default=False))
    return False


def _both_rational(a: Any, b: Any) -> bool:
    return bool(getattr(a, "is_Rational", False) and getattr(b, "is_Rational", False))


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
