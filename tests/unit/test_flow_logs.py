"""What the Prefect run log shows of a stage's output: thinned progress, levels, the cause of a failure."""

from __future__ import annotations

import logging
import sys

import pytest

from pipeline.runner import StageFailed, run_child
from pipeline.stage_log import ProgressThrottle, log_level


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

    monkeypatch.setattr("pipeline.runner.get_run_logger", lambda: Quiet())
    code = "import sys; print('working'); print('error: sft.rpsft.lambda must be >= 0', file=sys.stderr); sys.exit(2)"
    with pytest.raises(StageFailed) as err:
        run_child([sys.executable, "-c", code], "sft[rpsft]")
    first = str(err.value).splitlines()[0]
    assert first == "stage sft[rpsft] failed (exit 2, bad input): sft.rpsft.lambda must be >= 0"


def test_stage_progress_lines_drive_one_progress_artifact(monkeypatch):
    import pipeline.runner as flows

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
    from stages.store import PROGRESS_ENV, PROGRESS_MARK, report_progress

    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    report_progress(3, 8, "models evaluated")
    assert capsys.readouterr().out == ""  # by hand: no extra lines
    monkeypatch.setenv(PROGRESS_ENV, "1")  # as the flows run it
    report_progress(3, 8, "models evaluated")
    assert capsys.readouterr().out == f"{PROGRESS_MARK} 3/8 models evaluated\n"


def test_an_error_glued_to_a_progress_bar_is_still_the_stage_error():
    from pipeline.runner import split_glued

    glued = " 74%|███████▍  | 59/80 [03:39<01:09,  3.30s/it]error: not enough disk for the trainer checkpoint"
    bar, err = split_glued(glued)
    assert bar.endswith("3.30s/it]") and err == "error: not enough disk for the trainer checkpoint"
    assert split_glued("error: data.path x does not exist") == ["error: data.path x does not exist"]
    assert split_glued("a line about error: handling") == ["a line about error: handling"]  # no bar before it


# Lines as the default run's stages print them (SFT with RPSFT, GRPO with vLLM on the CPU), paths shortened.
SP = "/venv/lib/python3.11/site-packages"
STAGE_OUTPUT = [
    f"{SP}/trl/generation/__init__.py:22: UserWarning: TRL currently supports vLLM versions from 0.22.0 to 0.31.0. "
    "You have version 0.32.0 installed. We recommend installing a supported version to avoid compatibility issues.",
    "  if is_vllm_available():",
    f"{SP}/vllm/triton_utils/dispatcher.py:138: FutureWarning: `torch.distributed.reduce_op` is deprecated, please "
    "use `torch.distributed.ReduceOp` instead",
    '  if hasattr(value, "__dict__"):',
    f"{SP}/transformers/modeling_utils.py:3312: FutureWarning: `is_gradient_checkpointing` is deprecated and will be "
    "removed in v6. Use `is_activation_checkpointing` instead.",
    "  warnings.warn(",
    "[W1205 09:45:38.939747581 utils.cpp:68] Warning: NUMA binding: Using MEMBIND policy for memory allocation on "
    "the NUMA nodes (0). Memory allocations will be strictly bound to these NUMA nodes. (function init_cpu_memory_env)",
    "2026-12-05 09:45:36,052 INFO stages.vllm_cpu: vLLM on CPU: an eager engine in the trainer's precision",
    "2026-12-05 09:45:36,060 WARNING stages.rl: a warning of the project's own",
    "2026-12-05 09:45:30,000 INFO stages.rpsft: RPSFT anchors: cache hit anchors-v4.safetensors",
    f"{SP}/somelib/x.py:3: UserWarning: something this project has not judged",
    *(
        f"{{'loss': '1.{i:03d}', 'grad_norm': '10.82', 'learning_rate': '5e-05', 'rpsft/penalty': '0.006589', "
        f"'rpsft/block_drift_max': '0.0002854', 'entropy': '1.036', 'num_tokens': '726', 'epoch': '0.0{i}'}}"
        for i in range(1, 41)
    ),
    *(f"Map:  {p}%|#####     | {p}/100 [{p // 10:02d}:00<00:01,  1.2s/it]" for p in range(0, 101, 5)),
    *(f"Tokenizing train dataset: {p}%|###| {p}/64 [00:00<00:00, 900it/s]" for p in (0, 64)),
    " 0%|          | 0/1 [00:00<?, ?it/s]",
    "100%|##########| 1/1 [00:00<00:00, 3.1it/s]",
    "{'train_runtime': '446.1', 'train_samples_per_second': '0.717', 'train_steps_per_second': '0.179', "
    "'train_loss': '0.272', 'epoch': '0.5'}",
]


