"""The RL stage (GRPO, hf backend) on the tiny model: real TRL trainer, every parameter moves, metrics per step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from stages.config import ConfigError
from stages.rewards import REWARDS, register
from stages.rl import rl_prompts
from stages.rl import run as rl_run
from stages.sft import run as sft_run

if "digit_share" not in REWARDS:

    @register("digit_share")
    def digit_share(completions, **_):
        """Share of digits in the completion: varies between samples of a random model (a learning signal)."""
        texts = [c if isinstance(c, str) else "".join(m["content"] for m in c) for c in completions]
        return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


@pytest.fixture
def sft_checkpoint(tiny_cfg):
    cfg = tiny_cfg("sft.training.max_steps=2")
    sft_run(cfg)
    return cfg.arm_dir / "checkpoint"


def test_grpo_hf_trains_every_parameter_and_logs_each_step(tiny_cfg, sft_checkpoint):
    cfg = tiny_cfg(f"rl.init={sft_checkpoint}", "rl.rewards=[digit_share, math_correct]", "rl.training.max_steps=3")
    summary = rl_run(cfg)
    arm = cfg.run_dir / "rl-sft"
    assert summary["arm"] == "rl-sft" and summary["steps"] == 3 and (arm / "DONE").is_file()
    rows = [json.loads(line) for line in (arm / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in (
        "reward",
        "reward_std",
        "kl",
        "completions/mean_length",
        "frac_reward_zero_std",
        "step_time_s",
        "rewards/math_correct/mean",
        "clip_ratio/region_mean",
    ):
        assert key in rows[0], key
    assert rows[0]["frac_reward_zero_std"] < 1.0  # the groups carried a learning signal
    card = (arm / "checkpoint" / "README.md").read_text()
    assert "## sft2rl" in card and "**method**: grpo (RL)" in card and "digit_share, math_correct" in card
    before = AutoModelForCausalLM.from_pretrained(sft_checkpoint)
    after = AutoModelForCausalLM.from_pretrained(arm / "checkpoint")
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    unchanged = [n for n in b if torch.equal(b[n], a[n])]
    assert not unchanged, unchanged


def test_prompts_are_disjoint_from_sft_data_and_identical_for_every_init(tiny_cfg):
    from stages.data import build_items

    cfg = tiny_cfg()
    prompts = rl_prompts(cfg)
    assert len(prompts) == cfg.rl.num_prompts
    assert not {p["question"] for p in prompts} & {x["question"] for x in build_items(cfg.data)}
    assert rl_prompts(tiny_cfg("rl.init=/somewhere/else")) == prompts


def test_bad_rl_input_fails_before_generation(tiny_cfg, tmp_path, sft_checkpoint):
    with pytest.raises(ConfigError, match="does not exist"):
        rl_run(tiny_cfg(f"rl.init={tmp_path / 'missing'}"))
    with pytest.raises(ConfigError, match="not a multiple of rl.generation.num_generations"):
        tiny_cfg("rl.training.per_device_train_batch_size=6")
    with pytest.raises(ConfigError, match="unknown rewards"):
        tiny_cfg("rl.rewards=[os.system]")
    # A chat template whose assistant turns do not end with the EOS token.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sft_checkpoint)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    bad = tmp_path / "bad-eos"
    AutoModelForCausalLM.from_pretrained(sft_checkpoint).save_pretrained(bad)
    tok.save_pretrained(bad)
    with pytest.raises(ConfigError, match="EOS token"):
        rl_run(tiny_cfg(f"rl.init={bad}", "rl.arm=rl-bad"))
    assert not (tmp_path / "runs" / "tiny" / "bad").exists()


def test_ppo_trains_policy_and_value_head(tiny_cfg, sft_checkpoint):
    from safetensors.torch import load_file

    cfg = tiny_cfg(
        "rl.algorithm=ppo",
        f"rl.init={sft_checkpoint}",
        "rl.arm=rl-ppo",
        "rl.rewards=[digit_share]",
        "rl.training.max_steps=3",
        "rl.training.learning_rate=1e-3",
    )
    summary = rl_run(cfg)
    arm = cfg.run_dir / "rl-ppo"
    assert summary["algorithm"] == "ppo" and summary["steps"] == 3 and (arm / "DONE").is_file()
    rows = [json.loads(line) for line in (arm / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in (
        "reward",
        "kl",
        "value_loss",
        "clip_ratio/region_mean",
        "timing/generation_s",
        "timing/training_s",
        "step_time_s",
        "loss",
        "completions/mean_length",
        "rewards/digit_share/mean",  # GRPO's names: the report reads both alike
    ):
        assert key in rows[0], key
    assert rows[0]["rewards/digit_share/mean"] == pytest.approx(rows[0]["reward"])  # the one reward, weight 1
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the policy starts at the reference
    assert rows[-1]["kl"] != 0.0
    card = (arm / "checkpoint" / "README.md").read_text()
    assert card.startswith("# ") and "**method**: ppo (RL)" in card  # no trainer: the sft2rl section alone
    before = dict(AutoModelForCausalLM.from_pretrained(sft_checkpoint).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(arm / "checkpoint").named_parameters())
    assert not [n for n in before if torch.equal(before[n], after[n])]
    head = load_file(arm / "value_head.safetensors")
    assert set(head) == {"weight", "bias"} and float(head["bias"].abs().sum()) > 0  # initialised at 0, trained


def test_ppo_refuses_truncated_sampling(tiny_cfg):
    # its ratios and KL are computed on the full softmax: top-p/top-k samples would come from another distribution
    for bad in ("rl.generation.top_p=0.9", "rl.generation.top_k=20"):
        with pytest.raises(ConfigError, match="set top_p=1 and top_k=0"):
            tiny_cfg("rl.algorithm=ppo", bad)
    tiny_cfg("rl.algorithm=ppo", "rl.generation.backend=vllm")  # vLLM generates for PPO as for GRPO


def test_rl_prompts_from_a_local_file_with_answers(tiny_cfg, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"problem": f"{i} + 1 = ?", "sol": str(i + 1)}) + "\n" for i in range(10)))
    cfg = tiny_cfg(
        "rl.prompt_data.source=file",
        f"rl.prompt_data.path={path}",
        "rl.prompt_data.fields.question=problem",
        "rl.prompt_data.fields.response=null",
        "rl.prompt_data.fields.answer=sol",
        "rl.num_prompts=4",
    )
    prompts = rl_prompts(cfg)
    answers = [p["answer"] for p in prompts]
    assert len(set(answers)) == 4 and set(answers) <= {str(i + 1) for i in range(10)} and prompts[0]["response"] is None
    assert answers == [p["answer"] for p in rl_prompts(cfg)]  # a seeded sample of the file, the same every time
    head = rl_prompts(
        cfg.model_copy(
            update={
                "rl": cfg.rl.model_copy(
                    update={"prompt_data": cfg.rl.prompt_data.model_copy(update={"shuffle": False})}
                )
            }
        )
    )
    assert [p["answer"] for p in head] == ["1", "2", "3", "4"]  # shuffle: false takes the first rows
    with pytest.raises(ConfigError, match="gold answers"):
        rl_prompts(
            tiny_cfg(
                *[
                    o
                    for o in (
                        "rl.prompt_data.source=file",
                        f"rl.prompt_data.path={path}",
                        "rl.prompt_data.fields.question=problem",
                        "rl.prompt_data.fields.response=null",
                        "rl.prompt_data.fields.answer=null",
                        "rl.num_prompts=4",
                    )
                ]
            )
        )


def test_auto_backend_generates_with_the_engine_measured_faster_here(tiny_cfg, cache_dir):
    """rl.generation.backend=auto and eval.backend=auto read this machine's figures (here written into the cache as
    a slow-vLLM machine would measure them) and generate with transformers; the arm's config keeps `auto`."""
    from stages import backends
    from stages.models import resolve_model

    cfg = tiny_cfg("rl.generation.backend=auto", "eval.backend=auto", "rl.training.max_steps=1", "rl.arm=rl-auto")
    model = backends.model_id(resolve_model(cfg))
    cache = Path(cache_dir) / backends.CACHE_FILE
    slow_vllm = {"hf_tokens_per_s": 100.0, "vllm_tokens_per_s": 20.0}
    cache.write_text(json.dumps({backends.cache_key(model, backends.machine()): slow_vllm}))
    try:
        summary = rl_run(cfg)
        evaluated = backends.plan(cfg, "eval", resolve_model(cfg))
        scores_only = backends.plan(cfg, "eval", resolve_model(cfg), generates=False)
    finally:
        cache.unlink()
    assert summary["backend"] == "hf" and "vLLM 20 tokens/s" in summary["backend_reason"], summary
    assert "backend: auto" in (cfg.run_dir / "rl-auto" / "config.yaml").read_text()
    assert evaluated.engine == "hf" and evaluated.requested == "auto" and "vLLM 20 tokens/s" in evaluated.reason
    assert (evaluated.device, evaluated.dtype) == ("cpu", cfg.eval.cpu_dtype) and cfg.eval.backend == "auto"
    assert scores_only.engine == "hf" and scores_only.figures is None  # nothing generates: nothing measured


def test_a_disk_too_full_for_an_rl_checkpoint_stops_with_exit_4_and_the_rerun_resumes(tiny_cfg, tmp_path, capfd):
    """Disk filling during RL: the guard before each trainer checkpoint stops the stage with exit 4 and one message,
    leaves the arm unfinished and readable, and the same command with room again completes it."""
    from stages.rl import main as rl_main
    from tests.conftest import CONFIGS

    cfg = tiny_cfg()
    args = ["--config", str(CONFIGS / "tiny.yaml"), f"runs_root={cfg.runs_root}", f"cache_dir={cfg.cache_dir}"]
    args += ["rl.training.max_steps=2", "rl.training.save_steps=1"]
    code = rl_main([*args, "disk_reserve_gb=1000000"])  # how a full disk looks to the guard
    err = capfd.readouterr().err
    arm = cfg.run_dir / "rl-base"
    assert code == 4 and "not enough disk for the trainer checkpoint" in err and "Traceback" not in err, err[-2000:]
    assert not (arm / "DONE").exists() and not list(arm.glob("trainer/*.tmp"))
    assert rl_main(args) == 0 and (arm / "DONE").is_file()
