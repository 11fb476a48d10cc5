"""The math scorer (stages.answers): the golden table, property tests, and the one-scorer guarantee."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages import answers
from stages.answers import GoldError, choice_letter, extract_final_answer, parse_gold, score_math
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
