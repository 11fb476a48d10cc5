"""How a command that imports the ML stack (torch, transformers, TRL, vLLM) starts.

Python's cyclic garbage collector walks every tracked object on each full collection. Importing the stack creates
about 540,000 of them (modules, classes, functions: alive until exit), and with Python's default thresholds the
collector walks them again and again while they are being created, then on every later full collection of the run
and, several times over, when the interpreter exits. That is seconds per stage process (figures in docs/measured.md,
from ``benchmarks/process_start.py``), paid by every stage a flow starts, every retry and every test that runs a stage.

So a command's module holds off full collections while it imports (:func:`defer_collection`, its first lines: young
objects are still collected, so the imports' short-lived cycles are freed as before), and its ``main`` moves what the
imports made to the collector's permanent generation and restores the thresholds (:func:`imports_done`). Nothing is
left out of collection but what was alive when the imports finished: the run's own objects are collected as usual.

Imported as a library (tests, notebooks, the flows), a module is not ``__main__`` and nothing here changes.
"""

from __future__ import annotations

import gc

# While importing: a young collection every 50,000 allocations (Python's default: 700), a middle one after 100 of
# those, and no full collection. Measured on 2 cores for ``import stages.rl``: as fast as switching the collector off
# (8.5 s against 8.5 s; 10.9 s with the defaults), and 0.1 MB of cyclic garbage left behind against 16 MB with it off.
IMPORT_THRESHOLDS = (50_000, 100, 1_000_000)

_saved: tuple[int, int, int] | None = None


def defer_collection(module_name: str) -> None:
    """Called with ``__name__`` at the top of a command's module, before its heavy imports: when the module runs as
    the program (``python -m stages.sft``, ``python benchmarks/x.py``), no full collection while it imports."""
    global _saved
    if module_name == "__main__" and _saved is None:
        _saved = gc.get_threshold()
        gc.set_threshold(*IMPORT_THRESHOLDS)


def imports_done() -> None:
    """At the start of the command's ``main``: what the imports made is moved to the collector's permanent
    generation (``gc.freeze``: never walked again; still freed by reference counting) and the thresholds are
    restored. Does nothing unless :func:`defer_collection` deferred collection in this process."""
    global _saved
    if _saved is None:
        return
    gc.freeze()
    gc.set_threshold(*_saved)
    _saved = None
