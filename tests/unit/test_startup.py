"""A command's process pauses the garbage collector for its imports and freezes it at exit (stages/startup.py); a
library import changes nothing."""

from __future__ import annotations

import ast
import atexit
import gc

import pytest

from stages import startup
from stages.stage_cli import STAGE_MODULES
from tests.conftest import REPO


@pytest.fixture
def collector():
    """The collector's state restored after the test, whatever it did."""
    was_enabled, frozen_before = gc.isenabled(), gc.get_freeze_count()
    yield
    startup._paused = False
    atexit.unregister(gc.freeze)
    if frozen_before == 0:  # else the worker froze its imports (tests/conftest.py): they stay frozen
        gc.unfreeze()
    gc.enable() if was_enabled else gc.disable()


def test_a_library_import_leaves_the_collector_alone(collector):
    startup.pause_collector("stages.sft")
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    startup.imports_done()  # nothing was paused: nothing frozen
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_the_program_pauses_it_and_main_freezes_the_imports_and_resumes(collector):
    startup.pause_collector("__main__")
    assert not gc.isenabled()
    kept = [object() for _ in range(10)]  # stands for what the imports made
    startup.imports_done()
    assert gc.isenabled() and gc.get_freeze_count() >= len(kept)
    startup.imports_done()  # a second call (a second stage_main in one process) does nothing more
    assert gc.isenabled()


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_every_stage_module_pauses_the_collector_before_its_first_import(stage):
    """The pause only helps before the heavy imports: the call comes right after the startup import."""
    tree = ast.parse((REPO / "stages" / f"{stage}.py").read_text())
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    imports = [
        n for n in body if isinstance(n, ast.Import | ast.ImportFrom) and getattr(n, "module", None) != "__future__"
    ]
    first_import, call = imports[0], body[body.index(imports[0]) + 1]
    assert isinstance(first_import, ast.ImportFrom) and first_import.module == "stages.startup"
    assert ast.unparse(call) == "pause_collector(__name__)"
