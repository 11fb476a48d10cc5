"""The prepared-model cache is checked at every use (sizes recorded at creation, safetensors headers): a cut or
missing weight file is rebuilt with a warning instead of being handed to a stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages import models


@pytest.mark.parametrize("damage", ["truncate", "delete", "grow", "flip"])
def test_a_damaged_cached_model_is_rebuilt_with_a_warning(tiny_cfg, tmp_path, caplog, damage):
    cfg = tiny_cfg(f"cache_dir={tmp_path / 'cache'}")
    folder = models.resolve_model(cfg)
    weights = sorted(Path(folder).glob("*.safetensors"))[0]
    meta = json.loads((weights.parent / "sft2rl_source.json").read_text())
    assert meta["safetensors_bytes"][weights.name] == weights.stat().st_size  # recorded at creation
    good = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(good[: len(good) // 3])
    elif damage == "delete":
        weights.unlink()
    elif damage == "grow":
        weights.write_bytes(good + b"\0" * 16)
    else:  # one bit in the tensor data: same size, header intact, only the checksum sees it
        weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with caplog.at_level("WARNING", logger=models.log.name):
        again = models.resolve_model(cfg)
    assert again == folder and weights.read_bytes() == good  # rebuilt, the same deterministic weights
    assert any("is damaged" in r.getMessage() and "building it again" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger=models.log.name):
        models.resolve_model(cfg)
    assert not caplog.records  # an intact cache is used as it is
