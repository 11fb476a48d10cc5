"""Training data: built-in reasoning-gym tasks with worked solutions, or any hub / local dataset with field mapping.

Every item is a dict with ``id``, ``task``, ``question``, ``response`` (the worked solution ending in ``#### N``),
``answer`` and ``source_id`` (for gsm_symbolic: the index of the GSM8K test problem its template derives from, so
evaluation can exclude problems training has seen; None elsewhere). The SFT stage turns items into TRL's
conversational prompt-completion format, so the model's own chat template is applied and the loss covers the
response tokens only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import datasets
import reasoning_gym

from stages.config import FIELD_PATH_HELP, ConfigError, DataConfig, TaskSpec

log = logging.getLogger(__name__)


DEFAULT_GENERATED_SIZE = 512


class DataError(ConfigError):
    """Unusable data; the message names the file or field and the fix."""


def chain_sum_solution(expression: str) -> tuple[str, str]:
    """Worked left-to-right solution of a chain sum such as ``"69 - 41 + 7"``.

    Returns:
        (response, answer): ``"69 - 41 = 28\\n28 + 7 = 35\\n#### 35"`` and ``"35"``.
    """
    tokens = expression.split()
    if len(tokens) < 3 or len(tokens) % 2 == 0:
        raise ValueError(f"not a chain sum: {expression!r}")
    acc = int(tokens[0])
    steps = []
    for op, raw in zip(tokens[1::2], tokens[2::2], strict=True):
        val = int(raw)
        if op == "+":
            new = acc + val
        elif op == "-":
            new = acc - val
        else:
            raise ValueError(f"unsupported operator {op!r} in {expression!r}")
        steps.append(f"{acc} {op} {val} = {new}")
        acc = new
    return "\n".join(steps) + f"\n#### {acc}", str(acc)


def _item_id(task: str, question: str) -> str:
    return hashlib.sha256(f"{task}\x00{question}".encode()).hexdigest()[:16]


def _reasoning_gym_items(spec: TaskSpec, size: int, seed: int, holdout: set[int]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    # Generate extra when some items are dropped (held-out sources); bounded so a bad holdout list cannot loop.
    want, attempt = size, 0
    while len(items) < size and attempt < 5:
        ds = reasoning_gym.create_dataset(spec.name, size=want * (attempt + 1) + 8, seed=seed + attempt, **spec.params)
        task_indices = getattr(ds, "task_indices", None)
        items = []
        for i, x in enumerate(ds):
            source_id = int(task_indices[i]) if task_indices is not None else None
            if source_id is not None and source_id in holdout:
                continue
            if spec.name == "chain_sum":
                response, answer = chain_sum_solution(x["metadata"]["expression"])
                if answer != str(x["answer"]).strip():
                    raise RuntimeError(f"worked solution disagrees with reasoning-gym gold for {x['question']!r}")
            elif spec.name == "gsm_symbolic":
                response, answer = x["metadata"]["answer_cot"].strip(), str(x["answer"]).strip()
            else:  # pragma: no cover - the schema restricts names
                raise DataError(f"no worked solutions for task {spec.name!r}")
            meta = x.get("metadata", {})
            items.append(
                {
                    "id": _item_id(spec.name, x["question"]),
                    "task": spec.name,
                    "question": x["question"],
                    "response": response,
                    "answer": answer,
                    "source_id": source_id,
                    # the generator's parameters of this item: evaluation sets keep their distribution
                    "stratum": f"{spec.name}:{meta.get('num_terms')}x{meta.get('num_digits')}"
                    if spec.name == "chain_sum"
                    else f"{spec.name}:{source_id}",
                }
            )
            if len(items) == size:
                break
        attempt += 1
    if len(items) < size:
        raise DataError(f"task {spec.name}: only {len(items)} of {size} items left after data.holdout_source_ids")
    return items


def _split_sizes(tasks: list[TaskSpec], size: int) -> list[int]:
    total = sum(t.weight for t in tasks)
    sizes = [int(size * t.weight / total) for t in tasks]
    for i in range(size - sum(sizes)):
        sizes[i % len(sizes)] += 1
    return sizes


_PATH = re.compile(r"^[^.\[\]\s]+(?:\.[^.\[\]\s]+|\[-?\d+\])*$")
_STEP = re.compile(r"\.?([^.\[\]]+)|\[(-?\d+)\]")


def resolve_field(row: dict[str, Any], path: str, where: str, label: str) -> Any:
    """The value at ``path`` in a row: a column, then ``.key`` and ``[index]`` steps (``reward_model.ground_truth``,
    ``prompt[-1].content``). A column whose own name is ``path`` wins. Raises DataError naming ``label`` (the config
    field, e.g. ``eval.benchmarks[2] (math500).fields.answer``), the row and what is there instead."""
    if path in row:
        return row[path]
    if not _PATH.match(path):
        raise DataError(f"{label}={path!r} is not a field path; write {FIELD_PATH_HELP}")
    value: Any = row
    walked = ""
    for m in _STEP.finditer(path):
        key, idx = m.group(1), m.group(2)
        if key is not None:
            if not walked and key not in value:
                raise DataError(
                    f"{where}: {label}={path!r}: column {key!r} is missing (columns: {sorted(value)}); map the "
                    f"role with {label}=<column or path>"
                )
            if not isinstance(value, dict) or key not in value:
                have = f"has keys {sorted(value)}" if isinstance(value, dict) else f"is a {type(value).__name__}"
                raise DataError(f"{where}: {label}={path!r}: {walked!r} has no key {key!r} ({walked!r} {have})")
            value = value[key]
            walked = f"{walked}.{key}" if walked else key
        else:
            i = int(idx)
            if not isinstance(value, list) or not -len(value) <= i < len(value):
                what = f"a list of {len(value)}" if isinstance(value, list) else f"a {type(value).__name__}"
                raise DataError(f"{where}: {label}={path!r}: {walked!r} is {what}, it has no [{i}]")
            value = value[i]
            walked += f"[{i}]"
    return value


def chat_messages(value: Any, where: str, label: str) -> list[dict[str, str]] | None:
    """``value`` as a chat (a list of ``{role, content}`` messages), None when it is not a list of dicts."""
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        return None
    msgs = []
    for j, m in enumerate(value):
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise DataError(
                f"{where}: {label} message {j} must have role system/user/assistant and string content, got "
                f"{str(m)[:120]!r}"
            )
        msgs.append({"role": role, "content": content})
    return msgs


def _question_of(value: Any, where: str, label: str) -> tuple[str, list[dict[str, str]] | None, str | None]:
    """(question text, chat prompt or None, the chat's final assistant message or None)."""
    msgs = chat_messages(value, where, label)
    if msgs is None:
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: {label} must be a non-empty string or a chat (list of messages)")
        return value, None, None
    response = None
    if msgs[-1]["role"] == "assistant":
        response = msgs.pop()["content"]
    users = [m["content"] for m in msgs if m["role"] == "user"]
    if not users or not users[-1].strip():
        raise DataError(f"{where}: {label} is a chat without a user message to answer")
    return users[-1], msgs, response


def scalar_answer(value: Any, where: str, label: str) -> str | None:
    """A gold answer as text; a dict or list is an error naming the field (never silently stringified)."""
    if value is None:
        return None
    if isinstance(value, dict | list | tuple):
        hint = f" (keys {sorted(value)})" if isinstance(value, dict) else ""
        raise DataError(
            f"{where}: {label} is a {type(value).__name__}{hint}, not a single answer; point the field at the "
            "answer itself, e.g. reward_model.ground_truth"
        )
    if isinstance(value, bool):
        raise DataError(f"{where}: {label} is a boolean ({value}), not an answer")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


MAX_LINE_BYTES = 16 << 20


def _check_line_lengths(path: Path) -> None:
    """A JSONL row longer than 16 MiB is no training example: refuse it by number instead of stalling the reader."""
    with open(path, "rb") as f:
        for i, line in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b"")):
            if len(line) > MAX_LINE_BYTES:
                raise DataError(
                    f"data.path {path}: line {i + 1} is longer than {MAX_LINE_BYTES >> 20} MiB; split or drop that row"
                )


