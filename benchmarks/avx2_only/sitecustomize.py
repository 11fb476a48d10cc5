"""Run on an AVX-512 x86 CPU as if it had AVX2 only (a measurement aid for AVX2-only machines such as a Zen 3 EPYC).

    PYTHONPATH=benchmarks/avx2_only python benchmarks/generation.py --out /tmp/generation_avx2.json

Python imports this file at start-up (it is on PYTHONPATH; child processes inherit it). It caps the vector ISA of
every library in the generation path: PyTorch's ATen kernels and TorchInductor (``ATEN_CPU_CAPABILITY``), oneDNN
(``ONEDNN_MAX_CPU_ISA``), MKL (``MKL_ENABLE_INSTRUCTIONS``), and makes ``torch.cpu`` report no AVX-512 / AMX, so
vLLM-CPU loads its AVX2 kernel build (``vllm/_C_AVX2``) and picks the kernels it picks on such a CPU. What it cannot
change is the core itself (caches, clocks, memory): figures are of this machine restricted to AVX2, not of another
machine. Variables already set are left as they are; ``SFT2RL_EMULATED_ISA`` (set here) records the restriction.
"""

import importlib.abc
import importlib.machinery
import os
import sys

os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("DNNL_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("MKL_ENABLE_INSTRUCTIONS", "AVX2")
os.environ["SFT2RL_EMULATED_ISA"] = "avx2"  # recorded with the figures (stages.backends.machine)

_ABSENT = (
    "_is_avx512_supported",
    "_is_avx512_bf16_supported",
    "_is_avx512_vnni_supported",
    "_is_amx_tile_supported",
    "_is_amx_fp16_supported",
)


class _CapTorchCpu(importlib.abc.MetaPathFinder):
    """Patches ``torch.cpu``'s feature queries right after the module is first imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "torch.cpu":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for name in _ABSENT:
                if hasattr(module, name):
                    setattr(module, name, lambda: False)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _CapTorchCpu())
