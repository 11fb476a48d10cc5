"""Golden values: the tiny config's first training losses, RPSFT penalties and GRPO rewards, pinned. Every other
training test is relative (loss falls, penalty starts at 0), so an upgrade of TRL, transformers or torch, or a
refactor, could change what the stages compute without any of them noticing; these numbers would move.

Regenerate (only after checking that a change is intended): ``python tests/integration/test_golden_values.py``
prints the current values in this file's format.
"""

from __future__ import annotations

import json
import sys

import pytest

from stages.rl import run as rl_run
from stages.sft import run as sft_run

# Measured on the CPU build of torch 2.13.0, transformers and TRL as locked in requirements/cpu.lock.
GOLDEN = {
    "sft/loss": [6.146735668182373, 5.751846790313721, 5.460446357727051],
    "rpsft/loss": [6.146735668182373, 5.751846790313721, 5.730877876281738],
    "rpsft/penalty": [0.013046657899394631, 0.058133469632593915, 0.03924626321531832],
    "grpo/completions_mean_length": [16.0, 14.875],
    "grpo/reward": [0.0, 0.0],
}
# Float results differ across CPUs in the last bits (vectorised kernels sum in other orders); training amplifies them
# a little per step. The tolerance allows that and nothing a real change of the computation would stay within.
REL = 2e-3


def measure(make_cfg) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for method in ("sft", "rpsft"):
        m = sft_run(make_cfg("sft.training.max_steps=3", f"sft.method={method}", "sft.rpsft.lambda=1000"))
        out[f"{method}/loss"] = [h["loss"] for h in m["log_history"] if "loss" in h]
        if method == "rpsft":
            out["rpsft/penalty"] = [h["rpsft/penalty"] for h in m["log_history"] if "rpsft/penalty" in h]
    cfg = make_cfg(
        "sft.training.max_steps=3",
        f"rl.init={make_cfg().run_dir / 'sft' / 'checkpoint'}",
        "rl.training.max_steps=2",
        "rl.rewards=[math_correct]",
    )
    rl_run(cfg)
    rows = [json.loads(x) for x in (cfg.run_dir / "rl-sft" / "metrics.jsonl").read_text().splitlines()]
    out["grpo/completions_mean_length"] = [r["completions/mean_length"] for r in rows]
    out["grpo/reward"] = [r["reward"] for r in rows]
    return out


@pytest.fixture(scope="module")
def measured(tmp_path_factory, cache_dir):
    from stages.config import load_config
    from tests.conftest import CONFIGS

    runs = tmp_path_factory.mktemp("golden") / "runs"
    return measure(lambda *o: load_config(CONFIGS / "tiny.yaml", [f"runs_root={runs}", f"cache_dir={cache_dir}", *o]))


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_the_tiny_config_computes_what_it_computed(measured, key):
    assert len(measured[key]) == len(GOLDEN[key]), (key, measured[key])
    assert measured[key] == pytest.approx(GOLDEN[key], rel=REL, abs=1e-9), (key, measured[key])


def test_the_pins_can_fail():
    # a 1% change of any pinned loss is outside the tolerance
    loss = GOLDEN["sft/loss"][0]
    assert loss * 1.01 != pytest.approx(loss, rel=REL)


if __name__ == "__main__":  # print fresh values (run from the repository root)
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from stages.config import load_config
    from tests.conftest import CONFIGS

    tmp = Path(tempfile.mkdtemp())
    values = measure(
        lambda *o: load_config(CONFIGS / "tiny.yaml", [f"runs_root={tmp / 'runs'}", f"cache_dir={tmp / 'cache'}", *o])
    )
    print(json.dumps(values, indent=4))
