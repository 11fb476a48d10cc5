"""The run folder mirrored to shared storage: what travels, in which order, and what is not copied twice."""

from __future__ import annotations

import json

import pytest

from pipeline import shared_store
from pipeline.shared_store import StoreError, pull, push


def _run(tmp_path, name="mach-a"):
    run = tmp_path / name / "tiny"
    (run / "sft" / "checkpoint").mkdir(parents=True)
    (run / "sft" / "checkpoint" / "model.safetensors").write_bytes(b"w" * 100)
    (run / "sft" / "metrics.json").write_text(json.dumps({"steps": 2}))
    (run / "sft" / "DONE").write_text("")
    (run / "sft" / "trainer" / "checkpoint-2").mkdir(parents=True)
    (run / "sft" / "trainer" / "checkpoint-2" / "optimizer.pt").write_bytes(b"o" * 10)
    (run / "sft" / ".lock").write_text("123")
    (run / ".flow.lock").write_text("123")
    return run


def test_push_then_pull_gives_another_machine_the_run_without_resume_state_or_locks(tmp_path):
    url = f"file://{tmp_path / 'store'}"
    a = _run(tmp_path)
    assert push(url, a, "tiny") == 3  # checkpoint, metrics, DONE; not trainer/ or the locks
    files = (tmp_path / "store").rglob("*")
    stored = sorted(p.relative_to(tmp_path / "store").as_posix() for p in files if p.is_file())
    assert stored == ["tiny/sft/DONE", "tiny/sft/checkpoint/model.safetensors", "tiny/sft/metrics.json"]
    b = tmp_path / "mach-b" / "tiny"
    assert pull(url, b, "tiny") == 3
    assert (b / "sft" / "checkpoint" / "model.safetensors").read_bytes() == b"w" * 100
    assert not (b / "sft" / "trainer").exists() and not (b / "sft" / ".lock").exists()
    # nothing is copied twice: not on a second pull, and a pulled file is not pushed back
    assert pull(url, b, "tiny") == 0 and push(url, b, "tiny") == 0 and push(url, a, "tiny") == 0
    # a file rewritten on one machine travels again, and only it
    (b / "sft" / "metrics.json").write_text(json.dumps({"steps": 3, "more": True}))
    (b / "eval").mkdir()
    (b / "eval" / "scores.json").write_text("{}")
    assert push(url, b, "tiny") == 2
    assert pull(url, a, "tiny") == 2 and json.loads((a / "sft" / "metrics.json").read_text())["steps"] == 3
    assert not list(tmp_path.rglob("*.tmp"))  # copies land under temporary names and are renamed


def test_completion_markers_travel_last():
    order = shared_store._done_last(["a/DONE", "a/checkpoint/model.safetensors", "b/DONE", "a/metrics.json"])
    assert order[-2:] == ["a/DONE", "b/DONE"]


def test_a_run_the_store_does_not_have_pulls_nothing(tmp_path):
    assert pull(f"file://{tmp_path / 'store'}", tmp_path / "here" / "tiny", "tiny") == 0


def test_an_unknown_protocol_names_the_store(tmp_path):
    with pytest.raises(StoreError, match="nosuchproto://x"):
        push("nosuchproto://x", _run(tmp_path), "tiny")


def test_a_store_that_cannot_be_written_names_it(tmp_path):
    blocked = tmp_path / "store"
    blocked.write_text("a file where the store's folder should be")
    with pytest.raises(StoreError, match="could not write tiny"):
        push(f"file://{blocked}", _run(tmp_path), "tiny")