def test_a_stage_log_reads_at_its_levels_with_metrics_and_progress_thinned():
    from pipeline.stage_log import StageLog

    relay = StageLog("sft[rpsft]")
    shown = [s for s in (relay.relay(line) for line in STAGE_OUTPUT) if s is not None]
    at = {lvl: [t for l_, t in shown if l_ == lvl] for lvl in (logging.DEBUG, logging.INFO, logging.WARNING)}
    # The known-harmless third-party warnings and their echoed source lines at DEBUG; an unknown one stays a WARNING,
    # as does the project's own, without its second timestamp.
    assert at[logging.WARNING] == [
        "stages.rl: a warning of the project's own",
        f"{SP}/somelib/x.py:3: UserWarning: something this project has not judged",
    ]
    assert "stages.vllm_cpu: vLLM on CPU: an eager engine in the trainer's precision" in at[logging.INFO]
    known = ("TRL currently supports", "reduce_op", "NUMA", "is_gradient_checkpointing")
    assert sum(any(k in t for k in known) for t in at[logging.DEBUG]) == 4
    assert "  if is_vllm_available():" in at[logging.DEBUG]
    assert "stages.rpsft: RPSFT anchors: cache hit anchors-v4.safetensors" in at[logging.INFO]
    # 40 metric dicts: a compact line for the first and every 10th, plus the summary.
    train = [t for t in at[logging.INFO] if t.startswith(("train ", "training done"))]
    assert len(train) == 6 and train[0].startswith("train epoch 0.01 loss 1.001 grad_norm 10.82 learning_rate 5e-05")
    assert train[-1] == "training done: runtime 446.1 loss 0.272 steps_per_second 0.179"
    # A slow bar: a labelled line per tenth; quick bars and one-item bars only at DEBUG.
    bars = [t for t in at[logging.INFO] if t.startswith("progress")]
    assert len(bars) == 10 and bars[0].startswith("progress Map 10/100 (10%)")  # from the first 10 s on
    assert bars[-1].startswith("progress Map 100/100 (100%)")
    assert not any("1/1" in t or "Tokenizing" in t for t in at[logging.INFO])
    # Of 74 lines of output, a fifth reaches the log at INFO or above.
    assert len(at[logging.INFO] + at[logging.WARNING]) <= 0.3 * len(STAGE_OUTPUT)


def test_a_finished_stage_shows_its_own_count_not_one_of_one(monkeypatch):
    import pipeline.runner as flows

    calls = []
    monkeypatch.setattr(flows, "create_progress_artifact", lambda **k: calls.append(k) or "art-1")
    monkeypatch.setattr(flows, "update_progress_artifact", lambda a, **k: calls.append(k))
    p = flows.StageProgress("sft[rpsft]")
    p.update("sft2rl-progress 79/80 optimizer steps")
    p.finish()
    assert calls[-1] == {"progress": 100.0, "description": "sft[rpsft]: 80/80 optimizer steps (done)"}


def test_stage_task_runs_carry_stage_arm_and_seed_tags():
    from prefect.context import TagsContext

    from pipeline.runner import tagged

    with tagged("rl", "rpsft", 1):
        assert {"stage:rl", "arm:rpsft", "seed:1"} <= TagsContext.get().current_tags
    with tagged("evaluate"):
        assert TagsContext.get().current_tags == {"stage:evaluate"}


def test_artifacts_show_paths_relative_to_the_runs_folder_or_the_cache(tmp_path):
    from pipeline.artifacts import shown_path
    from stages.config import load_config
    from tests.conftest import REPO

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"runs_root={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'c'}"])
    assert shown_path(str((tmp_path / "runs" / "tiny" / "sft" / "checkpoint").resolve()), cfg) == "tiny/sft/checkpoint"
    assert shown_path(str((tmp_path / "c" / "models" / "m").resolve()), cfg) == "cache/models/m"
    assert shown_path("/elsewhere/x", cfg) == "/elsewhere/x" and shown_path("rpsft", cfg) == "rpsft"


