"""A command's process holds off full garbage collections while it imports and then freezes what it imported
(stages/startup.py); imported as a library, nothing changes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from stages.stage_cli import STAGE_MODULES
from tests.conftest import REPO

# Run in a fresh interpreter: the collector's state is process-wide, and this test worker's is not a command's.
PROBE = """
import gc, json
from stages import startup
out = {"default": list(gc.get_threshold())}
startup.defer_collection("stages.sft")  # a library import
out["library"] = list(gc.get_threshold())
startup.imports_done()
out["library_frozen"] = gc.get_freeze_count()
startup.defer_collection("__main__")  # the program
out["importing"] = list(gc.get_threshold())
kept = [[i] for i in range(1000)]  # stands for what the imports made
startup.imports_done()
out["frozen"] = gc.get_freeze_count()
out["after"] = list(gc.get_threshold())
startup.imports_done()  # a second call (a second stage_main in one process) does nothing more
out["frozen_again"] = gc.get_freeze_count()
out["enabled"] = gc.isenabled()
print(json.dumps(out))
"""


def test_only_the_program_defers_full_collections_and_main_freezes_its_imports():
    from stages.startup import IMPORT_THRESHOLDS

    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["library"] == r["default"] and r["library_frozen"] == 0  # imported as a library: untouched
    assert r["importing"] == list(IMPORT_THRESHOLDS) and IMPORT_THRESHOLDS[2] > 10_000  # no full walk meanwhile
    assert r["frozen"] >= 1000 and r["after"] == r["default"] and r["enabled"]  # frozen, thresholds restored
    assert r["frozen_again"] == r["frozen"]


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_every_stage_module_defers_collection_before_its_first_import(stage):
    """Deferring only helps before the heavy imports: the call comes right after the startup import."""
    tree = ast.parse((REPO / "stages" / f"{stage}.py").read_text())
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    imports = [
        n for n in body if isinstance(n, ast.Import | ast.ImportFrom) and getattr(n, "module", None) != "__future__"
    ]
    first_import, call = imports[0], body[body.index(imports[0]) + 1]
    assert isinstance(first_import, ast.ImportFrom) and first_import.module == "stages.startup"
    assert ast.unparse(call) == "defer_collection(__name__)"
