"""The SFT stage on the tiny model: every method trains, every trainable parameter changes, checkpoints reload and
generate, RPSFT's penalty and gradient behave as derived, and bad input fails before training."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from stages.config import ConfigError
from stages.sft import build_arm, run
from tests.conftest import REPO

METHODS = ["sft", "rpsft", "l2", "dft", "iw", "lora"]


class Snapshot(TrainerCallback):
    """Trainable parameters at the start and the end of training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_every_trainable_parameter_changes(tiny_cfg, method):
    cfg = tiny_cfg(f"sft.method={method}", "sft.training.max_steps=4")
    snap = Snapshot()
    metrics = run(cfg, callbacks=[snap])
    assert metrics["method"] == method and metrics["steps"] == 4
    assert snap.before.keys() == snap.after.keys() and snap.before
    if method == "lora":
        assert all("lora_" in n for n in snap.before)  # only the adapters train
    unchanged = [n for n in snap.before if torch.equal(snap.before[n], snap.after[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"

    arm = cfg.arm_dir
    for name in ("checkpoint/model.safetensors", "checkpoint/chat_template.jinja", "metrics.json", "config.yaml"):
        assert (arm / name).is_file(), name
    assert (arm / "DONE").is_file() and (arm / "checkpoint" / "DONE").is_file()
    saved = json.loads((arm / "metrics.json").read_text())
    assert saved["train_loss"] > 0 and saved["principal_angles"]

    # The checkpoint reloads (safetensors, tokenizer with chat template) and generates.
    tok = AutoTokenizer.from_pretrained(arm / "checkpoint")
    model = AutoModelForCausalLM.from_pretrained(arm / "checkpoint", use_safetensors=True)
    assert tok.chat_template
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "1 + 2 ="}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    if method == "lora":
        assert (arm / "adapter" / "adapter_config.json").is_file()
        # The merged checkpoint differs from the base model for the adapted matrices.
        base = AutoModelForCausalLM.from_pretrained(saved["base_model"])
        assert not torch.equal(
            base.model.layers[0].self_attn.q_proj.weight, model.model.layers[0].self_attn.q_proj.weight
        )


def test_rpsft_metrics_contract(tiny_cfg, caplog):
    cfg = tiny_cfg("sft.method=rpsft", "sft.training.max_steps=3", "sft.training.logging_steps=1")
    with caplog.at_level(logging.INFO, logger="stages.sft"):
        m = run(cfg)
    # the stage's last line: the penalty at three significant digits, as a user reads it in the run log
    (done,) = [r.getMessage() for r in caplog.records if " done: 3 steps" in r.getMessage()]
    assert f"penalty {m['penalty_at_start']:.3g} -> {m['penalty_at_end']:.3g}; checkpoint" in done
    # 2 layers x 7 projections + untied embedding + lm_head; biases and norms are 1-D and never regularised.
    assert m["regularized_matrices"] == 16 and m["full_rank_matrices"] == 0
    assert m["penalty_at_start"] == 0.0 and m["penalty_at_end"] > 0
    angles = m["principal_angles"]["model.layers.0.self_attn.q_proj.weight"]
    assert angles["k"] == 32 and angles["principal_angle_left_mean_deg"] >= 0
    logged = [h for h in m["log_history"] if "rpsft/penalty" in h]
    assert len(logged) == 3 and logged[0]["rpsft/penalty_before_step"] == 0.0
    # Logged after the optimizer step: step t's penalty is that of the weights step t+1 starts from (no lag), and the
    # weighted penalty is lambda * R, the term the loss adds.
    for now, nxt in zip(logged, logged[1:], strict=False):
        assert now["rpsft/penalty"] > 0 and now["rpsft/penalty"] == pytest.approx(nxt["rpsft/penalty_before_step"])
    assert all(h["rpsft/weighted_penalty"] == pytest.approx(1.0 * h["rpsft/penalty"]) for h in logged)
    assert logged[-1]["rpsft/penalty"] == pytest.approx(m["penalty_at_end"])


def test_rerun_skips_a_complete_arm(tiny_cfg):
    cfg = tiny_cfg("sft.training.max_steps=2")
    first = run(cfg)
    stamp = (cfg.arm_dir / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    again = run(cfg)
    assert again == json.loads((cfg.arm_dir / "metrics.json").read_text()) and again["steps"] == first["steps"]
    assert (cfg.arm_dir / "checkpoint" / "model.safetensors").stat().st_mtime_ns == stamp
    # --force trains again from scratch (it does not resume from the old trainer checkpoints).
    forced = run(cfg, force=True)
    assert [h["step"] for h in forced["log_history"]] == [1, 2]
    assert (cfg.arm_dir / "checkpoint" / "model.safetensors").stat().st_mtime_ns != stamp


def test_loss_covers_response_tokens_only(tiny_cfg):
    arm = build_arm(tiny_cfg("sft.training.max_steps=1"))
    row = arm.trainer.train_dataset[0]
    ids, mask = row["input_ids"], [label != -100 for label in row["labels"]]
    completion = arm.tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    prompt = arm.tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    item = arm.items[0]
    assert completion.startswith(item["response"]) and "<|im_end|>" in completion
    assert item["question"] in prompt and item["response"] not in prompt
    assert prompt.startswith("<|im_start|>system\n")  # the model's chat template was applied


class GradAtStep(TrainerCallback):
    """Gradients just before the optimizer step number ``step`` (1-based)."""

    def __init__(self, step: int):
        self.step, self.grads = step, None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("ga", [1, 4])
def test_once_per_step_penalty_gradient_equals_the_per_micro_batch_form(tiny_cfg, ga, monkeypatch):
    common = [
        f"sft.training.gradient_accumulation_steps={ga}",
        f"sft.training.per_device_train_batch_size={4 // ga}",
        "sft.training.max_steps=2",
        "sft.training.max_grad_norm=0",  # compare raw gradients
        "sft.training.learning_rate=1e-2",
        "sft.rpsft.lambda=10",
    ]
    import stages.rpsft as rpsft_mod

    grads = {}
    for mode in ("per_step", "per_micro_batch"):
        cb = GradAtStep(2)  # at step 1 W = W0, so the penalty gradient is zero; step 2 sees it
        arm = build_arm(tiny_cfg("sft.method=rpsft", f"sft.rpsft.mode={mode}", *common), callbacks=[cb])
        if mode == "per_step":
            # one block product per matrix and optimizer step, whatever the accumulation: the first step's gradient,
            # then after each step the one the log and the next step's gradient share
            blocks, real = [], rpsft_mod.partial_deviation

            def counted(*a, _real=real, _blocks=blocks, **k):
                _blocks.append(1)
                return _real(*a, **k)

            monkeypatch.setattr(rpsft_mod, "partial_deviation", counted)
        arm.trainer.train()
        if mode == "per_step":
            monkeypatch.undo()
            assert len(blocks) == arm.regularizer.count * (1 + 2), (ga, len(blocks))
        grads[mode] = cb.grads
    cb = GradAtStep(2)
    arm_sft = build_arm(tiny_cfg("sft.method=sft", *common), callbacks=[cb])
    arm_sft.trainer.train()
    grads["sft"] = cb.grads

    assert grads["per_step"].keys() == grads["per_micro_batch"].keys()
    penalty_part = 0.0
    for name, g in grads["per_step"].items():
        assert torch.allclose(g, grads["per_micro_batch"][name], rtol=1e-4, atol=1e-6), name
        penalty_part = max(penalty_part, float((g - grads["sft"][name]).abs().max()))
    # The weights after step 1 are identical in all three runs (the penalty gradient is 0 at W0), so the
    # difference to plain SFT at step 2 is the penalty gradient itself: clearly non-zero.
    assert penalty_part > 1e-3


def test_bad_input_fails_before_training(tiny_cfg, tmp_path):
    # A model folder that does not exist.
    with pytest.raises(ConfigError, match="does not exist"):
        run(tiny_cfg("model.source=local", f"model.path={tmp_path / 'nope'}"))
    # A model without a chat template.
    arm = build_arm(tiny_cfg("sft.training.max_steps=1"))
    folder = tmp_path / "no-template"
    arm.trainer.model.save_pretrained(folder)
    arm.tokenizer.chat_template = None
    arm.tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="no chat template"):
        run(tiny_cfg("model.source=local", f"model.path={folder}", "run_name=nt"))
    # A folder with pickle weights only is refused.
    pick = tmp_path / "pickle"
    pick.mkdir()
    (pick / "config.json").write_text("{}")
    (pick / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConfigError, match="pickle weights"):
        run(tiny_cfg("model.source=local", f"model.path={pick}", "run_name=pk"))
    # A dataset missing the mapped fields, and an empty one.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "answer": "1"}\n')
    with pytest.raises(ConfigError, match="'question' is missing"):
        run(tiny_cfg("data.source=file", f"data.path={bad}", "run_name=bd"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        run(tiny_cfg("data.source=file", f"data.path={empty}", "run_name=em"))
    runs = tmp_path / "runs"
    assert not any(runs.glob("*/*/checkpoint")), "nothing is trained on bad input"


def test_cli_reports_bad_input_with_exit_code_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "stage", "sft", "--config", "configs/tiny.yaml", "sft.rpsft.lambda=-1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "sft.rpsft.lambda" in proc.stderr and "greater than or equal to 0" in proc.stderr


def test_cli_prepare_and_stage_run_on_the_tiny_config(tmp_path, cache_dir):
    env = {**os.environ, "SFT2RL_CACHE_DIR": str(cache_dir)}
    cli = [sys.executable, "-m", "pipeline.cli"]
    for args in (["prepare", "--config", "configs/tiny.yaml"], ["stage", "sft", "--config", "configs/tiny.yaml"]):
        proc = subprocess.run(
            [*cli, *args, f"runs_root={tmp_path}", "max_steps=1"]
            if "sft" in args
            else [*cli, *args, f"runs_root={tmp_path}"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    rl = [*cli, "stage", "rl", "--config", "configs/tiny.yaml", f"runs_root={tmp_path}", "max_steps=1"]
    rl.append(f"init={tmp_path / 'tiny' / 'sft' / 'checkpoint'}")
    proc = subprocess.run(rl, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "tiny" / "rl-sft" / "metrics.json").read_text())["steps"] == 1
    assert json.loads((tmp_path / "tiny" / "prepare" / "result.json").read_text())["model_type"] == "llama"
    assert json.loads((tmp_path / "tiny" / "sft" / "metrics.json").read_text())["steps"] == 1
    helped = subprocess.run([*cli, "prepare", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--config" in helped.stdout


def test_a_second_writer_of_the_same_arm_is_refused(tiny_cfg):
    import subprocess as sp

    from stages.store import FolderLock

    cfg = tiny_cfg("sft.training.max_steps=1")
    code = f"from stages.store import FolderLock\nimport time\nwith FolderLock({str(cfg.arm_dir)!r}):\n"
    code += "    print('HELD', flush=True)\n    time.sleep(60)\n"
    holder = sp.Popen([sys.executable, "-c", code], cwd=REPO, stdout=sp.PIPE, text=True)
    try:
        assert holder.stdout.readline().startswith("HELD")  # a live process holds the arm
        with pytest.raises(ConfigError, match=f"being written by process {holder.pid}"):
            run(cfg)
        assert not (cfg.arm_dir / "checkpoint").exists()
    finally:
        holder.kill()
        holder.wait()
    # Its owner is gone (killed: the kernel released its lock, the file with its pid is left behind): the run
    # completes and removes the lock file at the end.
    assert (cfg.arm_dir / ".lock").exists()
    assert run(cfg)["steps"] == 1 and not (cfg.arm_dir / ".lock").exists()
    # Two different run names never share a folder or a lock.
    other = tiny_cfg("sft.training.max_steps=1", "run_name=other")
    with FolderLock(cfg.arm_dir):
        assert run(other)["steps"] == 1


@pytest.mark.parametrize("tied", [True, False])
def test_lora_merged_checkpoint_is_the_trained_model_with_tied_embeddings_too(tiny_cfg, tied):
    """The merged checkpoint computes what the trained adapter model computes (KL < 1e-6), tied head included: LoRA
    adapts the embedding lookup, never the tied head, so the head must keep the pretrained matrix."""
    from peft import PeftModel

    cfg = tiny_cfg(
        "sft.method=lora",
        f"model.tiny.tie_word_embeddings={str(tied).lower()}",
        f"run_name=lora-tied-{tied}",
        "sft.training.max_steps=4",
        "sft.training.learning_rate=5e-3",
    )
    metrics = run(cfg)
    base_path = metrics["base_model"]
    base = AutoModelForCausalLM.from_pretrained(base_path)
    assert base.config.tie_word_embeddings is tied
    trained = PeftModel.from_pretrained(base, cfg.arm_dir / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(cfg.arm_dir / "checkpoint", use_safetensors=True).eval()
    ids = torch.randint(3, merged.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lp_trained = torch.log_softmax(trained(input_ids=ids).logits.double(), -1)
        lp_merged = torch.log_softmax(merged(input_ids=ids).logits.double(), -1)
    kl = (lp_trained.exp() * (lp_trained - lp_merged)).sum(-1).mean().item()
    assert kl < 1e-6, kl
    pretrained = AutoModelForCausalLM.from_pretrained(base_path)
    emb0 = pretrained.get_input_embeddings().weight
    assert not torch.equal(merged.get_input_embeddings().weight, emb0)  # the lookup was adapted
    if tied:
        assert torch.equal(merged.get_output_embeddings().weight, emb0)  # the head was not
        assert merged.config.tie_word_embeddings is False


def test_baselines_at_matched_strength(tiny_cfg):
    """LoRA trains at its own rate (10x by default); IW weights are self-normalised over the batch (mean 1)."""
    from stages.sft import build_sft_config

    cfg = tiny_cfg("sft.method=lora")
    assert build_sft_config(cfg, "/tmp/x").learning_rate == pytest.approx(10 * cfg.sft.training.learning_rate)
    cfg = tiny_cfg("sft.method=lora", "sft.lora.learning_rate=3e-4")
    assert build_sft_config(cfg, "/tmp/x").learning_rate == pytest.approx(3e-4)
    assert build_sft_config(tiny_cfg("sft.method=sft"), "/tmp/x").learning_rate == pytest.approx(1e-3)
    m = run(tiny_cfg("sft.method=iw", "sft.training.max_steps=2", "sft.training.logging_steps=1"))
    weights = [h["iw/weight_mean"] for h in m["log_history"] if "iw/weight_mean" in h]
    assert weights and all(w == pytest.approx(1.0, abs=1e-5) for w in weights)
