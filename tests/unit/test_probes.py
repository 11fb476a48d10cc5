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
