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
  echo "installing $(ls "$pack" | wc -l) wheels from $pack"
  "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "$pack"*.whl
done
[ "${1:-}" = "--run" ] || exit 0
shift
OUT_DIR=${OUT:-runs/gpu-check}
mkdir -p "$OUT_DIR"
PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" scripts/gpu_check/run.py --out "$OUT_DIR/gpu_check.json" "$@"
