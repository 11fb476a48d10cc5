"""Rewards as a table, hostile cases included: what scores 1.0 and what must never do so."""

from __future__ import annotations

import pytest

from stages.rewards import REWARDS, extract_final_answer, format_reward, get_reward, math_correct

CASES = [
    # (completion, gold, expected math_correct, why)
    ("2 + 3 = 5\n#### 5", "5", 1.0, "hash answer"),
    ("so the total is \\boxed{42}.", "42", 1.0, "boxed answer"),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0, "equivalent forms"),
    ("#### 1,234", "1234", 1.0, "thousands separator"),
    ("#### -46", "-46", 1.0, "negative"),
    ("", "5", 0.0, "empty output"),
    ("   \n", "5", 0.0, "whitespace only"),
    ("the answer is 5", "5", 0.0, "no final-answer marker: a number in the text is not an answer"),
    ("5 apples, 5 pears ... #### 7", "5", 0.0, "the right number hidden in the reasoning, a wrong final answer"),
    ("\\boxed{5} wait, no: \\boxed{6}", "5", 0.0, "several boxes: the last one counts"),
    ("\\boxed{6} hmm \\boxed{5}", "5", 1.0, "several boxes: the last one counts (correct)"),
    ("#### 5\nactually \\boxed{9}", "5", 0.0, "the later of #### and boxed counts"),
    ("\\boxed{9}\n#### 5", "5", 1.0, "the later of #### and boxed counts (correct)"),
    ("#### 5", "not a number at all", 0.0, "unparsable gold never scores"),
    ("#### ", "5", 0.0, "empty hash answer"),
    ("\\boxed{}", "5", 0.0, "empty box"),
    ("\\boxed{5", "5", 0.0, "unbalanced box"),
    ("#### 123456789012345678901234567890", "123456789012345678901234567890", 1.0, "huge integer, exact"),
    ("#### 123456789012345678901234567891", "123456789012345678901234567890", 0.0, "huge integer off by one"),
    ("#### 1e400", "5", 0.0, "overflowing float"),
    ([{"role": "assistant", "content": "#### 8"}], "8", 1.0, "conversational completion"),
    ("#### 5", None, 0.0, "missing gold"),
]


@pytest.mark.parametrize("completion,gold,expected,why", CASES, ids=[c[3] for c in CASES])
def test_math_correct_table(completion, gold, expected, why):
    assert math_correct([completion], answer=[gold]) == [expected], why


def test_extract_final_answer():
    assert extract_final_answer("a\n#### 12\n") == "12"
    assert extract_final_answer("\\boxed{\\frac{a}{b}} end") == "\\frac{a}{b}"
    assert extract_final_answer("nothing here") is None


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("1 + 1 = 2\n#### 2", 1.0),
        ("#### 2\nand more text", 0.0),
        ("so \\boxed{2}.", 1.0),
        ("\\boxed{2} but then I kept talking", 0.0),
        ("", 0.0),
        ("2", 0.0),
    ],
)
def test_format_reward(completion, expected):
    assert format_reward([completion]) == [expected]


def test_registry_by_name_only():
    assert set(REWARDS) >= {"math_correct", "format"}
    assert get_reward("math_correct") is math_correct
    with pytest.raises(ValueError, match="registered rewards: .*format.*math_correct"):
        get_reward("os.system")


def test_rewards_are_pure_and_batched():
    comps = ["#### 1", "#### 2", "\\boxed{3}"]
    golds = ["1", "5", "3"]
    assert math_correct(comps, answer=golds, prompts=["p"] * 3) == [1.0, 0.0, 1.0]
    # pure: each completion scores the same alone as in the batch, in any order, and the inputs are not changed
    alone = [math_correct([c], answer=[g])[0] for c, g in zip(comps, golds, strict=True)]
    assert alone == [1.0, 0.0, 1.0]
    assert math_correct(comps[::-1], answer=golds[::-1]) == [1.0, 0.0, 1.0]
    assert comps == ["#### 1", "#### 2", "\\boxed{3}"] and golds == ["1", "5", "3"]


def test_an_installed_package_adds_a_reward_by_name_through_entry_points(tmp_path, monkeypatch):
    from stages.config import ConfigError, load_config
    from tests.conftest import CONFIGS

    (tmp_path / "acme_rewards.py").write_text(
        "def brevity(completions, **_):\n    return [1.0 / (1 + len(str(c))) for c in completions]\n"
    )
    dist = tmp_path / "acme_rewards-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-rewards\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sft2rl.rewards]\nbrevity = acme_rewards:brevity\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(REWARDS, "brevity", raising=False)
    cfg = load_config(CONFIGS / "tiny.yaml", ["rl.rewards=[math_correct, brevity]"])  # validated by name
    assert cfg.rl.rewards == ["math_correct", "brevity"]
    fn = get_reward("brevity")
    assert fn(["ab", "abcd"]) == [1 / 3, 1 / 5] and fn.__name__ == "brevity"
    monkeypatch.delitem(REWARDS, "brevity")
    with pytest.raises(ConfigError, match="unknown rewards \\['acme_rewards:brevity'\\]"):
        load_config(CONFIGS / "tiny.yaml", ["rl.rewards=[acme_rewards:brevity]"])  # never an import path
