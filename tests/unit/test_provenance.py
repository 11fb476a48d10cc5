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


def test_a_finished_arm_is_returned_as_it_is_only_when_complete_same_recipe_and_readable(tmp_path):
    """The rule the flow asks before it starts a training stage's process; anything else leaves it to the stage."""
    from pipeline.params import StageParams
    from pipeline.runner import finished_arm as flow_finished
    from stages.provenance import finished_arm, rl_arm_name, training_arm

    cfg = load_config(CONFIGS / "tiny.yaml", [f"runs_root={tmp_path}"])
    arm_dir, (stage, rec) = training_arm("sft", cfg)
    assert arm_dir == cfg.arm_dir and stage == "sft" and rec == yaml.safe_load(dump_config(cfg))
    assert finished_arm("sft", cfg) is None  # nothing yet
    arm_dir.mkdir(parents=True)
    (arm_dir / "config.yaml").write_text(dump_config(cfg))
    (arm_dir / "metrics.json").write_text(json.dumps({"steps": 4}))
    assert finished_arm("sft", cfg) is None  # written but not marked complete
    (arm_dir / "DONE").write_text("")
    assert finished_arm("sft", cfg) == arm_dir
    params = StageParams(config=str(CONFIGS / "tiny.yaml"), overrides=[f"runs_root={tmp_path}"])
    assert flow_finished("sft", params) == arm_dir
    assert flow_finished("sft", params.model_copy(update={"force": True})) is None
    assert flow_finished("evaluate", params) is None  # only training arms
    assert flow_finished("sft", params, ["sft.training.learning_rate=0.05"]) is None  # another recipe: the stage says
    assert flow_finished("sft", params, ["no_such_key=1"]) is None  # a config the stage itself refuses
    (arm_dir / "metrics.json").write_text("{torn")
    assert finished_arm("sft", cfg) is None  # damaged: the stage runs and names the file
    # the RL arm's folder comes from its initial checkpoint
    rl = load_config(CONFIGS / "tiny.yaml", [f"runs_root={tmp_path}", f"rl.init={arm_dir / 'checkpoint'}"])
    assert rl_arm_name(rl) == "rl-sft" and training_arm("rl", rl)[0] == rl.layout.arm("rl-sft").dir
    assert finished_arm("rl", rl) is None
