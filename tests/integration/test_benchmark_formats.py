"""Benchmark and data files as people have them: verl's chat-format parquet/JSONL (``prompt`` = a chat, gold in
``reward_model.ground_truth``), OpenAI ``messages`` files, multiple choice with the options inline and 1-based labels;
loaded through the config alone, scored by the one math scorer, and evaluated end to end on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.config import ConfigError
from stages.data import DataError, build_items, to_conversation
from stages.eval_items import build_benchmark
from stages.evaluate import item_prompt, score_text
from stages.evaluate import run as eval_run
from tests.unit.math_golden import GOLDEN, OUTPUT_FORMS

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
MATH_GOLDS = [g for kind, g, _, _ in GOLDEN if kind not in ("letter", "python")][:40]


def _verl_row(i: int, problem: str, gold: str, source: str = "math500") -> dict:
    return {
        "data_source": source,
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": problem}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": gold},
        "extra_info": {"split": "test", "index": i, "raw_problem": problem},
    }


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def verl_math(tmp_path):
    rows = [_verl_row(i, f"Problem {i}: what is the answer to item {i}?", g) for i, g in enumerate(MATH_GOLDS)]
    return _write_jsonl(tmp_path / "math500.jsonl", rows)


@pytest.fixture
def verl_choice(tmp_path):
    rows = []
    for i, (a, b) in enumerate([(3, 9), (12, 4), (7, 8), (20, 2), (5, 6), (1, 11), (30, 31), (9, 90)]):
        opts = [str(a), str(b), str(a + b), str(a * b)]
        q = f"Which is larger, {a} or {b}?\nA. {opts[0]}\nB. {opts[1]}\nC. {opts[2]}\nD. {opts[3]}"
        rows.append(_verl_row(i, q, "AB"[int(b > a)], source="mc"))
    return _write_jsonl(tmp_path / "mc.jsonl", rows)


def _bench(tiny_cfg, spec: dict, *more: str):
    cfg = tiny_cfg(f"eval.benchmarks=[{json.dumps(spec)}]", *more)
    return cfg, build_benchmark(cfg, cfg.eval.benchmarks[0])


def test_a_verl_math_file_loads_through_the_config_alone_and_every_gold_scores(tiny_cfg, verl_math):
    spec = {"name": "math500", "source": "file", "path": verl_math}
    spec["fields"] = {"question": "prompt", "answer": "reward_model.ground_truth"}
    cfg, (items, note) = _bench(tiny_cfg, spec)
    assert len(items) == note["n"] == len(MATH_GOLDS)  # size unset: every item
    assert [x["answer"] for x in items] == MATH_GOLDS
    assert items[0]["messages"][0] == {"role": "system", "content": SYSTEM}  # the file's own system prompt kept
    assert items[0]["question"] == "Problem 0: what is the answer to item 0?"
    bench = cfg.eval.benchmarks[0]
    for x in items:
        for form in OUTPUT_FORMS:
            assert score_text(bench, x, form % x["answer"]) == 1.0, (x["answer"], form)
        assert score_text(bench, x, "\\boxed{123456}") == 0.0


def test_nested_paths_reach_extra_info_and_the_last_message(tiny_cfg, verl_math):
    spec = {"name": "m", "source": "file", "path": verl_math, "size": 3}
    spec["fields"] = {"question": "extra_info.raw_problem", "answer": "reward_model.ground_truth"}
    _, (items, _) = _bench(tiny_cfg, spec)
    assert len(items) == 3 and "messages" not in items[0]
    spec["fields"]["question"] = "prompt[-1].content"
    _, (items2, _) = _bench(tiny_cfg, spec)
    assert [x["question"] for x in items2] == [x["question"] for x in items]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"question": "prompt", "answer": "reward_model"}, r"eval.benchmarks\[0\] \(math500\).fields.answer is a dict"),
        ({"question": "prompt", "answer": "reward_model.truth"}, r"'reward_model' has no key 'truth'.*ground_truth"),
        ({"question": "prompt[5].content", "answer": "reward_model.ground_truth"}, r"'prompt' is a list of 2"),
        ({"question": "prompt", "answer": "reward_model..x"}, "not a field path"),
        ({"question": "problem", "answer": "reward_model.ground_truth"}, r"column 'problem' is missing"),
    ],
)
def test_bad_field_paths_name_the_real_place(tiny_cfg, verl_math, fields, match):
    with pytest.raises(DataError, match=match):
        _bench(tiny_cfg, {"name": "math500", "source": "file", "path": verl_math, "fields": fields})


def test_an_unreadable_gold_names_the_benchmark_and_item(tiny_cfg, tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [_verl_row(0, "q0", "5"), _verl_row(1, "q1", "\\frac{1}{")])
    spec = {"name": "math500", "source": "file", "path": path}
    spec["fields"] = {"question": "prompt", "answer": "reward_model.ground_truth"}
    with pytest.raises(DataError, match=r"eval.benchmarks\[0\] \(math500\).fields.answer: 1 of 2 gold answers"):
        _bench(tiny_cfg, spec)


def test_generative_multiple_choice_with_inline_options(tiny_cfg, verl_choice):
    spec = {"name": "mc", "source": "file", "path": verl_choice, "answer_type": "choice", "domain": "out"}
    spec["fields"] = {"question": "prompt", "answer": "reward_model.ground_truth"}
    cfg, (items, _) = _bench(tiny_cfg, spec)
    bench = cfg.eval.benchmarks[0]
    assert {x["n_choices"] for x in items} == {4}
    for x in items:
        assert score_text(bench, x, f"\\boxed{{{x['answer']}}}") == 1.0
        assert score_text(bench, x, f"The final answer is ({x['answer']}).") == 1.0
        assert score_text(bench, x, "\\boxed{D}") == 0.0


def test_choices_column_with_one_based_labels(tiny_cfg, tmp_path):
    rows = [
        {"question": "2 + 2 = ?", "options": ["3", "4", "5"], "label": 2},
        {"question": "1 + 0?", "options": ["1", "2"], "label": "1"},
    ]
    path = _write_jsonl(tmp_path / "mc1.jsonl", rows)
    spec = {"name": "mc1", "source": "file", "path": path, "answer_type": "choice", "label_base": 1}
    spec["fields"] = {"answer": "label", "choices": "options"}
    cfg, (items, _) = _bench(tiny_cfg, spec)
    assert [x["answer"] for x in items] == ["B", "A"]
    assert "B. 4" in items[0]["question"]
    spec["label_base"] = 0  # the same file read as 0-based: label 2 is "5", and "1" is out of range for ...
    _, (items0, _) = _bench(tiny_cfg, spec)
    assert [x["answer"] for x in items0] == ["C", "B"]
    rows.append({"question": "3?", "options": ["3", "4"], "label": 3})
    _write_jsonl(tmp_path / "mc1.jsonl", rows)
    spec["label_base"] = 1
    with pytest.raises(DataError, match="out of range for 2 options counted from 1"):
        _bench(tiny_cfg, spec)


def test_per_benchmark_system_prompt_and_chat_prompts(tiny_cfg, tmp_path, verl_math):
    from stages.models import load_tokenizer, resolve_model

    cfg = tiny_cfg()
    tok = load_tokenizer(resolve_model(cfg), cfg.model)
    plain = _write_jsonl(tmp_path / "plain.jsonl", [{"question": "1 + 1", "answer": "2"}])
    spec = {"name": "p", "source": "file", "path": plain, "system_prompt": "Answer in one number."}
    cfg, (items, _) = _bench(tiny_cfg, spec)
    text = item_prompt(tok, cfg, cfg.eval.benchmarks[0], items[0])
    assert "Answer in one number." in text and cfg.data.system_prompt not in text
    spec = {"name": "m", "source": "file", "path": verl_math, "size": 1}
    spec["fields"] = {"question": "prompt", "answer": "reward_model.ground_truth"}
    cfg, (items, _) = _bench(tiny_cfg, spec)
    text = item_prompt(tok, cfg, cfg.eval.benchmarks[0], items[0])
    assert SYSTEM in text and cfg.data.system_prompt not in text


def test_verl_rl_prompts_and_openai_sft_files_load_through_the_config(tiny_cfg, tmp_path, verl_math):
    from stages.rl import rl_prompts

    cfg = tiny_cfg(
        "rl.prompt_data.source=file",
        f"rl.prompt_data.path={verl_math}",
        "rl.prompt_data.fields.question=prompt",
        "rl.prompt_data.fields.response=null",
        "rl.prompt_data.fields.answer=reward_model.ground_truth",
        "rl.num_prompts=10",
    )
    prompts = rl_prompts(cfg)
    assert len(prompts) == 10 and all(p["answer"] in MATH_GOLDS for p in prompts)  # a seeded sample of the rows
    assert to_conversation(prompts[0], cfg.data.system_prompt)["prompt"][0]["content"] == SYSTEM
    chats = [
        {"messages": [{"role": "user", "content": f"{a} + {a}"}, {"role": "assistant", "content": f"#### {2 * a}"}]}
        for a in range(5)
    ]
    path = _write_jsonl(tmp_path / "sft.jsonl", chats)
    cfg = tiny_cfg(
        "data.source=file", f"data.path={path}", "data.fields.question=messages", "data.fields.response=null"
    )
    items = build_items(cfg.data)
    assert len(items) == 5 and items[3]["response"] == "#### 6"
    conv = to_conversation(items[3], cfg.data.system_prompt)
    assert conv == {
        "prompt": [{"role": "user", "content": "3 + 3"}],
        "completion": [{"role": "assistant", "content": "#### 6"}],
    }
    bad = _write_jsonl(tmp_path / "bad.jsonl", [_verl_row(0, "q", "\\frac{1}{")])
    cfg = tiny_cfg("rl.prompt_data.source=file", f"rl.prompt_data.path={bad}", "rl.prompt_data.fields.question=prompt")
    cfg = cfg.model_copy(deep=True)
    cfg.rl.prompt_data.fields.answer = "reward_model.ground_truth"
    cfg.rl.num_prompts = 1
    with pytest.raises(ConfigError, match=r"rl.prompt_data have a gold answer .*cannot be read as a whole"):
        rl_prompts(cfg)


def test_the_tiny_model_evaluates_a_verl_math_file_and_a_choice_file(tiny_cfg, verl_math, verl_choice):
    math_spec = {"name": "math500", "source": "file", "path": verl_math, "size": 6, "max_new_tokens": 8}
    math_spec["fields"] = {"question": "prompt", "answer": "reward_model.ground_truth"}
    mc_spec = {"name": "mc", "source": "file", "path": verl_choice, "answer_type": "choice", "domain": "out"}
    mc_spec.update(fields={"question": "prompt", "answer": "reward_model.ground_truth"}, max_new_tokens=4)
    cfg = tiny_cfg(
        f"eval.benchmarks={json.dumps([math_spec, mc_spec])}",
        "eval.models=[base]",
        "eval.forgetting.enabled=false",
        "eval.bootstrap=100",
    )
    result = eval_run(cfg)["base"]["metrics"]
    assert result["math500/accuracy"]["n"] == 6 and 0.0 <= result["math500/accuracy"]["value"] <= 1.0
    assert result["math500/accuracy_lenient"]["n"] == 6
    assert result["mc/accuracy"]["n"] == 8 and result["mc/accuracy"]["chance"] == pytest.approx(0.25)
    outputs = (cfg.run_dir / "eval" / "base" / "outputs.jsonl").read_text().splitlines()
    assert len(outputs) == 14


def test_the_readme_verl_example_runs_as_written(tiny_cfg, tmp_path):
    """The docs' MATH-500 example, taken from docs/evaluation.md itself, loads a verl-format parquet file."""
    import re

    import datasets
    import yaml

    from tests.conftest import REPO

    readme = (REPO / "docs" / "evaluation.md").read_text()
    block = re.search(r"<!-- verl-math-example -->\n```yaml\n(.*?)```", readme, re.S).group(1)
    (spec,) = yaml.safe_load(block)["eval"]["benchmarks"]
    path = tmp_path / spec["path"]
    path.parent.mkdir(parents=True)
    rows = [_verl_row(i, f"Problem {i}", g) for i, g in enumerate(MATH_GOLDS[:12])]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    spec["path"] = str(path)
    cfg, (items, _) = _bench(tiny_cfg, spec)
    assert [x["answer"] for x in items] == MATH_GOLDS[:12]
    assert all(score_text(cfg.eval.benchmarks[0], x, f"\\boxed{{{x['answer']}}}") == 1.0 for x in items)


