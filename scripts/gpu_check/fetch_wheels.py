"""Download the wheels the GPU check needs that the lent GPU machine lacks (Python 3.12, x86_64 Linux; it has torch,
transformers, accelerate, peft, tensorboard and no registry), at the versions this project is tested with
(requirements/cpu.lock), into ``scripts/gpu_check/wheels/<pack>/`` (git-ignored). A device call carries at most
64 MiB with the repository, so the wheels are split into packs that each fit beside the repository's files; one call
per pack installs it (``device.sh``), the last also runs the check. Prints the calls.

    python scripts/gpu_check/fetch_wheels.py
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS = REPO / "scripts" / "gpu_check" / "wheels"
# trl and datasets (the GRPO part) and what they and the check's own imports (stages.rpsft: pydantic, xxhash) need
# beyond what the machine has.
CARRY = [
    "trl",
    "datasets",
    "pyarrow",
    "pandas",
    "dill",
    "multiprocess",
    "xxhash",
    "fsspec",
    "python-dateutil",
    "six",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",  # pydantic needs >= 4.14 (typing_extensions.Sentinel); torch accepts older ones
]
# What the RPSFT parts import (stages.config, stages.rpsft): carried in the last pack too, so the --run call works
# even on a machine that was handed back after the first call (only the GRPO part would then miss its wheels).
ESSENTIAL = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "xxhash"]
CALL_LIMIT = 64 * 2**20  # what one device call carries, repository included
MARGIN = 2 * 2**20


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path, names: list[str]) -> dict[str, str]:
    """``name -> version`` from a ``name==version`` lock file, for ``names``.

    Raises:
        SystemExit: a name the lock does not pin (the check must use tested versions only).
    """
    found = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if m:
            found[norm(m.group(1))] = m.group(2)
    missing = [n for n in names if norm(n) not in found]
    if missing:
        raise SystemExit(f"{lock} pins no version of {missing}: add them to the lock or drop them from CARRY")
    return {n: found[norm(n)] for n in names}


def plan(sizes: dict[str, int], budget: int) -> list[list[str]]:
    """Wheels into packs of at most ``budget`` bytes each (first fit, largest first).

    Raises:
        ValueError: a wheel alone is larger than the budget (it can never travel), naming it.
    """
    packs: list[tuple[int, list[str]]] = []
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        if size > budget:
            mib, cap = size / 2**20, budget / 2**20
            raise ValueError(f"{name} is {mib:.1f} MiB, more than one device call carries beside the repo ({cap:.1f})")
        for i, (used, names) in enumerate(packs):
            if used + size <= budget:
                packs[i] = (used + size, [*names, name])
                break
        else:
            packs.append((size, [name]))
    return [names for _, names in packs]


def repo_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", default=str(REPO / "requirements" / "cpu.lock"))
    args = parser.parse_args(argv)
    versions = pins(Path(args.lock), CARRY)
    staging = WHEELS / ".download"
    shutil.rmtree(WHEELS, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(staging)]
    cmd += ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
    for plat in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"):
        cmd += ["--platform", plat]
    subprocess.run([*cmd, *(f"{n}=={v}" for n, v in versions.items())], check=True)
    sizes = {p.name: p.stat().st_size for p in staging.glob("*.whl")}
    budget = CALL_LIMIT - repo_bytes() - MARGIN
    packs = plan(sizes, budget)
    manifest = {"python": "3.12", "versions": versions, "budget_bytes": budget, "packs": {}}
    for i, names in enumerate(packs):
        label = chr(ord("a") + i)
        (WHEELS / label).mkdir()
        for n in names:
            (staging / n).rename(WHEELS / label / n)
        manifest["packs"][label] = {"wheels": names, "bytes": sum(sizes[n] for n in names)}
    last = WHEELS / chr(ord("a") + len(packs) - 1)
    for n in sizes:
        if norm(n.split("-")[0]) in {norm(e) for e in ESSENTIAL} and not (last / n).exists():
            shutil.copy2(WHEELS / next(d for d in manifest["packs"] if n in manifest["packs"][d]["wheels"]) / n, last)
            manifest["packs"][last.name]["wheels"].append(n)
            manifest["packs"][last.name]["bytes"] += sizes[n]
    if manifest["packs"][last.name]["bytes"] > budget:
        raise SystemExit(f"pack {last.name} with the essential wheels is over the budget: {manifest['packs']}")
    shutil.rmtree(staging)
    (WHEELS / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total, cap = sum(sizes.values()) / 2**20, budget / 2**20
    print(f"{len(sizes)} wheels, {total:.1f} MiB, in {len(packs)} packs of <= {cap:.1f} MiB")
    print("On the lent GPU machine (the device tool's run, from the repository root), back to back:")
    for i, label in enumerate(manifest["packs"]):
        run = " --run" if i == len(packs) - 1 else ""
        print(f'  run(command="bash scripts/gpu_check/device.sh{run}", carry=["scripts/gpu_check/wheels/{label}"])')
    return 0


if __name__ == "__main__":
    sys.exit(main())
