"""Standard benchmarks through lm-evaluation-harness: a task of the user's own YAML over a local file (offline), run
and scored by lm-eval on the tiny model, its per-sample scores becoming the benchmark's per-item scores."""

from __future__ import annotations

import json

import pytest

from stages.config import ConfigError
from stages.evaluate import run as eval_run

PAIRS = [(3, 9), (12, 4), (7, 8), (20, 2), (5, 6), (1, 11), (15, 14), (2, 30)]


@pytest.fixture
def task_dir(tmp_path):
    data = tmp_path / "larger.jsonl"
    data.write_text(
        "".join(json.dumps({"a": a, "b": b, "choices": [str(a), str(b)], "label": int(b > a)}) + "\n" for a, b in PAIRS)
    )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "larger.yaml").write_text(
        "task: sft2rl_larger\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Which number is larger, {{a}} or {{b}}? Answer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    return tasks


def _bench(task_dir, **kw):
    spec = {"name": "larger", "source": "lm_eval", "task": "sft2rl_larger", "include_path": str(task_dir)}
    return json.dumps([{**spec, "domain": "out", **kw}])


def test_an_lm_eval_task_scores_every_item_of_the_model(tiny_cfg, task_dir):
    cfg = tiny_cfg(f"eval.benchmarks={_bench(task_dir, size=6)}", "eval.models=[base]", "eval.forgetting.enabled=false")
    eval_run(cfg)
    items = [json.loads(x) for x in (cfg.run_dir / "eval" / "items" / "larger.jsonl").read_text().splitlines()]
    assert [x["id"] for x in items] == [f"sft2rl_larger-{i}" for i in range(6)]  # size = lm-eval's limit
    assert items[0]["question"] == "Which number is larger, 3 or 9? Answer:" and items[0]["answer"] == "1"
    scores = json.loads((cfg.run_dir / "eval" / "base" / "scores.json").read_text())["larger/accuracy"]
    assert scores["ids"] == [x["id"] for x in items] and set(scores["scores"]) <= {0.0, 1.0}
    m = json.loads((cfg.run_dir / "eval" / "base" / "metrics.json").read_text())
    acc = m["metrics"]["larger/accuracy"]
    assert acc["n"] == 6 and acc["domain"] == "out" and acc["value"] == pytest.approx(sum(scores["scores"]) / 6)
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"] and m["timing"]["lm_eval_s"] > 0


def test_an_unknown_task_or_metric_is_named(tiny_cfg, task_dir):
    bad = tiny_cfg(f"eval.benchmarks={_bench(task_dir, task='sft2rl_nope')}", "eval.models=[base]")
    with pytest.raises(ConfigError, match="lm-eval task 'sft2rl_nope' could not be loaded"):
        eval_run(bad)
    assert not (bad.run_dir / "eval" / "base").exists()  # refused before any model was loaded
    bench = _bench(task_dir, size=2, metric="f1")
    metric = tiny_cfg(f"eval.benchmarks={bench}", "eval.models=[base]", "eval.forgetting.enabled=false")
    with pytest.raises(ConfigError, match="no per-sample metric 'f1'"):
        eval_run(metric)
