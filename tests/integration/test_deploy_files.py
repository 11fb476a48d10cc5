"""The files that place sft2rl on other machines: compose file, Dockerfiles, prefect.yaml, accelerate configs.

No Docker engine runs on the test machines. The compose file is validated against the Compose Specification's JSON
schema (`make setup` fetches it from the docker-compose wheel on PyPI into .venv/compose-spec) with jsonschema, and,
where the `docker-compose` binary exists (.ci/run installs it), by `docker-compose config` too; a broken copy must
fail both, so the checks can fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DOCKER = REPO / "docker"


def _compose_schema() -> dict:
    wheels = sorted((Path(sys.prefix) / "compose-spec").glob("docker_compose-*.whl"))
    assert wheels, (
        "the Compose Specification schema is missing: run `make setup` (it fetches it into .venv/compose-spec)"
    )
    with zipfile.ZipFile(wheels[-1]) as z:
        return json.loads(z.read("compose/config/compose_spec.json"))


def test_compose_file_follows_the_compose_specification_and_a_broken_one_does_not():
    import jsonschema

    validator = jsonschema.Draft7Validator(_compose_schema())
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    services = doc["services"]
    assert {"postgres", "prefect-server", "deploy", "worker", "gpu-worker"} <= set(services)
    assert services["gpu-worker"]["profiles"] == ["gpu"]  # started only with --profile gpu
    assert str(services["prefect-server"]["ports"][0]).startswith("127.0.0.1:")  # UI not exposed to the network
    assert "postgresql" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    renamed = {("servicez" if k == "services" else k): v for k, v in doc.items()}
    assert list(validator.iter_errors(renamed))
    misspelt = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    misspelt["services"]["worker"]["imagez"] = misspelt["services"]["worker"].pop("image", "x")
    assert list(validator.iter_errors(misspelt))


def _compose() -> str:
    exe = shutil.which("docker-compose")
    if not exe:
        pytest.skip(
            "no docker-compose binary here (.ci/run installs it); the schema test above still validates the file"
        )
    return exe


def test_compose_file_is_valid_and_a_broken_one_is_not(tmp_path):
    exe = _compose()
    ok = subprocess.run([exe, "-f", str(DOCKER / "compose.yaml"), "config", "-q"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    full = subprocess.run([exe, "-f", str(DOCKER / "compose.yaml"), "--profile", "gpu", "config"],
                          capture_output=True, text=True)  # fmt: skip
    assert full.returncode == 0, full.stderr
    services = yaml.safe_load(full.stdout)["services"]
    assert {"postgres", "prefect-server", "deploy", "worker", "gpu-worker"} <= set(services)
    assert str(services["prefect-server"]["ports"][0]).startswith("127.0.0.1:")  # UI not exposed to the network
    assert "postgresql" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    broken = tmp_path / "compose.yaml"
    broken.write_text((DOCKER / "compose.yaml").read_text().replace("services:", "servicez:", 1))
    bad = subprocess.run([exe, "-f", str(broken), "config", "-q"], capture_output=True, text=True)
    assert bad.returncode != 0


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_copy_only_what_exists(name):
    text = (DOCKER / name).read_text()
    assert re.search(r"^FROM \S+", text, re.M)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for s in sources:
            assert (REPO / s).exists(), f"{name}: COPY {s} does not exist"
    assert "USER sft2rl" in text  # not root at run time


def test_gpu_requirements_pin_a_vllm_that_trl_supports():
    reqs = (REPO / "requirements" / "gpu.txt").read_text()
    m = re.search(r"^vllm==0\.(\d+)\.\d+", reqs, re.M)
    assert m and 22 <= int(m.group(1)) <= 31  # TRL 1.16.0 supports vLLM 0.22 - 0.31
    assert re.search(r"^trl==1\.16\.0", reqs, re.M)


def test_prefect_yaml_declares_what_serve_serves():
    from pipeline import flows
    from pipeline.cli import deployments, shipped_configs

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    declared = set()
    for d in spec["deployments"]:
        path, fn = d["entrypoint"].split(":")
        assert (REPO / path).is_file()
        flow_obj = getattr(flows, fn)
        assert (REPO / d["parameters"]["config"]).is_file()
        assert d["work_pool"]["name"] in ("sft2rl-process", "sft2rl-gpu")
        declared.add(f"{flow_obj.name}/{d['name']}")
    served = {f"{dep.flow_name}/{dep.name}": dep for dep in deployments(shipped_configs())}
    assert declared == set(served)
    for d in spec["deployments"]:  # the same description and tags, so a user can tell them apart in the UI
        dep = served[f"{getattr(flows, d['entrypoint'].split(':')[1]).name}/{d['name']}"]
        assert d["description"] == dep.description and d["tags"] == dep.tags
        assert d["parameters"] == dep.parameters  # a GPU config's training stages launch on its engine's processes
        assert f"config:{d['name']}" in d["tags"] and ("gpu" in d["tags"]) == (d["work_pool"]["name"] == "sft2rl-gpu")
        assert f"Config {d['parameters']['config']}: " in d["description"]
    assert {f"sft-to-rl/{c.stem}" for c in shipped_configs()} <= declared
    paper = served["sft-to-rl/qwen2.5-7b-paper"].parameters["launcher"]
    assert paper == {"num_processes": 8, "accelerate_config": "configs/accelerate/zero2.yaml"}


def test_a_variant_config_is_served_as_its_whole_pipeline_only():
    """Every stage flow once per recipe: smollm2-cpu-sweep and smollm2-cpu-claims vary smollm2-cpu's recipe, so they
    get the sft-to-rl deployment and no second copy of its stages."""
    from pipeline.cli import deployments, shipped_configs, variant_of
    from pipeline.flows import FLOWS

    configs = shipped_configs()
    served = [f"{d.flow_name}/{d.name}" for d in deployments(configs)]
    assert len(served) == len(set(served))
    variants = {c.stem: variant_of(c, configs) for c in configs}
    assert variants["smollm2-cpu-sweep"] == variants["smollm2-cpu-claims"] == "smollm2-cpu"
    assert variants["smollm2-cpu"] is None and variants["tiny"] is None and variants["qwen2.5-7b-paper"] is None
    for c in configs:
        mine = sorted(n for n in served if n.split("/", 1)[1] == c.stem)
        assert mine == (["sft-to-rl/" + c.stem] if variants[c.stem] else sorted(f"{f}/{c.stem}" for f in FLOWS))
    sweep = next(c for c in configs if c.stem == "smollm2-cpu-sweep")
    assert variant_of(sweep, [sweep]) is None  # served on its own, a variant gets every flow
    assert len(deployments([sweep])) == len(FLOWS)
    docs = " ".join((REPO / "docs" / "prefect.md").read_text().split())
    assert f"{len(served)} deployments, each stage once per recipe" in docs


@pytest.mark.parametrize("name", ["ddp.yaml", "zero2.yaml", "zero3.yaml", "fsdp.yaml", "cpu-ddp.yaml"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "configs" / "accelerate" / name))
    assert cfg.num_processes >= 2
    assert str(cfg.distributed_type).split(".")[-1] in ("MULTI_GPU", "DEEPSPEED", "FSDP")


@pytest.mark.parametrize(
    ("launcher", "arms", "overrides", "refused"),
    [
        ("fsdp1", ["rpsft"], [], "FSDP1"),
        ("fsdp1", ["l2"], [], "FSDP1"),
        ("fsdp.yaml", ["rpsft"], ["sft.rpsft.mode=per_micro_batch"], "per_micro_batch"),
        ("zero2.yaml", ["rpsft"], ["sft.rpsft.mode=per_micro_batch"], "per_micro_batch"),
        ("fsdp.yaml", ["sft", "rpsft", "l2"], [], None),
        ("zero2.yaml", ["sft", "rpsft", "l2"], [], None),
        ("zero3.yaml", ["sft", "rpsft", "l2", "lora", "dft"], [], None),
        ("zero3.yaml", ["rpsft"], ["sft.rpsft.mode=per_micro_batch"], "per_micro_batch"),
        ("ddp.yaml", ["sft", "rpsft", "l2"], [], None),
    ],
)
def test_penalty_arms_run_where_the_engine_supports_them_and_are_refused_before_any_stage_elsewhere(
    tmp_path, launcher, arms, overrides, refused
):
    """FSDP1 flattens the matrices: refused, naming the engines that can run them (FSDP2, ZeRO-2, DDP). FSDP2 runs
    them on row shards, DeepSpeed on its optimizer's fragments (ZeRO-1/2) or partitions (ZeRO-3)."""
    from pipeline.params import PipelineParams, resolve
    from stages.config import ConfigError
    from stages.engines import WAY_OUT

    acc = f"configs/accelerate/{launcher}"
    if launcher == "fsdp1":
        raw = yaml.safe_load((REPO / "configs/accelerate/fsdp.yaml").read_text())
        raw["fsdp_config"]["fsdp_version"] = 1
        acc = str(tmp_path / "fsdp1.yaml")
        Path(acc).write_text(yaml.safe_dump(raw))
    params = PipelineParams(
        config="configs/tiny.yaml",
        arms=arms,
        overrides=overrides,
        launcher={"num_processes": 2, "accelerate_config": acc},
    )
    if refused:
        with pytest.raises(ConfigError, match=rf"cannot run under .*{refused}|{refused}.*cannot run under") as e:
            resolve(params)
        if refused != "per_micro_batch":
            assert WAY_OUT in str(e.value) and "zero2.yaml" in WAY_OUT
    else:
        assert resolve(params).run_name == "tiny"