def load_table(cfg: DataConfig) -> list[dict[str, Any]]:
    """Rows of a local JSON/JSONL/parquet file or a hub dataset: all, or ``cfg.size`` of them (a sample drawn with
    ``cfg.seed`` unless ``cfg.shuffle`` is false, then the first ones)."""
    if cfg.source == "file":
        path = Path(cfg.path).expanduser()
        if path.exists() and not path.is_file():
            raise DataError(f"data.path {path} is not a regular file (a folder, device or pipe); point it at a file")
        if not path.is_file():
            raise DataError(f"data.path {path} does not exist (data.source=file)")
        suffix = path.suffix.lower()
        kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(suffix)
        if kind is None:
            raise DataError(f"data.path {path}: unsupported file type {suffix!r}; use .json, .jsonl or .parquet")
        if suffix == ".jsonl":
            _check_line_lengths(path)
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as e:  # noqa: BLE001 - datasets raises many types for malformed files
            raise DataError(f"data.path {path} could not be read as {kind}: {type(e).__name__}: {e}") from None
    else:
        try:
            ds = datasets.load_dataset(cfg.path, cfg.subset, split=cfg.split)
        except Exception as e:  # noqa: BLE001
            raise DataError(
                f"hub dataset {cfg.path!r} (subset {cfg.subset}, split {cfg.split}) could not be loaded: "
                f"{type(e).__name__}: {e}. Offline? Save it as JSONL and use data.source=file data.path=<file>"
            ) from None
    if len(ds) == 0:
        raise DataError(f"dataset {cfg.path} is empty: it needs at least one row with question and response")
    n = len(ds) if cfg.size is None else min(cfg.size, len(ds))
    if cfg.shuffle and n < len(ds):  # a seeded sample, not the head of a file sorted by source or difficulty
        return [ds[i] for i in random.Random(cfg.seed).sample(range(len(ds)), n)]
    return [ds[i] for i in range(n)]


