"""The GPU check's wheel packs: tested versions only, and every pack fits one device call."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("fetch_wheels", REPO / "scripts" / "gpu_check" / "fetch_wheels.py")
fw = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fw)


def test_every_carried_wheel_is_pinned_by_the_tested_lock():
    versions = fw.pins(REPO / "requirements" / "cpu.lock", fw.CARRY)
    assert set(versions) == set(fw.CARRY) and versions["trl"].startswith("1.16.")


def test_a_name_the_lock_does_not_pin_is_refused(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text("trl==1.16.0\n# comment\nPyYAML==6.0.4 ; python_version >= '3'\n")
    assert fw.pins(lock, ["trl", "pyyaml"]) == {"trl": "1.16.0", "pyyaml": "6.0.4"}
    with pytest.raises(SystemExit, match="datasets"):
        fw.pins(lock, ["trl", "datasets"])


def test_packs_fit_the_budget_and_an_oversized_wheel_is_named():
    mib = 2**20
    sizes = {"pyarrow.whl": 55 * mib, "pandas.whl": 12 * mib, "trl.whl": 1 * mib, "pydantic_core.whl": 2 * mib}
    packs = fw.plan(sizes, 60 * mib)
    assert sorted(n for p in packs for n in p) == sorted(sizes)
    assert all(sum(sizes[n] for n in p) <= 60 * mib for p in packs) and len(packs) == 2
    with pytest.raises(ValueError, match=r"pyarrow.whl is 55.0 MiB"):
        fw.plan(sizes, 50 * mib)