def test_rl_prompts_from_a_file_leave_the_in_domain_evaluation_and_repeated_rows_count_once(tiny_cfg, verl_math):
    from stages.rl import rl_prompts

    spec = {"name": "math500", "source": "file", "path": verl_math}
    spec["fields"] = {"question": "prompt", "answer": "reward_model.ground_truth"}
    rl = [
        "rl.prompt_data.source=file",
        f"rl.prompt_data.path={verl_math}",
        "rl.prompt_data.fields.question=prompt",
        "rl.prompt_data.fields.response=null",
        "rl.prompt_data.fields.answer=reward_model.ground_truth",
        "rl.num_prompts=4",
    ]
    cfg, (items, note) = _bench(tiny_cfg, spec, *rl)
    prompts = {p["question"] for p in rl_prompts(cfg)}
    assert len(prompts) == 4 and not prompts & {x["question"] for x in items}
    assert note["excluded"] == 4 and len(items) == len(MATH_GOLDS) - 4 and "RL prompts" in note["why"]
    # the same file as an out-of-domain benchmark keeps every item; a row written twice is scored once
    rows = Path(verl_math).read_text().splitlines()
    twice = Path(verl_math).with_name("twice.jsonl")
    twice.write_text("\n".join([*rows, rows[0]]) + "\n")
    _, (items, note) = _bench(tiny_cfg, {**spec, "path": str(twice), "domain": "out"}, *rl)
    assert len(items) == len(MATH_GOLDS) and note["repeated_dropped"] == 1