# The in-process vLLM engine's warnings, as the evaluation stage printed them once per model in a default make run.
VLLM_EVAL_LINES = [
    "(MainProcess pid=27253) WARNING 12-07 11:21:23 [vllm.py:1703] Enforce eager set, disabling torch.compile, "
    "CUDAGraphs, and JIT kernel warmup. This is equivalent to setting -cc.mode=none -cc.cudagraph_mode=none",
    "(MainProcess pid=27253) WARNING 12-07 11:21:23 [vllm.py:1727] Inductor compilation was disabled by user "
    "settings, optimizations settings that are only active during inductor compilation will be ignored.",
    "(MainProcess pid=27253) WARNING 12-07 11:21:23 [vllm.py:725] Model Runner V2 requires Triton; using the V1 "
    "model runner instead.",
    "(MainProcess pid=27253) WARNING 12-07 11:21:23 [cpu.py:317] Reset SSM cache type to float32 for accelerated "
    "GDN mamba backend 'none'.",
    "(MainProcess pid=27253) WARNING 12-07 11:23:02 [interface.py:1457] Unknown vLLM environment variable detected: "
    "VLLM_DIST_IDENT",
    "(MainProcess pid=27253) WARNING 12-07 11:21:24 [cpu_worker.py:114] libiomp is not found in LD_PRELOAD. For best "
    "performance, please follow the section `set LD_PRELOAD` in https://docs.vllm.ai/en/latest/",
    "(MainProcess pid=27253) WARNING 12-07 11:21:24 [cpu_worker.py:114] libtcmalloc is not found in LD_PRELOAD. For "
    "best performance, please follow the section `set LD_PRELOAD` in https://docs.vllm.ai/en/latest/",
]


def test_the_evaluation_engines_known_vllm_warnings_read_at_debug_and_others_stay_warnings():
    from pipeline.stage_log import StageLog

    relay = StageLog("evaluate")
    assert [relay.relay(line)[0] for line in VLLM_EVAL_LINES] == [logging.DEBUG] * len(VLLM_EVAL_LINES)
    other = (
        "(MainProcess pid=27253) WARNING 12-07 11:23:02 [interface.py:1457] Unknown vLLM environment variable "
        "detected: VLLM_SOMETHING_ELSE"
    )
    assert relay.relay(other)[0] == logging.WARNING  # only vLLM's own variable is known
    assert relay.relay("(MainProcess pid=1) WARNING 12-07 11:21:24 [x.py:1] a new vLLM warning")[0] == logging.WARNING


def test_vllms_engine_start_chatter_and_known_triton_notes_read_at_debug():
    """vLLM's INFO lines (about ten per engine start, seven engines in a default run) and the known no-Triton notes
    go to DEBUG; vLLM's errors and the stages' own INFO lines keep their levels."""
    from pipeline.stage_log import StageLog

    relay = StageLog("evaluate")
    quiet = [
        "(MainProcess pid=27253) INFO 12-07 11:21:23 [model.py:574] Resolved architecture: LlamaForCausalLM",
        "(MainProcess pid=27253) INFO 12-07 11:21:24 [cpu_worker.py:260] Explicitly set (2.0/23.54) GiB for KV cache",
        "INFO 12-07 11:21:23 [utils.py:347] Using LBHNC KV cache layout.",
        "W1207 11:16:59.922000 26880 .venv/lib/python3.11/site-packages/torch/_library/triton.py:53] Triton not "
        "available, find_triton_kernels = []",
        "2026-12-07 11:21:22,294 INFO vllm.triton_utils.importing: Triton not installed or not compatible; certain "
        "GPU-related functions will not be available.",
    ]
    assert [relay.relay(line)[0] for line in quiet] == [logging.DEBUG] * len(quiet)
    err = "(EngineCore_DP0 pid=9) ERROR 12-07 11:21:24 [core.py:1] EngineCore failed to start."
    assert relay.relay(err)[0] == logging.ERROR
    own = "2026-12-07 11:23:02,284 INFO __main__: eval base done in 102 s: chain_sum/accuracy=0.025"
    assert relay.relay(own) == (logging.INFO, "__main__: eval base done in 102 s: chain_sum/accuracy=0.025")