def build_items(
    cfg: DataConfig, size: int | None = None, seed: int | None = None, label: str = "data"
) -> list[dict[str, Any]]:
    """Build the items described by ``cfg`` (deterministic for a given seed). ``label`` is where ``cfg`` sits in the
    config (``data``, ``rl.prompt_data``), for messages."""
    size = cfg.size if size is None else size
    seed = cfg.seed if seed is None else seed
    if cfg.mixture:
        return _mixture_items(cfg, size, seed, label)
    if cfg.source == "reasoning_gym":
        size = DEFAULT_GENERATED_SIZE if size is None else size
        holdout = set(cfg.holdout_source_ids)
        items: list[dict[str, Any]] = []
        for i, (spec, n) in enumerate(zip(cfg.tasks, _split_sizes(cfg.tasks, size), strict=True)):
            if n:
                items += _reasoning_gym_items(spec, n, seed + 1000 * i, holdout)
        random.Random(seed).shuffle(items)
        return items
    rows = load_table(cfg if size is None else cfg.model_copy(update={"size": size}))
    items = []
    f = cfg.fields
    for i, row in enumerate(rows):
        where = f"{cfg.path} row {i}"
        q_value = resolve_field(row, f.question, where, f"{label}.fields.question")
        q, messages, chat_response = _question_of(q_value, where, f"{label}.fields.question")
        if f.response and not (f.response == "response" and "response" not in row):
            r = resolve_field(row, f.response, where, f"{label}.fields.response")
        else:
            r = chat_response
        if r is not None and (not isinstance(r, str) or not r.strip()):
            raise DataError(f"{where}: {label}.fields.response={f.response!r} must be a non-empty string")
        # Defaults are optional: prompt-only data has no 'response' (SFT then asks for one), and SFT needs no gold:
        # a file without the default 'answer' column is fine (RL prompts then ask for one)
        optional = f.answer == "answer" and "answer" not in row
        a = resolve_field(row, f.answer, where, f"{label}.fields.answer") if f.answer and not optional else None
        item: dict[str, Any] = {
            "id": _item_id(cfg.path or "", q if messages is None else repr(messages)),
            "task": Path(cfg.path).stem if cfg.source == "file" else cfg.path,
            "question": q,
            "response": r,
            "answer": scalar_answer(a, where, f"{label}.fields.answer"),
            "source_id": None,
        }
        if messages is not None:
            item["messages"] = messages
        items.append(item)
    return items


