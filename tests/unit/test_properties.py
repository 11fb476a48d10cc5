"""Property tests (hypothesis): the config loader and the answer parsing never crash and keep their invariants."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages.config import ConfigError, load_config
from stages.rewards import extract_final_answer, format_reward, math_correct
from tests.conftest import CONFIGS

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.integers(min_value=-(10**40), max_value=10**40))
def test_a_correct_hash_answer_always_scores(n):
    assert math_correct([f"work...\n#### {n}"], answer=[str(n)]) == [1.0]
    assert math_correct([f"so \\boxed{{{n}}}"], answer=[str(n)]) == [1.0]


@FAST
@given(st.integers(min_value=-(10**12), max_value=10**12), st.integers(min_value=1, max_value=10**6))
def test_a_wrong_answer_never_scores(n, delta):
    assert math_correct([f"#### {n + delta}"], answer=[str(n)]) == [0.0]


@FAST
@given(st.text(max_size=200), st.one_of(st.none(), st.text(max_size=20), st.integers().map(str)))
def test_rewards_never_crash_and_stay_in_range(text, gold):
    (score,) = math_correct([text], answer=[gold])
    assert score in (0.0, 1.0)
    assert format_reward([text])[0] in (0.0, 1.0)
    answer = extract_final_answer(text)
    assert answer is None or (answer and answer in text)


@FAST
@given(st.text(max_size=40))
def test_text_without_a_marker_never_scores(text):
    text = text.replace("#", "").replace("\\boxed", "")
    assert math_correct([text], answer=["5"]) == [0.0]


KEYS = st.sampled_from(
    [
        "seed",
        "sft.method",
        "sft.rpsft.lambda",
        "sft.rpsft.k",
        "sft.training.max_steps",
        "rl.generation.num_generations",
        "data.size",
        "nonsense.key",
        "sft.training.learning_rate",
    ]
)
VALUES = st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(), st.none())


@FAST
@given(st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_config_loader_either_validates_or_raises_config_error(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(CONFIGS / "tiny.yaml", overrides)
    except ConfigError as e:
        assert str(e)  # a message, never an empty error or another exception type
        return
    assert cfg.sft.rpsft.lam >= 0 and cfg.sft.training.max_steps != 0


@pytest.mark.parametrize("raw", ["a=b=c", "x.=1", "=3", ".a=1"])
def test_malformed_override_keys(raw):
    with pytest.raises(ConfigError):
        load_config(CONFIGS / "tiny.yaml", [raw])
