"""Time the README's test suite as `make test` runs it (pytest-xdist workers) and write the wall time, the machine and
the slowest tests to JSON, so that the next person sees where the suite's minutes go.

    python benchmarks/suite_time.py --out benchmarks/results/test_suite.json [--workers 2] [-- extra pytest args]

The pytest run is the whole suite (tests/), each test's time read from pytest's JUnit XML. Run it on a quiet machine:
anything else running makes every figure slower."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stages.backends import machine  # noqa: E402
from stages.store import atomic_write_json  # noqa: E402


def read_junit(path: Path) -> dict:
    """Counts and per-test seconds from a JUnit XML file (pytest's ``--junitxml``)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    cases = []
    for s in suites:
        for k in counts:
            counts[k] += int(s.get(k, 0))
        for c in s.iter("testcase"):
            name = f"{c.get('classname', '')}::{c.get('name', '')}"
            cases.append({"test": name, "s": round(float(c.get("time", 0)), 2)})
    cases.sort(key=lambda c: -c["s"])
    return {**counts, "cases": cases}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (make test's TEST_WORKERS)")
    ap.add_argument("--top", type=int, default=20, help="how many of the slowest tests to record")
    ap.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments (default: the whole suite)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        if args.workers:
            cmd += ["-n", str(args.workers), "--dist", "worksteal"]
        cmd += args.pytest_args or ["tests"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=os.environ.copy())
        wall = time.perf_counter() - start
        if not junit.exists():
            print(f"error: pytest wrote no results (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode or 1
        r = read_junit(junit)
    cases = r.pop("cases")
    result = {
        "what": "wall time of the test suite as make test runs it (pytest only; ruff and setup not included)",
        "command": "python -m pytest" + (f" -n {args.workers}" if args.workers else ""),
        "workers": args.workers,
        "threads_per_worker": max(1, (os.cpu_count() or 1) // args.workers) if args.workers else None,
        "exit_code": proc.returncode,
        **r,
        "wall_s": round(wall, 1),
        "test_s_sum": round(sum(c["s"] for c in cases), 1),
        "slowest": cases[: args.top],
        "machine": machine(),
    }
    atomic_write_json(args.out, result)
    print(f"{r['tests']} tests in {wall / 60:.1f} min (exit {proc.returncode}) -> {args.out}")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
