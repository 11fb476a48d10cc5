"""How a command that imports the ML stack (torch, transformers, TRL, vLLM) starts and exits.

Python's cyclic garbage collector walks every tracked object on each full collection. Importing the stack creates
about 540,000 of them (modules, classes, functions: alive until exit), and the interpreter collects again and again
while they are being created and once more, several times over, while it shuts down. Measured on 2 cores
(``benchmarks/results/process_start.json``, written by ``benchmarks/process_start.py``): that is seconds per stage
process, paid by every stage a flow starts, every retry and every test that runs a stage. So a command's module
pauses the collector for its imports (:func:`pause_collector`, the first lines of the module), and its ``main``
moves what the imports made out of the collector's view and resumes it (:func:`imports_done`); at exit the
collector skips what is alive then, which the process is about to free anyway. Files, logs and checkpoints are
closed explicitly by the stages (``with`` blocks, ``logging.shutdown``), never by a collector's finalizer.

Imported as a library (tests, notebooks, the flows), a module is not ``__main__`` and nothing here changes.
"""

from __future__ import annotations

import atexit
import gc

_paused = False


def pause_collector(module_name: str) -> None:
    """Called with ``__name__`` at the top of a command's module, before its heavy imports: when the module runs as
    the program (``python -m stages.sft``, ``python benchmarks/x.py``), no cyclic collection while it imports."""
    global _paused
    if module_name == "__main__" and gc.isenabled():
        gc.disable()
        _paused = True


def imports_done() -> None:
    """At the start of the command's ``main``: what the imports made is moved to the collector's permanent
    generation (``gc.freeze``: never walked again, still freed by reference counting), collection resumes for what
    the run makes, and at exit the last collections are skipped. Does nothing unless :func:`pause_collector`
    paused the collector in this process."""
    global _paused
    if not _paused:
        return
    _paused = False
    gc.freeze()
    gc.enable()
    atexit.register(gc.freeze)  # registered first, so it runs last: after the other exit handlers
