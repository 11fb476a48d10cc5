"""The recipe rule every reader of a stage's output uses: what counts as the recipe, what is the method."""

from __future__ import annotations

import json

import pytest
import yaml

from stages.config import ConfigError, dump_config, load_config
from stages.provenance import check_same_recipe, confounds, differences, recipe
from tests.conftest import CONFIGS


def _cfg(*overrides):
    return yaml.safe_load(dump_config(load_config(CONFIGS / "tiny.yaml", list(overrides))))


def test_names_folders_cadence_and_the_other_stage_are_not_the_recipe():
    base = recipe(_cfg(), "sft")
    same = _cfg(
        "run_name=other",
        "runs_root=/elsewhere",
        "sft.training.logging_steps=7",
        "sft.training.save_steps=3",
        "rl.training.learning_rate=0.5",
        "eval.batch_size=3",
        "report.matched_tolerance=0.1",
        "torch_threads=2",
    )
    assert differences(base, recipe(same, "sft")) == {}
    changed = recipe(_cfg("sft.training.learning_rate=0.05", "data.size=20", "seed=3"), "sft")
    assert set(differences(base, changed)) == {"sft.training.learning_rate", "data.size", "seed"}
    # RL's recipe reads rl.*, not sft.*; which seeds get RL and the engine choice are not part of it
    rl = recipe(_cfg(), "rl")
    assert differences(rl, recipe(_cfg("sft.training.learning_rate=0.05", "rl.seeds=[0]"), "rl")) == {}
    assert "rl.training.learning_rate" in differences(rl, recipe(_cfg("rl.training.learning_rate=0.01"), "rl"))


def test_the_method_is_not_a_confound_but_the_rest_of_the_recipe_is():
    sft, rp = _cfg(), _cfg("sft.method=rpsft", "sft.rpsft.lambda=3")
    assert confounds(sft, rp, "sft") == {}
    lr = _cfg("sft.method=rpsft", "sft.training.learning_rate=0.05")
    assert set(confounds(sft, lr, "sft")) == {"sft.training.learning_rate"}
    assert confounds(_cfg("rl.init=a"), _cfg("rl.init=b"), "rl") == {}
    assert set(confounds(_cfg("rl.init=a"), _cfg("rl.init=b", "rl.training.max_steps=99"), "rl")) == {
        "rl.training.max_steps"
    }
    assert confounds(None, sft, "sft") == {}  # an arm without a record: nothing to compare


def test_a_started_or_finished_arm_refuses_another_recipe(tmp_path):
    arm = tmp_path / "sft"
    arm.mkdir()
    (arm / "config.yaml").write_text(dump_config(load_config(CONFIGS / "tiny.yaml", [])))
    new = _cfg("sft.training.learning_rate=0.05")
    check_same_recipe(arm, new, "sft", "pass --force")  # never started: nothing to mix
    (arm / "trainer" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(
        ConfigError, match=r"was started with another SFT recipe .*sft.training.learning_rate: .* -> 0.05"
    ):
        check_same_recipe(arm, new, "sft", "pass --force")
    check_same_recipe(arm, _cfg("sft.training.logging_steps=9"), "sft", "pass --force")  # cadence only
    (arm / "DONE").write_text("")
    with pytest.raises(ConfigError, match="is finished with another SFT recipe.*pass --force"):
        check_same_recipe(arm, new, "sft", "pass --force")


def test_an_rl_arm_resumes_only_from_the_weights_it_started_from(tmp_path):
    from stages.provenance import INIT_FILE, check_same_init

    init, arm = tmp_path / "sft" / "checkpoint", tmp_path / "rl-sft"
    init.mkdir(parents=True)
    (init / "model.safetensors").write_bytes(b"weights of the first SFT run")
    first = check_same_init(arm, str(init), force=False)
    assert set(first["sha256"]) == {"model.safetensors"} and (arm / INIT_FILE).is_file()
    (arm / "trainer" / "checkpoint-2").mkdir(parents=True)  # killed after a checkpoint
    assert check_same_init(arm, str(init), force=False)["sha256"] == first["sha256"]  # same weights: resumes
    (init / "model.safetensors").write_bytes(b"weights of a retrained SFT arm")
    with pytest.raises(ConfigError, match="started from other weights.*--force"):
        check_same_init(arm, str(init), force=False)
    assert json.loads((arm / INIT_FILE).read_text())["sha256"] == first["sha256"]  # the record is kept
    again = check_same_init(arm, str(init), force=True)  # --force restarts from the current checkpoint
    assert again["sha256"] != first["sha256"]
    assert json.loads((arm / INIT_FILE).read_text())["sha256"] == again["sha256"]


def test_a_long_value_in_a_recipe_difference_keeps_its_end():
    """A path that differs is told apart by its end (the arm, the file): a long one is cut in the middle."""
    from stages.provenance import shown

    old, new = "/tmp/" + "deep/" * 30 + "sft/checkpoint", "/tmp/" + "deep/" * 30 + "rpsft/checkpoint"
    text = shown({"rl.init": (old, new)})
    assert "sft/checkpoint'" in text and "rpsft/checkpoint'" in text and "..." in text
    assert len(text) < 2 * 130
    assert shown({"rl.init": (None, "/runs/x/sft/checkpoint")}) == "rl.init: None -> '/runs/x/sft/checkpoint'"
