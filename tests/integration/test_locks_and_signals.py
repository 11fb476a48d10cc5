"""The folder lock and the stage command line under races and signals: never two holders, no orphan, no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from stages.store import FolderLock, LockedError
from tests.conftest import REPO

_CONTENDER = """
import sys, time
from stages.store import FolderLock, LockedError
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time() - 0.05))  # asleep until just before the start, then spin to it
while time.time() < start:
    pass
try:
    with FolderLock(sys.argv[1]):
        print("HELD", time.time(), flush=True)
        time.sleep(0.4)
        print("RELEASED", time.time(), flush=True)
except LockedError as e:
    print("REFUSED", e, flush=True)
"""


def test_twenty_simultaneous_starts_never_give_two_holders(tmp_path):
    for batch in range(4):  # five folders at a time, two contenders each, all released at one instant
        start = time.time() + 2.0
        procs = {
            trial: [
                subprocess.Popen(
                    [sys.executable, "-c", _CONTENDER, str(tmp_path / f"arm{trial}"), str(start)],
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )
                for _ in range(2)
            ]
            for trial in range(batch * 5, batch * 5 + 5)
        }
        for trial, pair in procs.items():
            outs = [p.communicate(timeout=60)[0] for p in pair]
            held = [o for o in outs if o.startswith("HELD")]
            assert len(held) == 1, (trial, outs)  # exactly one holder, the other refused at once
            refused = next(o for o in outs if o.startswith("REFUSED"))
            assert "being written by process" in refused


def test_a_lock_is_released_when_its_holder_is_killed(tmp_path):
    folder = tmp_path / "arm"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from stages.store import FolderLock\nimport time\nwith FolderLock({str(folder)!r}):\n"
         "    print('HELD', flush=True)\n    time.sleep(60)\n"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert holder.stdout.readline().startswith("HELD")
    try:
        FolderLock(folder).__enter__()
        raise AssertionError("a live holder's lock was taken")
    except LockedError as e:
        assert str(holder.pid) in str(e)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with FolderLock(folder):  # the kernel released it with the process: no stale pid to judge
        pass


def test_sigterm_to_sft2rl_stage_stops_the_training_child_and_frees_the_arm(tmp_path, cache_dir):
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipeline.cli", "stage", "sft", "--config", "configs/tiny.yaml"]
    cmd += [f"runs_root={tmp_path}", "sft.training.max_steps=100000", "sft.training.save_steps=100000"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "tiny" / "sft" / ".lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    child = int(lock.read_text().split()[0])
    assert child != proc.pid  # the training runs in the stage's child process
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    for _ in range(100):  # the child got the signal too and is gone
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"stage child {child} outlived sft2rl stage")
    with FolderLock(tmp_path / "tiny" / "sft"):  # and the arm is free for the rerun
        pass


def test_a_disk_that_fills_during_a_stage_ends_it_with_exit_4_and_nothing_half_written(tmp_path, monkeypatch, capfd):
    """Every file a stage writes goes through one rename into place; when the disk is full there, the stage stops with
    exit 4 and one message (not a traceback), leaves no temporary file behind, and the same command resumes once
    there is room."""
    import errno

    from stages import prepare
    from tests.conftest import CONFIGS

    real, calls = os.replace, []

    def full(src, dst):
        calls.append(str(dst))
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    cache = tmp_path / "cache"
    args = ["--config", str(CONFIGS / "tiny.yaml"), f"cache_dir={cache}", f"runs_root={tmp_path / 'runs'}"]
    monkeypatch.setattr(os, "replace", full)
    code = prepare.main(args)
    err = capfd.readouterr().err
    monkeypatch.setattr(os, "replace", real)
    assert calls, "the stage wrote nothing: the disk was never full"
    assert code == 4, err
    assert "the disk filled during the stage" in err and "run the same command again" in err and "Traceback" not in err
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]
    assert not leftovers, leftovers
    assert prepare.main(args) == 0  # room again: the same command finishes


def test_a_second_evaluation_or_report_of_a_run_is_refused_while_the_first_writes(tmp_path, capfd):
    """Two evaluations (or reports) of one run folder at once, from two shells or two flow runs of the evaluate
    deployment: the second stops with exit 2 naming the first, before any work, and leaves nothing behind."""
    from stages import evaluate, report
    from tests.conftest import CONFIGS

    run = tmp_path / "runs" / "tiny"
    args = ["--config", str(CONFIGS / "tiny.yaml"), f"runs_root={tmp_path / 'runs'}"]
    for module, folder, name, words in (
        (evaluate, run / "eval", ".lock", "another evaluation of this run is in progress"),
        (report, run, ".report.lock", "another report of this run is being written"),
    ):
        with FolderLock(folder, name):
            code = module.main(args)
        err = capfd.readouterr().err
        assert code == 2 and words in err and f"is being written by process {os.getpid()}" in err, err
        assert not (folder / name).exists()
