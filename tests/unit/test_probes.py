"""The generation probes: items are well formed and every instruction check passes and fails where it should."""

from __future__ import annotations

import pytest

from stages.probes import chat_fact_correct, chat_facts_items, follows_instruction, instruction_items

CHECKS = [
    ({"kind": "one_word"}, "Dolphin.", "A dolphin lives there."),
    ({"kind": "all_caps"}, "THE OCEAN IS VAST AND BLUE.", "The OCEAN is vast."),
    ({"kind": "lowercase"}, "the ocean is vast.", "The ocean is vast."),
    ({"kind": "json_keys", "a": "name", "b": "city"}, '{"name": "Ann", "city": "Oslo"}', '{"name": "Ann"}'),
    ({"kind": "json_keys", "a": "name", "b": "city"}, '```json\n{"city": "Oslo", "name": "Ann"}\n```', "name: Ann"),
    ({"kind": "bullets", "n": 3}, "- one\n- two\n- three", "- one\n- two"),
    ({"kind": "bullets", "n": 2}, "* a\n* b", "Here:\n- a\n- b"),
    ({"kind": "no_commas", "n": 0}, "Rain falls and people hurry home", "Rain falls, people hurry"),
    ({"kind": "starts_with", "word": "Certainly"}, "Certainly! Pets give company.", "Pets give company."),
    ({"kind": "ends_with", "phrase": "That is all."}, "Sleep more. That is all.", "That is all. Sleep more."),
    ({"kind": "max_words", "n": 5}, "Eat oats and fruit.", "Eat oats and fruit every single morning."),
    ({"kind": "quoted"}, '"Trains are calm."', "Trains are calm."),
]


@pytest.mark.parametrize("check,good,bad", CHECKS, ids=[f"{c['kind']}-{i}" for i, (c, _, _) in enumerate(CHECKS)])
def test_each_instruction_check_passes_and_fails(check, good, bad):
    assert follows_instruction(check, good) is True
    assert follows_instruction(check, bad) is False
    assert follows_instruction(check, "") is False


def test_instruction_items_cover_every_kind_deterministically():
    items = instruction_items(80, seed=3)
    assert items == instruction_items(80, seed=3) and len({x["id"] for x in items}) == len(items) >= 60
    assert {x["check"]["kind"] for x in items} == {
        "one_word", "all_caps", "lowercase", "json_keys", "bullets", "no_commas", "starts_with", "ends_with",
        "max_words", "quoted",
    }  # fmt: skip
    for x in items:  # the constraint is written into the question
        assert x["question"].endswith((".", "'", "'."))


def test_chat_facts_score_the_gold_and_not_a_list_of_every_option():
    items = chat_facts_items(40, seed=1)
    assert len(items) == 40 and all(len(x["distractors"]) == 3 for x in items)
    x = next(i for i in items if i["question"].startswith("What is the capital of"))
    assert "Question:" not in x["question"] and "Answer:" not in x["question"]
    assert chat_fact_correct(x, f"The capital is {x['answer']}.")
    assert not chat_fact_correct(x, "I do not know.")
    assert not chat_fact_correct(x, ", ".join([x["answer"], *x["distractors"]]))  # naming every option
    assert not chat_fact_correct(x, f"{x['answer']}ville")  # a word that only contains the gold


def test_instruction_checks_need_an_answer_on_topic():
    items = instruction_items(100, seed=5)
    rain = next(x for x in items if x["question"].startswith("Describe a rainy") and x["check"]["kind"] == "max_words")
    assert follows_instruction(rain["check"], "Grey streets, wet umbrellas.")
    assert not follows_instruction(rain["check"], "#### 12")  # short enough, answers nothing
    bees = {"kind": "one_word", "accept": ["honey", "wax"]}
    assert follows_instruction(bees, "Honey.") and not follows_instruction(bees, "Dolphin.")
    assert not follows_instruction(bees, "1111111111")
    # json_keys is judged on form only: no topic stems attached
    assert all("topic" not in x["check"] for x in items if x["check"]["kind"] == "json_keys")


@pytest.mark.parametrize("constant", ["#### 12", "12 + 7 = 19\n#### 19", "42", "1111111111", "- - -\n- - -"])
def test_task_shaped_constant_outputs_pass_at_most_5_percent_of_instruction_items(constant):
    items = instruction_items(200, seed=11)
    passed = sum(follows_instruction(x["check"], constant) for x in items)
    assert passed <= 0.05 * len(items), (constant, passed)


def test_generation_chance_level_is_the_score_of_constant_outputs():
    from stages.config import BenchmarkSpec
    from stages.evaluate import _chance

    spec = BenchmarkSpec(name="instructions", source="instructions", domain="out", size=100)
    assert _chance(spec, instruction_items(100, seed=2)) <= 0.05
    math = BenchmarkSpec(name="m", source="file", path="x.jsonl", answer_type="math", domain="in")
    items = [{"id": str(i), "question": "q", "answer": "12" if i < 3 else "7"} for i in range(10)]
    assert _chance(math, items) == pytest.approx(0.3)  # "#### 12" is right on 3 of 10: the floor a constant reaches
