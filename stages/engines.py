"""Training engines and what each one supports: one policy for the flow (checked before any stage starts, from the
accelerate config file) and for the stages (checked again as they start, from the live accelerator).

- ddp (configs/accelerate/ddp.yaml): every arm; rpsft and l2 on whole matrices in every process; GRPO and PPO.
- fsdp2 (configs/accelerate/fsdp.yaml): every arm; rpsft and l2 on row shards (partial blocks, one all-reduce per
  step, sft.rpsft.mode=per_step); GRPO; not PPO.
- DeepSpeed ZeRO-1/2 (configs/accelerate/zero2.yaml, the paper's engine) and ZeRO-3 (zero3.yaml): every arm; rpsft
  and l2 from the optimizer's fp32 fragments or partitions (partial blocks, one all-reduce per step), the gradient
  taken through the loss of the step's last micro-batch (ZeRO-1/2) or added to each rank's gradient partition before
  the step (ZeRO-3), because DeepSpeed steps the optimizer inside backward (sft.rpsft.mode=per_step); GRPO; not PPO.
- fsdp1 (fsdp_version: 1): the plain arms and GRPO; not rpsft or l2 (its flat parameters hide the matrices); not PPO.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from stages.config import ConfigError

PENALTY_METHODS = ("rpsft", "l2")
PENALTY_ENGINES = ("single", "ddp", "fsdp2", "zero0", "zero1", "zero2", "zero3")
WAY_OUT = (
    "configs/accelerate/fsdp.yaml (FSDP2), configs/accelerate/zero2.yaml (DeepSpeed ZeRO-2) or "
    "configs/accelerate/ddp.yaml"
)


def engine_from_file(path: str | Path) -> str:
    """The engine an accelerate config file launches: single, ddp, fsdp1, fsdp2 or zero1/zero2/zero3."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    kind = str(raw.get("distributed_type", "NO")).upper().split(".")[-1]
    if kind == "FSDP":
        return f"fsdp{int((raw.get('fsdp_config') or {}).get('fsdp_version', 1))}"
    if kind == "DEEPSPEED":
        return f"zero{int((raw.get('deepspeed_config') or {}).get('zero_stage', 0))}"
    return "single" if kind == "NO" else "ddp"


def engine_of(accelerator) -> str:
    """The engine a live ``accelerate.Accelerator`` (or a trainer's) runs."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return f"fsdp{int(getattr(accelerator.state.fsdp_plugin, 'fsdp_version', 1) or 1)}"
    if kind == DistributedType.DEEPSPEED:
        return f"zero{int(getattr(accelerator.state.deepspeed_plugin, 'zero_stage', 0) or 0)}"
    return "single" if kind == DistributedType.NO else "ddp"


def _named(engine: str) -> str:
    if engine.startswith("zero"):
        return f"DeepSpeed ZeRO-{engine[4:]}"
    return {"fsdp1": "FSDP1", "fsdp2": "FSDP2", "ddp": "DDP", "single": "one process"}.get(engine, engine)


def check(
    engine: str,
    where: str,
    methods: list[str] | tuple[str, ...] = (),
    rl_algorithm: str | None = None,
    rpsft_mode: str = "per_step",
) -> None:
    """Refuse what ``engine`` cannot run, with the reason and the launcher that can.

    Raises:
        ConfigError: a penalty arm under FSDP1 or DeepSpeed, the per-micro-batch penalty under FSDP2, or PPO under
            anything but DDP. ``where`` names the launch (the accelerate config file, or "this launch").
    """
    name = _named(engine)
    if rl_algorithm == "ppo" and engine not in ("single", "ddp"):
        raise ConfigError(
            f"rl.algorithm=ppo cannot run under {where} ({name}): PPO is data-parallel under DDP only (its rollouts "
            "call generate on whole weights in each process). Use configs/accelerate/ddp.yaml, or rl.algorithm=grpo "
            "(TRL runs GRPO under FSDP2 and DeepSpeed)"
        )
    penalty = [m for m in methods if m in PENALTY_METHODS]
    if not penalty or engine in ("single", "ddp"):
        return
    if engine in PENALTY_ENGINES:
        if rpsft_mode == "per_micro_batch":
            raise ConfigError(
                f"arms {penalty} with sft.rpsft.mode=per_micro_batch cannot run under {where} ({name}): that mode "
                "differentiates the low-precision or sharded copy of every matrix in every micro-batch; use "
                "sft.rpsft.mode=per_step (the default, the same update)"
            )
        return
    reason = "its flat parameters hide the weight matrices the penalty is defined on"
    raise ConfigError(
        f"arms {penalty} cannot run under {where} ({name}): {reason}. Use {WAY_OUT} for them (the other arms may keep "
        "this launcher in a separate run)"
    )
