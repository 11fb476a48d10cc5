"""rl.prompt_filter on the tiny model: RL prompts sampled from the initial checkpoint first, GRPO (real TRL trainer)
then trains only on those whose completions got different rewards; the sampling is kept and reused; too few
prompts with a signal is refused before any model is trained."""

from __future__ import annotations

import json

import pytest

from stages.config import ConfigError
from stages.rewards import REWARDS, register
from stages.rl import run as rl_run
from stages.rl_prompts import FILTER_FILE, _filter_key, rl_prompts

if "digits_if_odd_answer" not in REWARDS:

    @register("digits_if_odd_answer")
    def digits_if_odd_answer(completions, answer, **_):
        """Share of digits when the gold answer has an odd number of characters, else 0: a prompt whose answer has
        an even length gets the same reward on every completion (no GRPO signal), the others vary."""
        texts = [c if isinstance(c, str) else "".join(m["content"] for m in c) for c in completions]
        return [
            sum(ch.isdigit() for ch in t) / max(1, len(t)) if len(str(a)) % 2 else 0.0
            for t, a in zip(texts, answer, strict=True)
        ]


def test_grpo_trains_only_on_prompts_with_mixed_rewards_and_reuses_the_sampling(tiny_cfg, caplog):
    cfg = tiny_cfg("rl.rewards=[digits_if_odd_answer]", "rl.prompt_filter.samples=4", "rl.training.max_steps=1")
    summary = rl_run(cfg)
    arm = cfg.run_dir / "rl-base"
    record = json.loads((arm / FILTER_FILE).read_text())
    items = rl_prompts(cfg)
    assert len(record["rewards"]) == len(items) and all(len(r) == 4 for r in record["rewards"])
    assert [len(c) for c in record["completions"]] == [4] * len(items)  # what was sampled, kept for a reader
    mixed = [x for x, r in zip(items, record["rewards"], strict=True) if max(r) > min(r)]
    even = [x for x in items if len(x["answer"]) % 2 == 0]
    assert even and mixed, "the tiny data has answers of both parities and the model's samples vary"
    assert not {x["question"] for x in mixed} & {x["question"] for x in even}
    pf = summary["prompt_filter"]
    assert set(summary["init_sha256"]) == {"model.safetensors"}  # the exact weights RL started from
    assert pf["kept"] == len(mixed) == summary["prompts"] < len(items)
    assert pf["all_same"].get("0.0", 0) >= len(even)  # dropped, by the one reward their completions all got
    metrics = json.loads((arm / "metrics.json").read_text())
    assert metrics["prompt_filter"]["kept"] == len(mixed)
    assert f"of {len(items)}: those with mixed rewards" in (arm / "checkpoint" / "README.md").read_text()

    # rerun (forced): the sampling is read back, not repeated
    stamp = (arm / FILTER_FILE).stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="sft2rl.rl"):
        rl_run(cfg, force=True)
    assert (arm / FILTER_FILE).stat().st_mtime_ns == stamp
    assert not any("sampling" in r.getMessage() for r in caplog.records)
    assert any("have mixed rewards" in r.getMessage() for r in caplog.records)


def _write_record(cfg, rewards):
    arm = cfg.run_dir / "rl-base"
    arm.mkdir(parents=True, exist_ok=True)
    from stages import models

    init = str(models.resolve_model(cfg))
    record = {"key": _filter_key(cfg, init, cfg.rl.generation.backend), "samples": 4, "backend": "hf"}
    record |= {"seconds": 1.0, "rewards": rewards}
    (arm / FILTER_FILE).write_text(json.dumps(record))
    return arm


@pytest.mark.parametrize(
    ("kept", "message"),
    [(0, "every one of the 32 RL prompts got the same reward"), (1, "only 1 of 32 RL prompts got mixed rewards")],
)
def test_too_few_prompts_with_a_signal_is_refused_before_training(tiny_cfg, kept, message):
    cfg = tiny_cfg("rl.prompt_filter.samples=4")
    assert cfg.rl.num_prompts == 32
    rewards = [[1.0, 0.0, 0.0, 0.0]] * kept + [[0.0] * 4] * (32 - kept)
    arm = _write_record(cfg, rewards)
    with pytest.raises(ConfigError, match=message) as err:
        rl_run(cfg)
    assert "rl.prompt_filter.samples=0" in str(err.value)
    assert not (arm / "trainer").exists() and not (arm / "DONE").exists()
    assert json.loads((arm / FILTER_FILE).read_text())["rewards"] == rewards  # the sampling is kept


def test_one_sample_cannot_tell_mixed_rewards(tiny_cfg):
    with pytest.raises(ConfigError, match="samples=1 cannot tell mixed rewards"):
        tiny_cfg("rl.prompt_filter.samples=1")
