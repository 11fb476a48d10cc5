"""Config schema and loader: every shipped config loads and builds TRL's real config objects; bad input is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.config import Config, ConfigError, apply_overrides, dump_config, load_config
from tests.conftest import CONFIGS

SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.name for p in SHIPPED}
    assert {"tiny.yaml", "smollm2-cpu.yaml", "qwen2.5-7b-paper.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_builds_trl_objects(path: Path, tmp_path):
    from trl import SFTConfig

    from stages.sft import build_sft_config

    text = path.read_text()
    assert text.startswith("#"), "each config starts with a comment: what it is for, what it needs, how to run it"
    import torch

    # GPU configs name device=cuda; on a machine without one, the same config is built for the CPU.
    cfg = load_config(path, [] if torch.cuda.is_available() else ["device=cpu"])
    for method in ("sft", "rpsft", "dft"):
        c = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"method": method})})
        args = build_sft_config(c, tmp_path / method)
        assert isinstance(args, SFTConfig)
        assert args.learning_rate == cfg.sft.training.learning_rate
        assert args.gradient_accumulation_steps == cfg.sft.training.gradient_accumulation_steps
        assert args.loss_type == ("dft" if method == "dft" else "nll")
        assert args.completion_only_loss is True
    from trl import GRPOConfig

    from stages.rl import build_grpo_config

    grpo = build_grpo_config(cfg, tmp_path / "rl")
    assert isinstance(grpo, GRPOConfig)
    assert grpo.num_generations == cfg.rl.generation.num_generations and grpo.beta == cfg.rl.training.beta
    assert grpo.use_vllm == (cfg.rl.generation.backend == "vllm") and grpo.loss_type == cfg.rl.training.loss_type


def test_paper_config_matches_the_recipe():
    cfg = load_config(CONFIGS / "qwen2.5-7b-paper.yaml")
    t = cfg.sft.training
    # RPSFT.md: bf16, global batch 16, lr 1e-6, 3% warm-up then constant, AdamW (0.9, 0.98), eps 1e-7, wd 0, clip 1.
    assert t.bf16 and t.learning_rate == 1e-6 and t.warmup_steps == 0.03
    assert t.per_device_train_batch_size * t.gradient_accumulation_steps == 16
    assert (t.adam_beta1, t.adam_beta2, t.adam_epsilon, t.weight_decay, t.max_grad_norm) == (0.9, 0.98, 1e-7, 0, 1)
    assert t.num_train_epochs == 12 and t.max_steps == -1
    assert cfg.sft.rpsft.k == 768 and cfg.sft.rpsft.lam == 1.0
    assert cfg.model.source == "hub" and cfg.data.source == "hub" and "OpenR1-Math" in cfg.data.path
    # RL: n = 8, 128 prompts per step on 8 GPUs, clip 0.2 / 0.28, no KL, token-mean, lr 1e-6, 10 warm-up steps,
    # weight decay 0.1, 100 steps, responses up to 10,240 tokens, DAPO-Math-17k prompts.
    rl = cfg.rl
    per_step = 8 * rl.training.per_device_train_batch_size * rl.training.gradient_accumulation_steps
    assert rl.generation.num_generations == 8 and per_step // 8 == 128
    assert (rl.training.epsilon, rl.training.epsilon_high, rl.training.beta) == (0.2, 0.28, 0.0)
    assert rl.training.loss_type == "dapo" and rl.training.learning_rate == 1e-6 and rl.training.warmup_steps == 10
    assert rl.training.weight_decay == 0.1 and rl.training.max_steps == 100
    assert rl.generation.max_completion_length == 10240 and "DAPO-Math-17k" in rl.prompt_data.path


def test_overrides_types_and_alias():
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        [
            "sft.rpsft.lambda=0.5",
            "sft.training.learning_rate=2e-4",
            "sft.method=rpsft",
            "data.holdout_source_ids=[1,2]",
        ],
    )
    assert cfg.sft.rpsft.lam == 0.5
    assert cfg.sft.training.learning_rate == 2e-4
    assert cfg.sft.method == "rpsft"
    assert cfg.data.holdout_source_ids == [1, 2]
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_dump_roundtrip(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", ["sft.rpsft.lambda=0.25"])
    out = tmp_path / "resolved.yaml"
    out.write_text(dump_config(cfg))
    again = load_config(out)
    assert again == cfg
    assert "lambda: 0.25" in out.read_text()


BAD = [
    # (overrides, file text or None, words the message must contain)
    (["sft.trainig.max_steps=3"], None, ["sft.trainig", "unknown key"]),
    (["sft.rpsft.k=0", "sft.rpsft.k_fraction=null"], None, ["sft.rpsft.k", "positive"]),
    (["sft.rpsft.k=-3", "sft.rpsft.k_fraction=null"], None, ["sft.rpsft.k"]),
    (["sft.rpsft.k_fraction=1.5"], None, ["k_fraction", "(0, 1]"]),
    (["sft.rpsft.k=8"], None, ["exactly one of", "k_fraction"]),
    (["sft.rpsft.lambda=-1"], None, ["sft.rpsft.lambda", "greater than or equal to 0"]),
    (["sft.training.learning_rate=abc"], None, ["sft.training.learning_rate"]),
    (["sft.training.max_steps=0"], None, ["max_steps"]),
    (["sft.method=ppo"], None, ["sft.method"]),
    (["model.source=local"], None, ["model.path is required"]),
    (["run_name=../escape"], None, ["run_name", "plain folder name"]),
    (["data.source=file"], None, ["data.path is required"]),
    (["data.tasks=[]"], None, ["data.tasks is empty"]),
    (["model.tiny.hidden_size=60", "model.tiny.num_attention_heads=7"], None, ["multiple of"]),
    (["oops"], None, ["not key=value"]),
    ([], "sft: [unclosed", ["not valid YAML"]),
    ([], "- a\n- b\n", ["must hold a mapping"]),
]


@pytest.mark.parametrize("overrides,text,words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_config_is_rejected_with_a_named_field(tmp_path, overrides, text, words):
    path = CONFIGS / "tiny.yaml"
    if text is not None:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")


def test_cuda_without_gpu_is_refused(tmp_path):
    import torch

    from stages.sft import build_sft_config

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="device=cuda"):
        build_sft_config(load_config(CONFIGS / "qwen2.5-7b-paper.yaml"), tmp_path)


def test_defaults_validate():
    assert Config().sft.method == "sft"


def test_hub_model_offline_gives_a_clear_error(monkeypatch, tmp_path):
    from stages.models import ModelError, resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(None, ["model.source=hub", "model.path=nobody/no-such-model-sft2rl", f"cache_dir={tmp_path}"])
    with pytest.raises(ModelError, match="(?s)could not be fetched.*model.source=local"):
        resolve_model(cfg)


def test_exact_svd_anchor_method_agrees_with_gram():
    import torch

    from stages.rpsft import top_k_factors

    W = torch.randn(50, 30, generator=torch.Generator().manual_seed(0))
    _, s_gram, _ = top_k_factors(W, 7, "gram")
    U, s_svd, V, block = top_k_factors(W, 7, "svd", with_block=True)
    assert torch.allclose(s_gram, s_svd, rtol=1e-4)
    assert torch.allclose(block, torch.diag(s_svd), atol=1e-4)


def test_gpu_check_script_parses():
    import subprocess

    from tests.conftest import REPO

    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")]).returncode == 0


def test_credentials_inside_urls_never_reach_the_run_folder():
    from stages.config import dump_config, load_config

    cfg = load_config(
        CONFIGS / "tiny.yaml",
        ["rl.generation.vllm_mode=server", "rl.generation.vllm_server_base_url=http://alice:s3cret@127.0.0.1:8000"],
    )
    text = dump_config(cfg)
    assert "s3cret" not in text and "alice" not in text and "http://***@127.0.0.1:8000" in text


@pytest.mark.parametrize(
    ("overrides", "correction"),
    [
        # colocated on the CPU: the engine's log-probs are the trainer's, the extra forward is off
        (["device=cpu", "rl.generation.backend=vllm"], False),
        # the user's word wins
        (["device=cpu", "rl.generation.backend=vllm", 'rl.trl={"vllm_importance_sampling_correction": true}'], True),
        # transformers generates: TRL's default, unused
        (["device=cpu", "rl.generation.backend=hf"], True),
    ],
)
def test_grpo_drops_the_importance_sampling_forward_only_where_the_log_probs_are_the_trainers(
    tmp_path, overrides, correction
):
    from stages.rl import build_grpo_config

    args = build_grpo_config(load_config(None, overrides), tmp_path / "rl")
    assert args.vllm_importance_sampling_correction is correction


def test_the_claims_config_is_the_default_recipe_at_more_seeds_and_make_claims_runs_it():
    """configs/smollm2-cpu-claims.yaml trains exactly the default's SFT recipe, only at more seeds (method level), with
    greedy in-domain scoring and no RL; `make claims` is the command that ran the committed result."""
    import subprocess

    import yaml

    from stages.provenance import recipe
    from tests.conftest import REPO

    default, claims = (load_config(CONFIGS / f"{n}.yaml", []) for n in ("smollm2-cpu", "smollm2-cpu-claims"))
    as_dict = [yaml.safe_load(dump_config(c)) for c in (default, claims)]
    assert recipe(as_dict[0], "sft") == recipe(as_dict[1], "sft")
    assert len(claims.seed_list) >= 3 and claims.seed_list[: len(default.seed_list)] == default.seed_list
    assert claims.run_name != default.run_name
    assert all(b.samples == 0 for b in claims.eval.benchmarks)  # Avg@k serves claim (c), which this run does not test
    dry = subprocess.run(["make", "-n", "claims"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "sft2rl run --config configs/smollm2-cpu-claims.yaml" in dry
    assert default.rl.in_flow and not claims.rl.in_flow  # no RL stage unless the run asks for it


@pytest.mark.parametrize("renamed", [False, True], ids=["transformers-5.19", "transformers-5.24"])
def test_gradient_checkpointing_goes_under_the_installed_transformers_name(tmp_path, monkeypatch, renamed):
    """From transformers 5.24 on, gradient_checkpointing is a deprecated alias of activation_checkpointing (a
    FutureWarning in every stage log): the stages pass the value under the name the installed version has."""
    from stages import config
    from stages.rl import build_grpo_config
    from stages.sft import training_args

    names = config._training_argument_names()
    assert "gradient_checkpointing" in names
    if renamed:
        monkeypatch.setattr(config, "_training_argument_names", lambda: names | {"activation_checkpointing"})
    cfg = load_config(CONFIGS / "tiny.yaml", ["sft.training.gradient_checkpointing=true"])
    args = training_args(cfg)
    new, old = ("activation_checkpointing", "gradient_checkpointing")[:: 1 if renamed else -1]
    assert args[new] is True and old not in args
    assert config.trainer_names({"learning_rate": 1.0}) == {"learning_rate": 1.0}
    if not renamed:  # the installed version builds TRL's configs with it (the other has no such field here)
        assert build_grpo_config(cfg, tmp_path / "rl").gradient_checkpointing is False