def test_every_shipped_accelerate_config_names_its_engine():
    from stages.engines import engine_from_file

    engines = {p.name: engine_from_file(p) for p in (REPO / "configs" / "accelerate").glob("*.yaml")}
    assert engines == {
        "cpu-ddp.yaml": "ddp",
        "ddp.yaml": "ddp",
        "fsdp.yaml": "fsdp2",
        "zero2.yaml": "zero2",
        "zero3.yaml": "zero3",
    }


@pytest.mark.parametrize("name", ["kubernetes-gpu.json", "docker-gpu.json"])
def test_gpu_work_pool_templates_use_only_variables_they_declare_and_ask_for_gpus(name):
    t = json.loads((REPO / "docker" / "work-pools" / name).read_text())
    declared = set(t["variables"]["properties"])
    used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(t["job_configuration"])))
    assert used and used <= declared, sorted(used - declared)
    props = t["variables"]["properties"]
    assert props["image"]["default"] == "sft2rl:gpu"
    if name.startswith("kubernetes"):
        container = t["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
        assert props["gpus"]["type"] == "integer" and props["gpus"]["default"] >= 1
    else:
        (request,) = props["container_create_kwargs"]["default"]["device_requests"]
        # docker-py builds a DeviceRequest from each dict, so only its keyword arguments (docker 7.x)
        assert set(request) <= {"driver", "count", "device_ids", "capabilities", "options"}
        assert request["capabilities"] == [["gpu"]] and request["count"] == -1
