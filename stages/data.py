"""Training data: built-in reasoning-gym tasks with worked solutions, or any hub / local dataset with field mapping.

Every item is a dict with ``id``, ``task``, ``question``, ``response`` (the worked solution ending in ``#### N``),
``answer`` and ``source_id`` (for gsm_symbolic: the index of the GSM8K test problem its template derives from, so
evaluation can exclude problems training has seen; None elsewhere). The SFT stage turns items into TRL's
conversational prompt-completion format, so the model's own chat template is applied and the loss covers the
response tokens only.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from pathlib import Path
from typing import Any

from stages.config import ConfigError, DataConfig, TaskSpec

log = logging.getLogger(__name__)

_FIELD = re.compile(r"^(?P<name>[^\[\]]+)(\[(?P<idx>-?\d+)\])?$")


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
    import reasoning_gym

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
            items.append(
                {
                    "id": _item_id(spec.name, x["question"]),
                    "task": spec.name,
                    "question": x["question"],
                    "response": response,
                    "answer": answer,
                    "source_id": source_id,
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


def _resolve_field(row: dict[str, Any], spec: str, where: str) -> Any:
    m = _FIELD.match(spec)
    if not m:
        raise DataError(f"data.fields value {spec!r} is malformed; use a column name or name[index]")
    name, idx = m["name"], m["idx"]
    if name not in row:
        raise DataError(
            f"{where}: field {name!r} is missing (columns: {sorted(row)}); map it with data.fields.<role>=<column>"
        )
    value = row[name]
    if idx is not None:
        if not isinstance(value, list) or not value:
            raise DataError(f"{where}: field {name!r} is not a non-empty list, cannot take [{idx}]")
        value = value[int(idx)]
    return value


def load_table(cfg: DataConfig) -> list[dict[str, Any]]:
    """Rows of a local JSON/JSONL/parquet file or a hub dataset (first ``cfg.size`` rows)."""
    import datasets

    if cfg.source == "file":
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise DataError(f"data.path {path} does not exist (data.source=file)")
        suffix = path.suffix.lower()
        kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(suffix)
        if kind is None:
            raise DataError(f"data.path {path}: unsupported file type {suffix!r}; use .json, .jsonl or .parquet")
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
    return [ds[i] for i in range(min(cfg.size, len(ds)))]


def build_items(cfg: DataConfig, size: int | None = None, seed: int | None = None) -> list[dict[str, Any]]:
    """Build the SFT items described by ``cfg`` (deterministic for a given seed)."""
    size = cfg.size if size is None else size
    seed = cfg.seed if seed is None else seed
    if cfg.source == "reasoning_gym":
        holdout = set(cfg.holdout_source_ids)
        items: list[dict[str, Any]] = []
        for i, (spec, n) in enumerate(zip(cfg.tasks, _split_sizes(cfg.tasks, size), strict=True)):
            if n:
                items += _reasoning_gym_items(spec, n, seed + 1000 * i, holdout)
        random.Random(seed).shuffle(items)
        return items
    rows = load_table(cfg)
    items = []
    for i, row in enumerate(rows):
        where = f"{cfg.path} row {i}"
        q = _resolve_field(row, cfg.fields.question, where)
        r = _resolve_field(row, cfg.fields.response, where) if cfg.fields.response else None
        a = _resolve_field(row, cfg.fields.answer, where) if cfg.fields.answer else None
        if (
            not isinstance(q, str)
            or not q.strip()
            or (cfg.fields.response and (not isinstance(r, str) or not r.strip()))
        ):
            raise DataError(f"{where}: question and response must be non-empty strings")
        items.append(
            {
                "id": _item_id(cfg.path or "", q),
                "task": Path(cfg.path).stem if cfg.source == "file" else cfg.path,
                "question": q,
                "response": r,
                "answer": None if a is None else str(a),
                "source_id": None,
            }
        )
    return items


def to_conversation(item: dict[str, Any], system_prompt: str | None) -> dict[str, list[dict[str, str]]]:
    """TRL's conversational prompt-completion format: the chat template is applied, loss on the completion only."""
    prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompt.append({"role": "user", "content": item["question"]})
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": item["response"]}]}


def to_trl_dataset(items: list[dict[str, Any]], system_prompt: str | None):
    import datasets

    if not items:
        raise DataError("no training items: check data.size and data.tasks / data.path")
    if any(x["response"] is None for x in items):
        raise DataError("SFT needs a response for every item: map data.fields.response to a column")
    return datasets.Dataset.from_list([to_conversation(x, system_prompt) for x in items])


def tokenizer_corpus(cfg: DataConfig, n: int = 400) -> list[str]:
    """Text to train the tiny test model's tokenizer on: the task text plus the system prompt."""
    items = build_items(cfg, size=min(n, cfg.size), seed=cfg.seed)
    return [cfg.system_prompt, "system user assistant"] + [f"{x['question']}\n{x['response']}" for x in items]
