"""What the Prefect run log shows of a stage's output: thinned progress, levels, the cause of a failure."""

from __future__ import annotations

import logging
import sys

import pytest

from pipeline.flows import ProgressThrottle, StageFailed, log_level, run_child


def test_progress_bar_redraws_become_one_line_per_tenth():
    t = ProgressThrottle()
    kept = [t.keep(f" {i}/40 [00:{i:02d}<01:00,  5.75s/it]") for i in range(41)]
    lines = [k for k in kept if k]
    assert len(lines) == 11 and lines[0].startswith("progress 0/40 (0%)") and lines[-1].startswith("progress 40/40")
    assert t.keep("{'loss': '0.25', 'epoch': '0.5'}") == "{'loss': '0.25', 'epoch': '0.5'}"  # other lines untouched


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("error: data.path x does not exist", logging.ERROR),
        ("Traceback (most recent call last):", logging.ERROR),
        ("2026-12-01 10:00:00,000 WARNING stages.sft: memory", logging.WARNING),
        ("2026-12-01 10:00:00,000 INFO stages.sft: done", logging.INFO),
    ],
)
def test_levels(line, level):
    assert log_level(line) == level


def test_a_failed_stage_names_its_cause_first(monkeypatch):
    class Quiet:
        def log(self, *a, **k):
            pass

        info = log

    monkeypatch.setattr("pipeline.flows.get_run_logger", lambda: Quiet())
    code = "import sys; print('working'); print('error: sft.rpsft.lambda must be >= 0', file=sys.stderr); sys.exit(2)"
    with pytest.raises(StageFailed) as err:
        run_child([sys.executable, "-c", code], "sft[rpsft]")
    first = str(err.value).splitlines()[0]
    assert first == "stage sft[rpsft] failed (exit 2, bad input): sft.rpsft.lambda must be >= 0"


def test_stage_progress_lines_drive_one_progress_artifact(monkeypatch):
    import pipeline.flows as flows

    calls = []
    monkeypatch.setattr(flows, "create_progress_artifact", lambda **k: calls.append(("create", k)) or "art-1")
    monkeypatch.setattr(flows, "update_progress_artifact", lambda a, **k: calls.append(("update", a, k)))
    p = flows.StageProgress("sft[rpsft]")
    for line in ["sft2rl-progress 1/80 optimizer steps", "sft2rl-progress 1/80 optimizer steps", "sft2rl-progress x"]:
        p.update(line)
    p.update("sft2rl-progress 80/80 optimizer steps")
    assert calls[0] == ("create", {"progress": 1.0, "description": "sft[rpsft]: 1/80 optimizer steps"})
    assert calls[1:] == [("update", "art-1", {"progress": 100.0, "description": "sft[rpsft]: 80/80 optimizer steps"})]


def test_a_stage_prints_progress_lines_the_flow_reads(capsys, monkeypatch):
    from stages.io import PROGRESS_ENV, PROGRESS_MARK, report_progress

    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    report_progress(3, 8, "models evaluated")
    assert capsys.readouterr().out == ""  # by hand: no extra lines
    monkeypatch.setenv(PROGRESS_ENV, "1")  # as the flows run it
    report_progress(3, 8, "models evaluated")
    assert capsys.readouterr().out == f"{PROGRESS_MARK} 3/8 models evaluated\n"


def test_an_error_glued_to_a_progress_bar_is_still_the_stage_error():
    from pipeline.flows import split_glued

    glued = " 74%|███████▍  | 59/80 [03:39<01:09,  3.30s/it]error: not enough disk for the trainer checkpoint"
    bar, err = split_glued(glued)
    assert bar.endswith("3.30s/it]") and err == "error: not enough disk for the trainer checkpoint"
    assert split_glued("error: data.path x does not exist") == ["error: data.path x does not exist"]
    assert split_glued("a line about error: handling") == ["a line about error: handling"]  # no bar before it
