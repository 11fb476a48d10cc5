"""Experiment tracking and the TRL passthrough: a tiny SFT arm logs its curves to TensorBoard through transformers'
own integration (read back from the event file), evaluation metrics land beside them, and any field of TRL's configs
reaches the trainer while misspelt or project-owned ones are refused before training."""

from __future__ import annotations

import struct

import pytest

from stages import tracking
from stages.config import ConfigError
from stages.rl import build_grpo_config
from stages.sft import build_sft_config
from stages.sft import run as sft_run


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``folder`` (TFRecord framing, tensorboardX's protos)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    for f in files:
        data = f.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            ev = Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            for v in ev.summary.value:  # scalars only (the trainer also writes its arguments as text)
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((ev.step, v.simple_value))
                elif v.tensor.float_val:
                    out.setdefault(v.tag, []).append((ev.step, v.tensor.float_val[0]))
    return out


def test_an_sft_arm_logs_its_curves_to_tensorboard(tiny_cfg):
    cfg = tiny_cfg("sft.training.max_steps=3", "tracking.report_to=[tensorboard]", "sft.method=rpsft")
    m = sft_run(cfg)
    folder = cfg.run_dir / "tensorboard" / "rpsft"
    scalars = read_scalars(folder)
    losses = scalars["train/loss"]
    assert [s for s, _ in losses] == [1, 2, 3]
    history = {h["step"]: h["loss"] for h in m["log_history"] if "loss" in h}
    for step, value in losses:
        assert value == pytest.approx(history[step], rel=1e-5)  # the numbers the trainer logged, not others
    assert "train/rpsft/penalty" in scalars  # the method's own diagnostics too


def test_every_checkpoint_carries_a_model_card(tiny_cfg):
    cfg = tiny_cfg("sft.training.max_steps=2", "sft.method=rpsft", "sft.rpsft.lambda=3")
    m = sft_run(cfg)
    card = (cfg.arm_dir / "checkpoint" / "README.md").read_text()
    assert card.startswith("---") and "library_name: transformers" in card  # TRL's draft, hub metadata first
    assert "## sft2rl" in card and "**method**: rpsft" in card and "lambda 3.0" in card
    assert f"{m['train_loss']:.4f}" in card and "2 steps" in card


def test_evaluation_metrics_are_written_beside_the_training_curves(tiny_cfg):
    cfg = tiny_cfg("tracking.report_to=[tensorboard]")
    metrics = {"task/accuracy": {"value": 0.25, "ci_low": 0.1, "ci_high": 0.4}, "note": {"value": "text"}}
    folder = tracking.log_eval_metrics(cfg, "sft", metrics)
    assert folder == cfg.run_dir / "tensorboard" / "eval-sft"
    scalars = read_scalars(folder)
    assert scalars["eval/task/accuracy"] == [(0, pytest.approx(0.25))]
    assert scalars["eval/task/accuracy_ci_high"] == [(0, pytest.approx(0.4))]
    assert not any(k.startswith("eval/note") for k in scalars)


def test_seed_runs_are_named_and_filed_under_the_run(tiny_cfg):
    cfg = tiny_cfg("seeds=[0, 1]", "tracking.report_to=[tensorboard]").for_seed(1)
    args = tracking.trainer_args(cfg, "sft")
    main = cfg.run_dir.parent.parent
    assert args["run_name"] == f"{main.name}/seed-1/sft" and args["project"] == main.name
    assert tracking.tensorboard_dir(cfg, "sft") == main / "tensorboard" / "seed-1" / "sft"
    assert tracking.trainer_args(tiny_cfg(), "sft") == {"report_to": "none"}


def test_trl_passthrough_reaches_the_trainer_configs(tiny_cfg, tmp_path):
    cfg = tiny_cfg("sft.trl={packing: true, eval_on_start: false}", "rl.trl={log_completions: true}")
    assert build_sft_config(cfg, tmp_path / "a").packing is True
    assert build_grpo_config(cfg, tmp_path / "b").log_completions is True
    assert build_sft_config(tiny_cfg(), tmp_path / "c").packing is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sft.trl={pakcing: true}", "did you mean 'packing'"),
        ("sft.trl={learning_rate: 0.1}", "set it as sft.training.learning_rate"),
        ("sft.trl={output_dir: /tmp/x}", "the stage sets this field itself"),
        ("sft.trl={report_to: [wandb]}", "set it as tracking.report_to"),
        ("rl.trl={temperature: 0.5}", "set it as rl.generation.temperature"),
        ("rl.trl={use_vllm: true}", "set it as rl.generation.backend"),
        ("sft.trl={activation_checkpointing: true}", "set it as sft.training.gradient_checkpointing"),
        ("rl.trl={activation_checkpointing: true}", "set it as rl.training.gradient_checkpointing"),
        ("rl.trl={log_completion: true}", "did you mean 'log_completions'"),
        ("tracking.report_to=[tensorbord]", "tracking.report_to"),
        ("tracking.report_to=[none]", "empty list means no tracking"),
    ],
)
def test_misspelt_or_owned_fields_are_refused_at_load(tiny_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(override)


def test_rl_trl_with_ppo_is_refused(tiny_cfg):
    with pytest.raises(ConfigError, match="rl.algorithm=ppo use rl.ppo"):
        tiny_cfg("rl.trl={log_completions: true}", "rl.algorithm=ppo")


def test_a_missing_integration_is_named_before_training(tiny_cfg, monkeypatch):
    import transformers.integrations

    cfg = tiny_cfg("sft.training.max_steps=2", "tracking.report_to=[mlflow]")
    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: ["tensorboard"])
    with pytest.raises(ConfigError, match=r"\['mlflow'\] not installed here; install mlflow"):
        sft_run(cfg)
    assert not (cfg.arm_dir / "checkpoint").exists()


def test_a_hub_push_that_fails_keeps_the_checkpoint_and_records_why(tiny_cfg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="hub.push needs hub.repo_prefix"):
        tiny_cfg("hub.push=true")
    cfg = tiny_cfg("sft.training.max_steps=1", "hub.push=true", "hub.repo_prefix=acme/sft2rl")
    m = sft_run(cfg)
    assert (cfg.arm_dir / "DONE").is_file() and (cfg.arm_dir / "checkpoint" / "model.safetensors").is_file()
    assert m["hub"]["repo"] == "acme/sft2rl-tiny-sft" and m["hub"]["pushed"] is False and m["hub"]["error"]
