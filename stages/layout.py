"""The run folder's layout, named once: every path a stage writes or another reads goes through these objects.

```
<run>/                      RunLayout(run_dir)            (cfg.layout)
  prepare/result.json       .prepare_result
  data/sft_train.jsonl      .sft_data
  <arm>/                    .arm(name) -> ArmLayout        (SFT arms and rl-<arm> runs alike)
  eval/                     .eval_dir
    items/<bench>.jsonl     .eval_items / .items(bench)
    benchmarks.json         .benchmarks
    general_text*.json      .general_text(sampled)
    <model>/                .eval_model(name) -> EvalLayout
  report.{md,html,json}     .report_md / .report_html / .report_json
  plots/                    .plots
  seeds/seed-<s>/           .seed_run(s) -> RunLayout      (.seeds_dir; .is_seed_run, .parent_run)
```

Light on purpose (no torch, no pydantic): the orchestration in pipeline/ uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DONE = "DONE"  # written last into a finished arm, evaluation or checkpoint folder
SEEDS = "seeds"
CHECKPOINT = "checkpoint"  # an arm's final model folder
CONFIG = "config.yaml"  # the resolved config that made an arm
INIT = "init.json"  # the exact weights an RL arm started from
PROMPT_FILTER = "prompt_filter.json"
# Folder names of a run that no arm may take (an arm named "eval" would overwrite the evaluations).
RESERVED = {"eval", "data", "plots", "prepare", SEEDS, "trainer", CHECKPOINT, "adapter", "base"}


@dataclass(frozen=True)
class ArmLayout:
    """One SFT arm's or RL run's folder."""

    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def checkpoint(self) -> Path:
        """The final model: a Hugging Face folder (safetensors, tokenizer, chat template, model card)."""
        return self.dir / CHECKPOINT

    @property
    def trainer(self) -> Path:
        """Resumable trainer checkpoints (``checkpoint-N``)."""
        return self.dir / "trainer"

    @property
    def adapter(self) -> Path:
        return self.dir / "adapter"

    @property
    def value_head(self) -> Path:
        """PPO: the value head's weights beside the policy checkpoint."""
        return self.dir / "value_head.safetensors"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def steps(self) -> Path:
        """RL: one JSON line per optimizer step."""
        return self.dir / "metrics.jsonl"

    @property
    def config(self) -> Path:
        """The resolved config that made this arm."""
        return self.dir / CONFIG

    @property
    def init(self) -> Path:
        """RL: the exact weights it started from."""
        return self.dir / INIT

    @property
    def prompt_filter(self) -> Path:
        """RL: the prompt filter's sampled rewards and the prompts it kept."""
        return self.dir / PROMPT_FILTER

    @property
    def done(self) -> Path:
        return self.dir / DONE


@dataclass(frozen=True)
class EvalLayout:
    """One evaluated model's folder."""

    dir: Path

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def scores(self) -> Path:
        return self.dir / "scores.json"

    @property
    def outputs(self) -> Path:
        return self.dir / "outputs.jsonl"

    @property
    def done(self) -> Path:
        return self.dir / DONE

    @property
    def files(self) -> tuple[Path, ...]:
        """What a finished evaluation holds besides ``DONE``."""
        return (self.scores, self.outputs, self.metrics)


@dataclass(frozen=True)
class RunLayout:
    """A run folder (one seed's, or the top of a multi-seed run)."""

    dir: Path

    def arm(self, name: str) -> ArmLayout:
        return ArmLayout(self.dir / name)

    @property
    def prepare_dir(self) -> Path:
        return self.dir / "prepare"

    @property
    def prepare_result(self) -> Path:
        return self.prepare_dir / "result.json"

    @property
    def sft_data(self) -> Path:
        return self.dir / "data" / "sft_train.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.dir / "eval"

    def eval_model(self, name: str) -> EvalLayout:
        return EvalLayout(self.eval_dir / name)

    @property
    def eval_items(self) -> Path:
        return self.eval_dir / "items"

    def items(self, benchmark: str) -> Path:
        return self.eval_items / f"{benchmark}.jsonl"

    @property
    def benchmarks(self) -> Path:
        return self.eval_dir / "benchmarks.json"

    def general_text(self, sampled: bool = False) -> Path:
        return self.eval_dir / ("general_text_sampled.json" if sampled else "general_text.json")

    @property
    def report_md(self) -> Path:
        return self.dir / "report.md"

    @property
    def report_html(self) -> Path:
        return self.dir / "report.html"

    @property
    def report_json(self) -> Path:
        return self.dir / "report.json"

    @property
    def plots(self) -> Path:
        return self.dir / "plots"

    @property
    def seeds_dir(self) -> Path:
        return self.dir / SEEDS

    def arms(self) -> list[ArmLayout]:
        """Every folder of the run that is an arm or an RL run (it has metrics.json or metrics.jsonl), by name."""
        return [
            ArmLayout(d)
            for d in sorted(self.dir.glob("*"))
            if d.is_dir() and (ArmLayout(d).metrics.is_file() or ArmLayout(d).steps.is_file())
        ]

    def seed_run(self, seed: int) -> RunLayout:
        return RunLayout(self.seeds_dir / f"seed-{seed}")

    def seed_runs(self) -> list[RunLayout]:
        """The seed runs that exist, by folder name."""
        return [RunLayout(d) for d in sorted(self.seeds_dir.glob("seed-*")) if d.is_dir()]

    @property
    def is_seed_run(self) -> bool:
        return self.dir.parent.name == SEEDS

    @property
    def parent_run(self) -> RunLayout:
        """The multi-seed run a seed run belongs to (itself when it is not a seed run)."""
        return RunLayout(self.dir.parent.parent) if self.is_seed_run else self
