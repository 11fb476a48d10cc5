#!/usr/bin/env bash
# The GPU check on the lent GPU machine, from the repository root. The wheels it needs travel in packs
# (scripts/gpu_check/fetch_wheels.py makes them and prints the calls); each call installs the packs it carried into
# .gpu-site/ (git-ignored: kept on the machine between calls while it stays warm), and the call with --run runs the
# check, writing $OUT/gpu_check.json (sized for under 8 minutes on one H200; parts past --deadline-s are skipped):
#   bash scripts/gpu_check/device.sh            # carry: scripts/gpu_check/wheels/a
#   bash scripts/gpu_check/device.sh --run      # carry: scripts/gpu_check/wheels/b
#   bash scripts/gpu_check/device.sh --run --smoke   # anywhere, on the CPU, seconds (tested in make test)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
SITE=.gpu-site
WHEELS=${GPU_CHECK_WHEELS:-scripts/gpu_check/wheels}
mkdir -p "$SITE"
for pack in "$WHEELS"/*/; do
  compgen -G "${pack}*.whl" >/dev/null || continue
  done_marker="$SITE/.installed-$(basename "$pack")"
  [ -f "$done_marker" ] && continue  # installed by an earlier call on this machine
  echo "installing $(ls "$pack" | wc -l) wheels from $pack"
  "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "$pack"*.whl
  touch "$done_marker"
done
# what the check imports, tried at once (seconds), so a missing piece shows before the costly run
PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import torch, transformers, pydantic, xxhash, stages.rpsft
print('imports ok: torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
[ "${1:-}" = "--run" ] || exit 0
shift
OUT_DIR=${OUT:-runs/gpu-check}
mkdir -p "$OUT_DIR"
HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" \
  "$PY" scripts/gpu_check/run.py --out "$OUT_DIR/gpu_check.json" "$@"
