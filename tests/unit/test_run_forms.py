"""The Prefect run forms, as the UI draws them from each flow's parameter schema: every parameter described, choices as
enums (a dropdown in the form, refused by the server before a run is created), real defaults."""

from __future__ import annotations

import pytest
from prefect.utilities.callables import parameter_schema

from pipeline.flows import evaluate_flow, prepare_flow, report_flow, rl_flow, sft_flow, sft_to_rl
from stages.config import SFT_METHODS

FLOWS = [sft_to_rl, prepare_flow, sft_flow, rl_flow, evaluate_flow, report_flow]


def _schema(flow) -> dict:
    return parameter_schema(flow).model_dump_for_openapi()


def _enum(prop: dict, defs: dict) -> list:
    """The choices of a property: inline, behind a $ref, or in an anyOf with null."""
    for option in [prop, *prop.get("anyOf", []), *prop.get("allOf", [])]:
        if "$ref" in option:
            option = defs[option["$ref"].rsplit("/", 1)[-1]]
        if "enum" in option:
            return option["enum"]
        if option.get("type") == "array":
            return _enum(option["items"], defs)
    return []


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_parameter_has_a_description(flow):
    props = _schema(flow)["properties"]
    assert props
    missing = [name for name, prop in props.items() if not prop.get("description")]
    assert not missing, f"{flow.name}: no description for {missing} (the flow docstring's Args: section)"


def test_methods_arms_and_algorithm_are_choices():
    pipe, sft, rl = _schema(sft_to_rl), _schema(sft_flow), _schema(rl_flow)
    assert _enum(pipe["properties"]["arms"], pipe.get("definitions", {})) == list(SFT_METHODS)
    assert _enum(sft["properties"]["method"], sft.get("definitions", {})) == list(SFT_METHODS)
    assert sft["properties"]["method"]["default"] == "rpsft"
    assert _enum(rl["properties"]["algorithm"], rl.get("definitions", {})) == ["grpo", "ppo"]
    # a sweep arm has a name of its own (rpsft-l10-k0.25): the RL start is free text, described
    assert "sweep arm" in rl["properties"]["init_arm"]["description"]


def test_the_rl_settings_users_change_most_are_form_fields():
    """Steps, learning rate and the seeds that get RL sit on the run form, not only behind dotted overrides."""
    from pipeline.flows import _rl_overrides
    from stages.config import load_config
    from tests.conftest import CONFIGS

    pipe, rl = _schema(sft_to_rl)["properties"], _schema(rl_flow)["properties"]
    assert {"rl_steps", "rl_learning_rate", "rl_seeds"} <= set(pipe) and {"steps", "learning_rate"} <= set(rl)
    cfg = load_config(CONFIGS / "smollm2-cpu.yaml", _rl_overrides(30, 3e-5, [0, 1]))
    assert (cfg.rl.training.max_steps, cfg.rl.training.learning_rate, cfg.rl.seeds) == (30, 3e-5, [0, 1])
    assert load_config(CONFIGS / "smollm2-cpu.yaml", _rl_overrides(None, None, [])).rl.seeds == []
    assert _rl_overrides(None, None) == []


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_parameters_with_a_fixed_default_open_on_it_not_on_a_none_toggle(flow):
    """overrides, arms and launcher have defaults that do not depend on the config: the form shows them (a list, the
    two default arms, one process), not a "None" union to switch away from. Parameters whose default is the
    config's own value (seeds, rl_steps, ...) stay optional: empty means "as the config says"."""
    schema = _schema(flow)
    props = schema["properties"]
    for name in ("overrides", "arms", "launcher"):
        if name not in props:
            continue
        prop = props[name]
        assert "anyOf" not in prop and prop.get("default") is not None, (flow.name, name, prop)
    assert props["overrides"]["default"] == [] and props["overrides"]["type"] == "array"
    if "arms" in props:
        assert props["arms"]["default"] == ["sft", "rpsft"]
    if "launcher" in props:
        assert props["launcher"]["default"] == {"num_processes": 1, "accelerate_config": None}


def test_flow_runs_name_their_arms_when_they_are_not_the_default_pair(monkeypatch):
    import re

    import prefect.runtime.flow_run as runtime

    from pipeline.flows import _run_namer

    name = _run_namer("sft-to-rl")
    monkeypatch.setattr(runtime, "parameters", {"config": "configs/tiny.yaml", "arms": ["sft", "rpsft"]}, raising=False)
    assert re.fullmatch(r"tiny/sft-to-rl \d\d-\d\d \d\d:\d\d", name())
    monkeypatch.setattr(runtime, "parameters", {"config": "configs/tiny.yaml", "arms": ["sft", "l2"]}, raising=False)
    assert re.fullmatch(r"tiny/sft-to-rl sft\+l2 \d\d-\d\d \d\d:\d\d", name())
    overrides = ["run_name=mine", "seeds=[0,1,2]"]
    monkeypatch.setattr(runtime, "parameters", {"config": "configs/tiny.yaml", "overrides": overrides}, raising=False)
    assert re.fullmatch(r"mine/sft-to-rl seeds \[0,1,2\] \d\d-\d\d \d\d:\d\d", name())
