"""The math scorer (stages.answers): the golden table, property tests, and the one-scorer guarantee."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest
import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages import answers
from stages.answers import GoldError, choice_letter, extract_final_answer, normalise, parse_gold, score_math
from tests.unit.math_golden import GOLDEN, OUTPUT_FORMS

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ROWS = (
    [(kind, gold, gold, 1.0) for kind, gold, _, _ in GOLDEN]
    + [(kind, gold, eq, 1.0) for kind, gold, eqs, _ in GOLDEN for eq in eqs]
    + [(kind, gold, wrong, 0.0) for kind, gold, _, wrongs in GOLDEN for wrong in wrongs]
)


def test_the_golden_table_covers_every_kind_the_issue_lists():
    kinds = {k for k, *_ in GOLDEN}
    need = {"integer", "decimal", "fraction", "radical", "pi", "complex", "scientific", "thousands", "currency"}
    need |= {"units", "percent", "mixed", "pm", "list", "tuple", "interval", "set", "matrix", "equation"}
    need |= {"polynomial", "text", "letter", "function", "python"}
    assert need <= kinds, need - kinds
    assert len(ROWS) >= 300


@pytest.mark.parametrize("kind,gold,answer,expected", ROWS, ids=[f"{r[0]}:{r[1]}|{r[2]}" for r in ROWS])
def test_golden_table(kind, gold, answer, expected):
    assert score_math(f"Working.\n\\boxed{{{answer}}}", gold) == expected


@pytest.mark.parametrize("form", OUTPUT_FORMS)
@pytest.mark.parametrize("gold", [g for _, g, _, _ in GOLDEN])
def test_the_gold_itself_scores_in_every_output_form(gold, form):
    assert score_math(form % gold, gold) == 1.0


# Golds of different items that are the same answer (hand-checked); every other pair must score wrong.
SAME = {
    frozenset(p)
    for p in [
        ("5", "\\$5"),
        ("5", "x = 5"),
        ("\\$5", "x = 5"),
        ("0.5", "\\frac{1}{2}"),
        ("0.125", "12.5\\%"),
        ("3 \\times 10^{8}", "3*10**8"),
        ("10,\\!080", "10,080"),
        ("\\$36", "36"),
        ("30\\text{ degrees}", "30^\\circ"),
        ("1, 2, 3", "\\{1, 2, 3\\}"),
        ("[-2, 7]", "x \\in [-2,7]"),
        ("\\text{Evelyn}", "Evelyn"),
        ("C", "(C)"),
    ]
}


def test_other_items_golds_score_wrong():
    golds = list(dict.fromkeys(g for _, g, _, _ in GOLDEN))
    wrongly_right = [
        (a, b)
        for a in golds
        for b in golds
        if a != b and frozenset((a, b)) not in SAME and score_math(f"\\boxed{{{b}}}", a) == 1.0
    ]
    assert not wrongly_right


# ----------------------------------------------------------------------------------------- fragments
FRAGMENT_CASES = [
    ("3\\sqrt{13}", 3 * sympy.sqrt(13)),
    ("6 - 5i", None),
    ("4.5e33", sympy.Rational(45, 10) * 10**33),
    ("1e-8", sympy.Rational(1, 10**8)),
    ("\\frac 59", sympy.Rational(5, 9)),
    ("10,\\!080", 10080),
    ("1\\frac{4}{5}", sympy.Rational(9, 5)),
    ("np.arcsin(10/13)", sympy.asin(sympy.Rational(10, 13))),
]


@pytest.mark.parametrize("gold,value", FRAGMENT_CASES)
def test_a_gold_is_read_whole_never_as_a_fragment(gold, value):
    parsed = parse_gold(gold)[0]
    if value is not None:
        assert sympy.simplify(parsed - value) == 0, parsed
    for fragment in ("3", "5", "4.5", "1", "59", "10", "\\frac{4}{5}"):
        if fragment != gold:
            assert score_math(f"#### {fragment}", gold) == 0.0 or sympy.simplify(parse_gold(fragment)[0] - parsed) == 0


@pytest.mark.parametrize(
    "gold", [{"ground_truth": "5"}, ["5"], ("5",), True, None, float("nan"), "", "   ", "\\frac{1}{", "12 + $$ 7 ]"]
)
def test_non_scalar_or_unreadable_golds_are_errors_naming_the_gold(gold):
    with pytest.raises(GoldError) as err:
        parse_gold(gold)
    assert "gold answer" in str(err.value)


@FAST
@given(
    st.integers(1, 99),
    st.integers(2, 99).filter(lambda n: sympy.sqrt(n).is_irrational),
    st.integers(1, 999),
    st.integers(1, 30),
)
def test_composite_golds_parse_to_their_whole_value(a, b, c, e):
    """No parse of a gold is a strict fragment of it: the value read is the value of the whole."""
    cases = {
        f"{a}\\sqrt{{{b}}}": a * sympy.sqrt(b),
        f"\\frac{{{a}}}{{{c}}}": sympy.Rational(a, c),
        f"{a}.{c:03d}e{e}": sympy.Rational(a * 1000 + c, 1000) * 10**e,
        f"{a}.{c:03d}e-{e}": sympy.Rational(a * 1000 + c, 1000) / 10**e,
        f"{a},\\!{c:03d}": a * 1000 + c,
        f"{a},{c:03d}": a * 1000 + c,
        f"{a} \\times 10^{{{e}}}": a * 10**e,
        f"{a}\\frac{{1}}{{{c + 1}}}": a + sympy.Rational(1, c + 1),
    }
    for gold, value in cases.items():
        parsed = parse_gold(gold)[0]
        assert sympy.simplify(sympy.nsimplify(parsed, rational=True) - value) == 0, (gold, parsed)
        assert score_math(f"#### {gold}", gold) == 1.0
        assert score_math(f"#### {a}", gold) == float(value == a)


@FAST
@given(st.integers(-(10**6), 10**6), st.integers(1, 10**6), st.sampled_from(OUTPUT_FORMS))
def test_a_fraction_gold_scores_against_itself_and_not_its_neighbour(p, q, form):
    gold = f"\\frac{{{p}}}{{{q}}}"
    assert score_math(form % gold, gold) == 1.0
    assert score_math(form % f"\\frac{{{p + 1}}}{{{q}}}", gold) == 0.0


# ------------------------------------------------------------------------------------------ final answers
@pytest.mark.parametrize(
    "text,expected",
    [
        ("a\n#### 12\n", "12"),
        ("\\boxed{\\frac{a}{b}} end", "\\frac{a}{b}"),
        ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
        ("So the final answer is: 7.", "7"),
        ("The final answer is \\boxed{8}", "8"),
        ("We get $x = 3$, hence\n$x^2 = 9$", "x^2 = 9"),
        ("costs \\$5 and \\$6", None),
        ("nothing here", None),
        ("the answer is 5", None),
        ("\\fbox{4}", "4"),
        ("#### 3\nwait \\boxed{4}", "4"),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


# ------------------------------------------------------------------------------- audited shapes, both directions
# Rows are (completion, gold, expected score): completions in the shapes models write, from an audit of this scorer.
# A 0.0 next to a 1.0 on the same completion is the point: the scorer must read the answer, not any number in it.
def boxed(answer: str) -> str:
    return f"Let me work through this.\n\nSo we get\n\\[\\boxed{{{answer}}}\\]"


# After "The final answer is" only the first answer counts: math-verify would read the *last* expression of the prose.
FIRST_ANSWER = [
    ("The final answer is 5 (the other root, 7, is extraneous).", "7", 0.0),
    ("The final answer is 5 (the other root, 7, is extraneous).", "5", 1.0),
    ("The final answer is $x = 5$ (we reject $x = -2$).", "-2", 0.0),
    ("The final answer is $x = 5$ (we reject $x = -2$).", "5", 1.0),
    ("The final answer is $5$. Note that $7$ was a distractor.", "7", 0.0),
    ("The final answer is $5$. Note that $7$ was a distractor.", "5", 1.0),
    ("So the final answer is $12$, because $3 \\times 4 = 12$.", "12", 1.0),
    ("The final answer is 18, since she sells 16 - 3 - 4 = 9 eggs at $2 each.", "18", 1.0),
    ("The final answer is 18, since she sells 16 - 3 - 4 = 9 eggs at $2 each.", "9", 0.0),
    ("The final answer is 5, not 7.", "5", 1.0),
    ("The final answer is 5, not 7.", "7", 0.0),
    ("The final answer is $5$, not $7$.", "5", 1.0),
    ("The final answer is 5. We had 12 apples and 7 were eaten.", "5", 1.0),
    ("The final answer is 5. We had 12 apples and 7 were eaten.", "7", 0.0),
    ("The final answer is 5, since 3 + 2 = 5 apples out of the 10 we had.", "5", 1.0),
    ("The final answer is 5, since we used 10 of the 12 apples.", "12", 0.0),
    ("The final answer is 20 minutes, i.e. 1/3 of an hour.", "20", 1.0),
    ("The final answer is 20 minutes, i.e. 1/3 of an hour.", "\\frac{1}{3}", 0.0),
    ("Final answer: 42 (since 6 * 7 = 42)", "42", 1.0),
    ("The final answer is\n\\[\n5\n\\]", "5", 1.0),
    ("The final answer is:\n$$\\frac{1}{2}$$", "\\frac12", 1.0),
    ("The final answer is:\n\n5", "5", 1.0),
    ("The final answer is $3$ or $5$.", "5", 0.0),
    ("The final answer is $3$ or $5$.", "3", 0.0),
    ("The final answer is 3 or 5.", "5", 0.0),
    ("The final answer is: $x = -2$ and $x = 3$.", "-2, 3", 1.0),
    ("The final answer is 1, 2, and 3.", "1, 2, 3", 1.0),
    ("The final answer is $\\frac{1}{2}$ (or $0.5$).", "\\frac{1}{2}", 1.0),
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "0.5", 1.0),
    ("The final answer is 5. I hope it is correct.", "5", 1.0),
    ("The final answer is\n\nLet me double check: 2+3 = 5.", "5", 0.0),
    ("Final answer: 7 apples minus 2 apples equals 5", "5", 0.0),
    ("\\boxed{5}\nSo the final answer is", "5", 1.0),
]

# A decimal is the fraction it spells: math-verify alone rounds both sides to 6 places when one is a decimal.
DECIMALS = [
    ("0.333333", "\\frac{1}{3}", 0.0),
    ("0.3333333", "\\frac{1}{3}", 0.0),
    ("0.666667", "\\frac{2}{3}", 0.0),
    ("0.166667", "\\frac{1}{6}", 0.0),
    ("33.333333", "\\frac{100}{3}", 0.0),
    ("0.142857142857142857", "\\frac{1}{7}", 0.0),
    ("1.414214", "\\sqrt{2}", 0.0),
    ("1.4142135623730950488", "\\sqrt{2}", 0.0),
    ("2.828427", "2\\sqrt{2}", 0.0),
    ("3.141593", "\\pi", 0.0),
    ("3.14159265", "\\pi", 0.0),
    ("12.566371", "4\\pi", 0.0),
    ("1.047198", "\\frac{\\pi}{3}", 0.0),
    ("2.718282", "e", 0.0),
    ("1.41421356237310\\pi", "\\sqrt{2}\\pi", 0.0),
    ("x = 0.333333", "x = \\frac13", 0.0),
    ("0.333333, 0.5", "\\frac13, \\frac12", 0.0),
    ("1/3", "0.33", 0.0),
    ("\\sqrt{2}", "1.414", 0.0),
    ("0.5", "\\frac12", 1.0),
    ("0.25", "1/4", 1.0),
    ("0.1", "\\frac{1}{10}", 1.0),
    ("2.50", "2.5", 1.0),
    ("3.14", "3.14", 1.0),
    ("0.75\\pi", "\\frac{3\\pi}{4}", 1.0),
    ("0.5\\sqrt{2}", "\\frac{\\sqrt2}{2}", 1.0),
    ("2^{0.5}", "\\sqrt{2}", 1.0),
    ("(0.5, 1]", "(\\frac12, 1]", 1.0),
    ("6.02 \\times 10^{23}", "602 \\times 10^{21}", 1.0),
    ("0.125", "12.5\\%", 1.0),
    ("12.5", "12.5\\%", 1.0),
]

# With no marked answer, a formula counts only when the completion ends with it: not one from a cut-off sentence.
TRAILING_FORMULA = [
    ("Now, substituting $x = 5$ into the second equation, we", "5", 0.0),
    ("Let $a = 12$ and $b = 7$. Then the number of apples", "12", 0.0),
    ("After 3 hours the tank holds $240$ liters, and since the rate is", "240", 0.0),
    ("The area is\n\\[\n12\n\\]\nwhich is what we needed, since", "12", 0.0),
    ("We get $x = 3$, hence\n$x^2 = 9$", "9", 1.0),
    ("Thus the sum is $12$.", "12", 1.0),
    ("So the area is\n\\[\n12\n\\]", "12", 1.0),
]

# "#### X" is the GSM8K answer only when X looks like one; markdown headings are not answers.
HASHES = [
    ("So $x=5$.\n\\boxed{5}\n\n#### 3. Double-check\nPlugging in works.", "5", 1.0),
    ("So $x=5$.\n\\boxed{5}\n\n#### 3. Double-check\nPlugging in works.", "3", 0.0),
    ("#### 1. Setup\nLet $n$ be the count.\n#### 2. Solve\nThus \\boxed{12}.\n#### 3. Check\nFine.", "12", 1.0),
    ("\\boxed{5}\n\n#### Verification\nWe check 2+3=5.", "5", 1.0),
    ("#### Step 1\nThe final answer is 5.\n#### Verification\nIt checks out.", "5", 1.0),
    ("#### Step 1: Setup\nWe have 3 apples.\n#### Step 2: Solve\nSo 5.", "5", 0.0),
    ("Janet makes 9 * 2 = $18.\n#### 18", "18", 1.0),
    ("Janet makes $18.\n#### $18", "18", 1.0),
    ("He pays 1,234 dollars.\n#### 1,235", "1234", 0.0),
    ("He pays\n#### 1234.00", "1234", 1.0),
    ("The answer is a name.\n#### Evelyn", "Evelyn", 1.0),
]

MARKERS = [
    ("Thus $x=4$.\n\n**Final Answer:** 4", "4", 1.0),
    ("Thus $x=4$.\n\n**Final Answer**: 4", "4", 1.0),
    ("Thus $x=4$.\n\n**Final Answer:** 5", "4", 0.0),
    ("Thus $x=4$.\n\n**Answer:** 4", "4", 1.0),
    ("Thus $x=4$.\n\nAnswer: 4", "4", 1.0),
    ("Thus $x=4$.\n\n**Final Answer**\n4", "4", 1.0),
    ("Thus $x=4$.\n\n**Final Answer**\n$\\boxed{4}$", "4", 1.0),
    ("The answer is \\boxed 5.", "5", 1.0),
    ("The answer is $\\boxed 5$.", "5", 1.0),
    ("The answer is $\\boxed 5$.", "6", 0.0),
    ("The final answer is $5$ dollars.", "5", 1.0),
    ("The final answer is 5 apples.", "5", 1.0),
    ("The final answer is \\$18.90.", "18.90", 1.0),
    ("It is \\boxed{5}. Now check: \\boxed{}", "5", 1.0),
    ("\\boxed{}", "5", 0.0),
    ("So the answer is 5.", "5", 0.0),  # no marker: strict by design ("lenient" reads it)
    ("\\boxed{18}\n\nQuestion: How many eggs are left?\nAnswer: Let's think step by step.", "18", 1.0),
]

# Unicode math, in a box and after "The final answer is", as a prediction and as a gold.
UNICODE = [
    ("−5", "-5", 1.0),
    ("−5", "5", 0.0),
    ("½", "\\frac{1}{2}", 1.0),
    ("½", "1", 0.0),
    ("3½", "\\frac{7}{2}", 1.0),
    ("π", "\\pi", 1.0),
    ("2π", "2\\pi", 1.0),
    ("2π", "2", 0.0),
    ("√2", "\\sqrt{2}", 1.0),
    ("√2", "2", 0.0),
    ("3√2", "3\\sqrt{2}", 1.0),
    ("3√2", "3", 0.0),
    ("５", "5", 1.0),
    ("１２", "12", 1.0),
    ("１２", "1", 0.0),
    ("30°", "30^\\circ", 1.0),
    ("30°", "3", 0.0),
    ("(−∞, 3]", "(-\\infty, 3]", 1.0),
    ("x² + 1", "x^2+1", 1.0),
    ("x² + 1", "x+1", 0.0),
    ("−\\frac{1}{2}", "\\frac12", 0.0),
    ("\\frac{1}{2}", "½", 1.0),
    ("3\\sqrt{2}", "3√2", 1.0),
    ("-5", "−5", 1.0),
]

# Words after a number are dropped only when they are a unit: "5 or more" and "5 thousand" are not 5.
NUMBER_WORDS = [
    ("5 or more", "5", 0.0),
    ("5 or six", "5", 0.0),
    ("5 squared", "5", 0.0),
    ("5 thousand", "5", 0.0),
    ("5 million", "5", 0.0),
    ("5 million", "5000000", 1.0),
    ("2.5 million", "2500000", 1.0),
    ("3 dozen", "3", 0.0),
    ("3 dozen", "36", 1.0),
    ("5 cm", "5", 1.0),
    ("12 apples", "12", 1.0),
    ("18 dollars", "18", 1.0),
    ("18 square units", "18", 1.0),
    ("40 percent", "40\\%", 1.0),
]

AUDITED = {
    "first-answer": FIRST_ANSWER,
    "trailing-formula": TRAILING_FORMULA,
    "hashes": HASHES,
    "markers": MARKERS,
    "decimals": [(boxed(a), g, e) for a, g, e in DECIMALS],
    "number-words": [(boxed(a), g, e) for a, g, e in NUMBER_WORDS],
    "unicode": [(boxed(a), g, e) for a, g, e in UNICODE] + [(f"The final answer is {a}.", g, e) for a, g, e in UNICODE],
}
AUDITED_ROWS = [(kind, *row) for kind, rows in AUDITED.items() for row in rows]


@pytest.mark.parametrize(
    "kind,completion,gold,expected", AUDITED_ROWS, ids=[f"{r[0]}:{r[1][-40:]!r}|{r[2]}" for r in AUDITED_ROWS]
)
def test_audited_shapes(kind, completion, gold, expected):
    assert score_math(completion, gold) == expected


@FAST
@given(st.integers(1, 999), st.integers(2, 999))
def test_a_decimal_scores_only_when_it_is_exactly_the_fraction(p, q):
    """p/q to 6 places equals \\frac{p}{q} only when the decimal is exact (q = 2^a 5^b, small enough)."""
    decimal = f"{p / q:.6f}"
    assert score_math(f"\\boxed{{{decimal}}}", f"\\frac{{{p}}}{{{q}}}") == float(Fraction(decimal) == Fraction(p, q))


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The final answer is 5 (the other root, 7, is extraneous).", "5"),
        ("The final answer is $x = 5$ (we reject $x = -2$).", "x = 5"),
        ("The final answer is 20 minutes, i.e. 1/3 of an hour.", "20 minutes"),
        ("The final answer is\n\\[\n5\n\\]", "5"),
        ("The final answer is $5$ dollars.", "5"),
        ("The final answer is **12**.", "12"),
        ("The final answer is $3$ or $5$.", "3 \\text{ or } 5"),
        ("Thus $x=4$.\n\n**Final Answer:** 4", "4"),
        ("Thus $x=4$.\n\n**Final Answer**\n4", "4"),
        ("So $x=5$.\n\\boxed{5}\n\n#### 3. Double-check\nPlugging in works.", "5"),
        ("#### Step 1: Setup\nWe have 3 apples.\n#### Step 2: Solve\nSo 5.", None),
        ("The answer is \\boxed 3.5.", "3.5"),
        ("It is \\boxed{5}. Now check: \\boxed{}", "5"),
        ("Now, substituting $x = 5$ into the second equation, we", None),
    ],
)
def test_extract_the_first_answer_and_never_a_heading(text, expected):
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("½", "\\frac{1}{2}"),
        ("3½", "3\\frac{1}{2}"),
        ("3√2", "3\\sqrt{2}"),
        ("√(x+1)", "\\sqrt{x+1}"),
        ("１２", "12"),
        ("30°", "30^\\circ"),
        ("x²", "x^{2}"),
        ("2.5 million", "2500000"),
        ("3 dozen", "36"),
        ("40 percent", "40\\%"),
        ("18.90 dollars", "18.90"),
        ("5 or more", "\\text{5 or more}"),
    ],
)
def test_normalise_rewrites_unicode_and_number_words_idempotently(answer, expected):
    assert normalise(answer) == expected
    assert normalise(expected) == expected


def test_lenient_reads_the_last_number_only_when_nothing_is_marked():
    assert score_math("69 - 41 = 28\n28 + 7 = 35", "35") == 0.0
    assert score_math("69 - 41 = 28\n28 + 7 = 35", "35", lenient=True) == 1.0
    assert score_math("35 is close\n#### 34", "35", lenient=True) == 0.0


@pytest.mark.parametrize(
    "text,n,expected",
    [
        ("\\boxed{C}", 4, "C"),
        ("\\boxed{\\text{C}}", 4, "C"),
        ("The final answer is (C).", 4, "C"),
        ("#### \\text{(B)}", 4, "B"),
        ("#### (D) 42", 4, "D"),
        ("I think\nA", 4, "A"),
        ("\\boxed{E}", 4, None),
        ("\\boxed{42}", 4, None),
        ("no letter", 4, None),
    ],
)
def test_choice_letter(text, n, expected):
    assert choice_letter(text, n) == expected


# -------------------------------------------------------------------------------------- one scorer, threads
def test_the_rl_reward_and_the_evaluation_call_the_same_scorer(monkeypatch):
    from stages.config import BenchmarkSpec
    from stages.evaluate import score_text
    from stages.rewards import math_correct

    calls = []
    real = answers.score_math

    def spy(text, gold, **kw):
        calls.append((text, gold))
        return real(text, gold, **kw)

    import stages.evaluate
    import stages.rewards

    # one function, imported by both: the reward and the evaluation cannot drift apart
    assert stages.evaluate.score_math is answers.score_math is stages.rewards.score_math
    for module in (answers, stages.rewards, stages.evaluate):
        monkeypatch.setattr(module, "score_math", spy)
    spec = BenchmarkSpec(name="m", source="file", path="x.jsonl")
    assert math_correct(["#### 3\\sqrt{13}"], answer=["3\\sqrt{13}"]) == [1.0]
    assert score_text(spec, {"answer": "3\\sqrt{13}"}, "#### 3\\sqrt{13}") == 1.0
    assert calls == [("#### 3\\sqrt{13}", "3\\sqrt{13}")] * 2


def test_scoring_works_off_the_main_thread_with_the_same_results():
    pairs = [(f"\\boxed{{{eq}}}", gold) for _, gold, eqs, _ in GOLDEN[:40] for eq in eqs[:1]]
    main = [score_math(t, g) for t, g in pairs]
    with ThreadPoolExecutor(max_workers=1) as ex:
        off = ex.submit(
            lambda: (threading.current_thread() is threading.main_thread(), [score_math(t, g) for t, g in pairs])
        )
        on_main, scores = off.result()
    assert not on_main
    assert scores == main == [1.0] * len(pairs)


def test_unit_and_symbol_rewrites_leave_euler_and_sets_alone():
    from stages.answers import normalise

    assert "e" in normalise("2\\mathrm{e}^2")  # Euler's number squared is no unit
    assert normalise("36\\mbox{ inches}^2") == "36"
    assert normalise("\\{E_1, E_2\\}").count("\\mathrm{E}") == 2  # the first E after \{ too
    assert normalise(normalise("E_{1},E_{2}")) == normalise("E_{1},E_{2}")  # idempotent