def test_arc_items_with_numbered_options_are_read_by_their_labels(tiny_cfg, tmp_path):
    # ARC-Challenge as the hub has it: most items labelled A-D, some 1-4 with the gold a number
    rows = [
        {
            "question": "Which is a mammal?",
            "choices": {"text": ["trout", "whale", "frog", "crow"], "label": list("ABCD")},
            "answerKey": "B",
        },  # noqa: E501
        {
            "question": "Which is a metal?",
            "choices": {"text": ["wood", "glass", "iron", "wool"], "label": ["1", "2", "3", "4"]},
            "answerKey": "3",
        },  # noqa: E501
        {
            "question": "Which is a gas?",
            "choices": {"text": ["ice", "steam", "sand", "salt"], "label": ["1", "2", "3", "4"]},
            "answerKey": "4",
        },  # noqa: E501
    ]
    path = _write_jsonl(tmp_path / "arc.jsonl", rows)
    fields = {"question": "question", "choices": "choices.text", "answer": "answerKey"}
    spec = {"name": "arc", "source": "file", "path": path, "answer_type": "choice", "domain": "out", "fields": fields}
    cfg, (items, _) = _bench(tiny_cfg, spec)
    assert [x["answer"] for x in items] == ["B", "C", "D"]  # "4" was out of range and stopped the benchmark
    assert "C. iron" in items[1]["question"]
    _, (ll, _) = _bench(tiny_cfg, {**spec, "answer_type": "math"})  # the same file scored by log-likelihood
    assert [x["answer"] for x in ll] == [1, 2, 3]
    # the options written into the question as numbered lines, the gold a number
    inline = [{"question": "Which is a gas?\n1. ice\n2. steam\n3. sand\n4. salt", "answerKey": "2"}]
    path = _write_jsonl(tmp_path / "arc-inline.jsonl", inline)
    spec = {"name": "arc", "source": "file", "path": path, "answer_type": "choice", "domain": "out"}
    spec["fields"] = {"question": "question", "answer": "answerKey"}
    cfg, (items, _) = _bench(tiny_cfg, spec)
    assert items[0]["answer"] == "B" and items[0]["n_choices"] == 4
    assert "\nB. steam\n" in items[0]["question"] and "\n2. steam" not in items[0]["question"]
    assert score_text(cfg.eval.benchmarks[0], items[0], "The final answer is (B).") == 1.0