def _mixture_items(cfg: DataConfig, size: int, seed: int, label: str) -> list[dict[str, Any]]:
    """``size`` items from the parts of ``data.mixture`` in proportion to their weights, each part sampled with its
    own seed (derived from ``seed``), then shuffled together.

    Raises:
        DataError: a part has fewer rows than its share.
    """
    total = sum(p.weight for p in cfg.mixture)
    shares = [int(size * p.weight / total) for p in cfg.mixture]
    for i in range(size - sum(shares)):
        shares[i % len(shares)] += 1
    items: list[dict[str, Any]] = []
    for i, (part, n) in enumerate(zip(cfg.mixture, shares, strict=True)):
        if not n:
            continue
        part_seed = seed + 1000 * (i + 1)
        own = part.model_dump(by_alias=True, exclude={"weight"})
        sub = DataConfig.model_validate(
            {**cfg.model_dump(by_alias=True), **own, "mixture": [], "size": n, "seed": part_seed}
        )
        got = build_items(sub, size=n, seed=part_seed, label=f"{label}.mixture[{i}]")
        if len(got) < n:
            raise DataError(
                f"{label}.mixture[{i}] ({part.path or part.source}) has {len(got)} rows; its weight asks for {n} of "
                f"{label}.size={size}: lower its weight or {label}.size"
            )
        items += got
    random.Random(seed).shuffle(items)
    return items


def prompt_messages(item: dict[str, Any], system_prompt: str | None) -> list[dict[str, str]]:
    """The one way a prompt becomes a chat, for training, RL and evaluation alike: an item with ``messages`` (a chat
    prompt from the data file) keeps that chat, its own system message included; others are the question under
    ``system_prompt`` (none when empty)."""
    if item.get("messages"):
        return [dict(m) for m in item["messages"]]
    prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*prompt, {"role": "user", "content": item["question"]}]


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """A chat as the model's generation prompt: its chat template with the assistant turn opened."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def to_conversation(item: dict[str, Any], system_prompt: str | None) -> dict[str, list[dict[str, str]]]:
    """TRL's conversational prompt-completion format: the chat template is applied, loss on the completion only."""
    return {
        "prompt": prompt_messages(item, system_prompt),
        "completion": [{"role": "assistant", "content": item["response"]}],
    }


def rows_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    """A ``datasets.Dataset`` of ``rows`` whose fingerprint is the rows' own content hash. ``from_list`` would hash the
    Arrow table with dill instead, which fails on Python 3.12 ("Can't pickle <class 'MonthDayNano'>"), and costs a
    pickle of the whole table."""
    blob = json.dumps(rows, sort_keys=True, default=str).encode()
    table = datasets.table.InMemoryTable.from_pylist(rows)
    return datasets.Dataset(table, fingerprint=hashlib.sha256(blob).hexdigest()[:16])


def to_trl_dataset(items: list[dict[str, Any]], system_prompt: str | None):
    if not items:
        raise DataError("no training items: check data.size and data.tasks / data.path")
    if any(x["response"] is None for x in items):
        raise DataError("SFT needs a response for every item: map data.fields.response to a column")
    return rows_dataset([to_conversation(x, system_prompt) for x in items])


def tokenizer_corpus(cfg: DataConfig, n: int = 400) -> list[str]:
    """Text to train the tiny test model's tokenizer on: the task text plus the system prompt."""
    items = build_items(cfg, size=min(n, cfg.size or n), seed=cfg.seed)
    return [cfg.system_prompt, "system user assistant"] + [f"{x['question']}\n{x['response']}" for x in items]
