"""Placement and store parameters are refused before any stage when they cannot work, naming the way out."""

from __future__ import annotations

import pytest

from pipeline.params import PipelineParams, _params, resolve
from stages.config import ConfigError


def _resolve(**kw):
    return resolve(_params(PipelineParams, config="configs/tiny.yaml", **kw))


def test_placement_needs_a_store():
    with pytest.raises(ConfigError, match="needs a store"):
        _resolve(placement={"sft": "sft/tiny"})


@pytest.mark.parametrize(
    ("placement", "words"),
    [({"prepare": "prepare/tiny"}, "cannot be placed"), ({"sft": "rl/tiny"}, "sft/<deployment>"), ({"rl": "rl"}, "")],
)
def test_a_placement_must_name_a_deployment_of_the_stages_flow(placement, words):
    with pytest.raises(ConfigError, match=f"placement.*{words}"):
        _resolve(placement=placement, store="file:///tmp/store")


def test_placement_runs_one_training_seed_per_run():
    with pytest.raises(ConfigError, match=r"one training seed per run.*seeds=\[\] seed=<s>"):
        _resolve(placement={"sft": "sft/tiny"}, store="file:///tmp/store", overrides=["seeds=[0,1]"])


def test_a_valid_placement_resolves_and_the_machines_runs_root_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SFT2RL_RUNS_ROOT", str(tmp_path / "here"))
    cfg = _resolve(placement={"sft": "sft/tiny", "report": "report/tiny"}, store="file:///tmp/store")
    assert cfg.run_dir == tmp_path / "here" / "tiny"
    explicit = _resolve(overrides=[f"runs_root={tmp_path / 'there'}"])  # an override still wins
    assert explicit.run_dir == tmp_path / "there" / "tiny"


def test_a_deployment_run_writes_only_to_stores_its_worker_allows(monkeypatch, tmp_path):
    from pipeline import params

    monkeypatch.setattr(params, "_in_deployment", lambda: True)
    monkeypatch.setenv("SFT2RL_ALLOWED_ROOTS", str(tmp_path))
    monkeypatch.delenv("SFT2RL_ALLOWED_STORES", raising=False)
    with pytest.raises(ConfigError, match="SFT2RL_ALLOWED_STORES"):
        params.store_guard("s3://someone-elses-bucket/runs")
    with pytest.raises(ConfigError, match="SFT2RL_ALLOWED_STORES"):
        params.store_guard("file:///etc/sft2rl")
    params.store_guard(f"file://{tmp_path / 'store'}")  # a local store inside the allowed roots
    monkeypatch.setenv("SFT2RL_ALLOWED_STORES", "s3://our-bucket/")
    params.store_guard("s3://our-bucket/runs")


def test_a_multi_process_launch_on_one_machine_gets_a_port_of_its_own(monkeypatch, tmp_path):
    """Two accelerate launches at once (parallel arms) must not share accelerate's default port, 29500; a port the
    config or MASTER_PORT names, or a launch across machines, keeps its own."""
    import socket

    from pipeline.params import Launcher, StageParams
    from pipeline.runner import stage_command

    monkeypatch.delenv("MASTER_PORT", raising=False)

    def port_of(acc: str) -> str | None:
        params = StageParams(config="configs/tiny.yaml", launcher=Launcher(num_processes=2, accelerate_config=acc))
        cmd = stage_command("sft", params)
        assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
        return cmd[cmd.index("--main_process_port") + 1] if "--main_process_port" in cmd else None

    port = port_of("configs/accelerate/cpu-ddp.yaml")
    assert port is not None and port != "29500"
    with socket.socket() as s:
        s.bind(("127.0.0.1", int(port)))
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("distributed_type: MULTI_CPU\nnum_machines: 1\nmain_process_port: 23456\n")
    assert port_of(str(fixed)) is None  # accelerate reads it from the file
    across = tmp_path / "across.yaml"
    across.write_text("distributed_type: MULTI_GPU\nnum_machines: 2\nmain_process_ip: 10.0.0.1\n")
    assert port_of(str(across)) is None
    monkeypatch.setenv("MASTER_PORT", "24000")
    assert port_of("configs/accelerate/cpu-ddp.yaml") is None
    assert stage_command("evaluate", StageParams(config="configs/tiny.yaml"))[1:3] == ["-m", "stages.evaluate"]
