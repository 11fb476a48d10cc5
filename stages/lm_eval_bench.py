"""Standard benchmarks through lm-evaluation-harness (``source: lm_eval``): the task's documents become the
benchmark's items, and lm-eval runs and scores each model itself (its prompts, few-shot examples and metrics, the
numbers forgetting studies report). Its per-sample metric is the per-item score, so the report's paired, seed and
Holm machinery applies unchanged. lm-eval is an optional extra (``pip install 'sft2rl[lm-eval]'``); task data
loads through ``datasets``, so offline it needs a local copy (a task YAML of your own in ``include_path`` that
points at local files, or a warm hub cache).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from stages.config import BenchmarkSpec, Config, ConfigError

log = logging.getLogger(__name__)


def _lm_eval():
    try:  # lazy: lm-eval is an optional extra (the lm-eval extra), needed only by source=lm_eval benchmarks
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(
            "an eval benchmark has source=lm_eval but lm-evaluation-harness is not installed: pip install lm_eval "
            "(or the lm-eval extra), or remove the benchmark"
        ) from None
    return lm_eval, TaskManager


@functools.lru_cache(maxsize=8)
def _manager(include_path: str | None):
    """lm-eval's task index (built once per process: it reads every task YAML it ships)."""
    _, TaskManager = _lm_eval()
    return TaskManager(include_path=include_path) if include_path else TaskManager()


def _task(spec: BenchmarkSpec):
    from lm_eval.tasks import get_task_dict  # lazy: optional extra (checked by _lm_eval in _manager first)

    manager = _manager(str(spec.include_path) if spec.include_path else None)
    try:
        tasks = get_task_dict([spec.task], manager)
    except Exception as e:  # noqa: BLE001 - lm-eval raises many types for unknown tasks and unreadable data
        raise ConfigError(
            f"eval benchmark {spec.name!r}: lm-eval task {spec.task!r} could not be loaded: {type(e).__name__}: {e}. "
            "Check the task name (lm-eval --tasks list) or its YAML in include_path; offline, its data must be local"
        ) from None
    if spec.task not in tasks:
        raise ConfigError(f"eval benchmark {spec.name!r}: {spec.task!r} is a group of lm-eval tasks; name one task")
    return tasks[spec.task], manager


def _docs(task) -> list[Any]:
    for kind in ("test", "validation"):
        if getattr(task, f"has_{kind}_docs")():
            return list(getattr(task, f"{kind}_docs")())
    raise ConfigError(f"lm-eval task {task.config.task!r} has neither test nor validation documents")


def items(spec: BenchmarkSpec) -> list[dict[str, Any]]:
    """The task's documents as benchmark items (``id`` = ``<task>-<doc index>``, the prompt lm-eval builds, its
    target), the first ``size`` of them: the same documents lm-eval scores with ``limit``."""
    task, _ = _task(spec)
    docs = _docs(task)[: spec.n_items]
    return [
        {"id": f"{spec.task}-{i}", "question": str(task.doc_to_text(d)), "answer": str(task.doc_to_target(d))}
        for i, d in enumerate(docs)
    ]


def score(cfg: Config, spec: BenchmarkSpec, model_path: str, n_items: int, device: str) -> dict[str, float]:
    """Run lm-eval on ``model_path`` for the benchmark's task; return ``{item id: per-sample metric}``."""
    lm_eval, _ = _lm_eval()
    _, manager = _task(spec)
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={
            "pretrained": model_path,
            "dtype": "float32" if device == "cpu" else "auto",
            "trust_remote_code": cfg.model.trust_remote_code,
        },
        tasks=[spec.task],
        num_fewshot=spec.num_fewshot,
        limit=n_items,
        bootstrap_iters=0,  # the report computes its own intervals from the per-sample scores
        batch_size=cfg.eval.batch_size,
        device=device,
        log_samples=True,
        task_manager=manager,
        random_seed=spec.seed,
        numpy_random_seed=spec.seed,
        torch_random_seed=spec.seed,
        fewshot_random_seed=spec.seed,
    )
    samples = (results or {}).get("samples", {}).get(spec.task, [])
    out = {}
    for s in samples:
        if spec.metric not in s:
            raise ConfigError(
                f"eval benchmark {spec.name!r}: lm-eval task {spec.task!r} has no per-sample metric {spec.metric!r} "
                f"(it has {sorted(k for k in s if isinstance(s[k], int | float))}); set metric"
            )
        out[f"{spec.task}-{s['doc_id']}"] = float(s[spec.metric])
    return out
