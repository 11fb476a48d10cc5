"""`backend: auto`: the engine is chosen from figures measured on this machine (a forced slow probe picks
transformers, a forced fast one picks vLLM), cached per machine, model and use, and corrected by what GRPO steps
measure; explicit choices win."""

from __future__ import annotations

import json

import pytest

from stages import backends


def _probe(hf: float, vllm: float):
    calls = []

    def measure():
        calls.append(1)
        return {"hf_tokens_per_s": hf, "vllm_tokens_per_s": vllm}

    return measure, calls


@pytest.fixture
def vllm_present(monkeypatch):
    monkeypatch.setattr(backends, "vllm_installed", lambda: True)


def _choose(tmp_path, measure, use="rl", model="m", cuda=False):
    return backends.choose("auto", use=use, cuda=cuda, model_id=model, cache=tmp_path / "b.json", measure=measure)


@pytest.mark.parametrize("requested", ["hf", "vllm"])
def test_an_explicit_choice_wins_and_measures_nothing(tmp_path, requested):
    measure, calls = _probe(1, 1000)
    c = backends.choose(requested, use="rl", cuda=False, model_id="m", cache=tmp_path / "b.json", measure=measure)
    assert (c.backend, c.reason, calls) == (requested, "set in the config", [])


def test_a_slow_probe_picks_transformers_and_a_fast_one_vllm(tmp_path, vllm_present):
    slow, _ = _probe(hf=60, vllm=30)  # an AVX2-only machine: vLLM below transformers
    c = _choose(tmp_path, slow, model="a")
    assert c.backend == "hf" and "vLLM 30 tokens/s" in c.reason and "transformers 60 tokens/s" in c.reason
    fast, _ = _probe(hf=60, vllm=240)
    assert _choose(tmp_path, fast, model="b").backend == "vllm"
    # within the margin counts as not faster
    close, _ = _probe(hf=100, vllm=105)
    assert _choose(tmp_path, close, model="c").backend == "hf"


def test_figures_are_measured_once_per_machine_and_model(tmp_path, vllm_present):
    measure, calls = _probe(hf=60, vllm=240)
    for use in ("rl", "eval", "rl"):
        assert _choose(tmp_path, measure, use=use).backend == "vllm"
    assert len(calls) == 1  # evaluation and RL share the standalone figures
    _choose(tmp_path, measure, model="other")
    assert len(calls) == 2
    entries = json.loads((tmp_path / "b.json").read_text())
    assert len(entries) == 2
    entry = next(iter(entries.values()))
    assert entry["machine"]["cpu_model"] and "cores" in entry["machine"] and entry["hf_tokens_per_s"] == 60


def test_an_unreadable_cache_is_measured_again(tmp_path, vllm_present):
    (tmp_path / "b.json").write_text("{not json")
    measure, calls = _probe(hf=60, vllm=240)
    assert _choose(tmp_path, measure).backend == "vllm" and calls == [1]


def test_grpo_steps_measured_slow_turn_rl_to_transformers_but_not_evaluation(tmp_path, vllm_present):
    measure, calls = _probe(hf=60, vllm=240)  # standalone vLLM fast ...
    assert _choose(tmp_path, measure).backend == "vllm"
    assert _choose(tmp_path, measure, use="eval").backend == "vllm"
    entry = backends.record_colocated(tmp_path / "b.json", model_id="m", tokens_per_s=30.0)  # ... colocated slow
    assert entry is not None and entry["colocated_vllm_tokens_per_s"] == 30.0
    c = _choose(tmp_path, measure)
    assert c.backend == "hf" and "inside GRPO steps" in c.reason
    assert _choose(tmp_path, measure, use="eval").backend == "vllm"
    assert len(calls) == 1


def test_no_vllm_or_a_gpu_decide_without_measuring(tmp_path, monkeypatch):
    measure, calls = _probe(hf=60, vllm=240)
    monkeypatch.setattr(backends, "vllm_installed", lambda: False)
    assert _choose(tmp_path, measure).backend == "hf"
    monkeypatch.setattr(backends, "vllm_installed", lambda: True)
    assert _choose(tmp_path, measure, cuda=True).backend == "vllm"
    assert calls == []


def test_an_unknown_backend_is_refused(tmp_path):
    with pytest.raises(ValueError, match="choose auto, vllm or hf"):
        backends.choose("fast", use="rl", cuda=False, model_id="m", cache=tmp_path / "b.json", measure=dict)


def test_machine_names_the_cpu_and_its_vector_flags():
    m = backends.machine()
    assert m["cpu_model"] and m["cores"] >= 1
    assert set(m["cpu_flags"]) <= set(backends.CPU_FLAGS)


def test_figures_of_an_older_engine_setup_are_measured_again(tmp_path, vllm_present, monkeypatch):
    """A machine that chose transformers from the slow colocated engine of an older setup (bfloat16, unpacked) measures
    again once the engine's setup changed, instead of keeping transformers for good."""
    cache = tmp_path / "b.json"
    monkeypatch.setattr(backends, "ENGINE_SETUP", 1)
    old, _ = _probe(hf=60, vllm=130)
    _choose(tmp_path, old)
    assert backends.record_colocated(cache, model_id="m", tokens_per_s=30.0) is not None
    assert _choose(tmp_path, old).backend == "hf"  # the colocated figure rules RL
    monkeypatch.setattr(backends, "ENGINE_SETUP", 2)
    new, calls = _probe(hf=60, vllm=190)
    c = _choose(tmp_path, new)
    assert calls == [1] and c.backend == "vllm" and "standalone probe" in c.reason
    assert len(json.loads(cache.read_text())) == 2  # the old entry is left as it was


def test_an_emulated_avx2_machine_is_its_own_machine(monkeypatch):
    real = backends.machine()
    monkeypatch.setenv("SFT2RL_EMULATED_ISA", "avx2")
    emulated = backends.machine()
    assert emulated["emulated_isa"] == "avx2" and "emulated_isa" not in real
    assert not [f for f in emulated["cpu_flags"] if f.startswith(("avx512", "amx"))]
    assert backends.cache_key("m", emulated) != backends.cache_key("m", real)


def test_figures_are_kept_per_precision(tmp_path):
    """bfloat16 products are fast on AVX-512-BF16 and slow on AVX2-only CPUs: figures measured in one precision do
    not decide for the other. RL computes in the trainer's precision, evaluation in eval.cpu_dtype."""
    from stages.config import load_config
    from tests.conftest import CONFIGS

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    assert backends.model_id(str(tmp_path), "float32") != backends.model_id(str(tmp_path), "bfloat16")
    assert "float32" in backends.model_id("org/name")  # a hub id: its name and the precision
    cfg = load_config(CONFIGS / "tiny.yaml", ["model.dtype=bfloat16"])
    assert (backends.engine_dtype(cfg, "rl"), backends.engine_dtype(cfg, "eval")) == ("bfloat16", "float32")


def test_a_cache_entry_whose_figures_are_not_speeds_is_measured_again(tmp_path, vllm_present):
    """A cache that lies (an edited or damaged entry: a word, NaN, a negative speed) is never used to choose."""
    measure, calls = _probe(hf=60, vllm=240)
    assert _choose(tmp_path, measure).backend == "vllm" and calls == [1]
    cache = tmp_path / "b.json"
    entries = json.loads(cache.read_text())
    for bad in ("fast", float("nan"), -5.0, None, True):
        for entry in entries.values():
            entry["vllm_tokens_per_s"] = bad
        cache.write_text(json.dumps(entries))
        assert _choose(tmp_path, measure).backend == "vllm"
    assert len(calls) == 6  # measured again each time


def test_a_process_no_launcher_started_gets_a_rendezvous_port_of_its_own(monkeypatch):
    """Two single-process RL stages starting at once must not both take TRL's first choice, 29500."""
    import os
    import socket

    from stages import backends

    for k in ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(backends, "_PORT_SET_HERE", None)
    backends.claim_rendezvous_port()
    first = os.environ["MASTER_PORT"]
    assert first != "29500" and os.environ["MASTER_ADDR"] == "127.0.0.1"
    with socket.socket() as s:  # free when claimed: the engine can listen on it
        s.bind(("127.0.0.1", int(first)))
    monkeypatch.setattr(backends, "_PORT_SET_HERE", "1")  # a second engine in this process: the port set here
    monkeypatch.setenv("MASTER_PORT", "1")  # earlier is not reused (its group may still hold it)
    backends.claim_rendezvous_port()
    assert os.environ["MASTER_PORT"] not in ("1", "29500")
    monkeypatch.setenv("MASTER_PORT", "23999")  # the user's or a launcher's port is kept
    backends.claim_rendezvous_port()
    assert os.environ["MASTER_PORT"] == "23999"
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.setenv("WORLD_SIZE", "2")  # under accelerate launch / torchrun the launcher's rendezvous stands
    backends.claim_rendezvous_port()
    assert "MASTER_PORT" not in os.environ
