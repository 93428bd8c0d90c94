#!/usr/bin/env bash
# The one entry the device session calls (tools/gpu/README.md gives the call sequence):
#
#   bash tools/gpu/device_run.sh probe    first call: versions, GPU, packages; stashes carried parts
#   bash tools/gpu/device_run.sh stash    middle calls: stash the payload part carried with the call
#   bash tools/gpu/device_run.sh all      last call: install, then every measurement, then pack $OUT
#   bash tools/gpu/device_run.sh install | measure   (the two halves of 'all')
#
# Every stage is idempotent (parts and the installed site are kept in $STASH, outside the
# repository, while the machine stays warm). Each measurement is a separate step under its own
# time limit; a failing step is recorded in steps.tsv and the next one runs. The whole stage
# stays within STAGEDX_GPU_BUDGET_S seconds; what ran is packed into at most 8 files in $OUT.
#
# Rehearsal on the CPU: STAGEDX_GPU_REHEARSE=1 OUT=/tmp/out bash tools/gpu/device_run.sh all
# (CPU execution provider, this checkout's .venv, a temporary stash; same steps, same files).
set -uo pipefail
STAGE=${1:-all}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 2
if [ "${STAGEDX_GPU_REHEARSE:-0}" = 1 ]; then
  DEVICE=cpu
  PY=${STAGEDX_GPU_PYTHON:-$ROOT/.venv/bin/python}
  STASH=${STAGEDX_GPU_STASH:-${TMPDIR:-/tmp}/stagedx-gpu-rehearsal}
else
  DEVICE=${STAGEDX_GPU_DEVICE:-cuda}
  PY=${STAGEDX_GPU_PYTHON:-python3}
  STASH=${STAGEDX_GPU_STASH:-/root/stagedx-gpu}
fi
if [ -z "${OUT:-}" ]; then echo "error: OUT is not set (the device tool sets it; export OUT=... to rehearse)" >&2; exit 2; fi
CARRY=${STAGEDX_GPU_CARRY:-$ROOT/gpu-carry}
BUNDLES=${STAGEDX_GPU_BUNDLES:-$STASH/bundles}
DTYPES=${STAGEDX_GPU_DTYPES:-fp16,fp32}
N_PROMPTS=${STAGEDX_GPU_PROMPTS:-5}
NEW_TOKENS=${STAGEDX_GPU_NEW_TOKENS:-128}
BUDGET_S=${STAGEDX_GPU_BUDGET_S:-480}
# quick: the CI rehearsal (fewer timings, a smaller bench); the device run is never quick
if [ "${STAGEDX_GPU_QUICK:-0}" = 1 ]; then
  KV_ARGS=(--repeats 3 --past 16,128)
  BENCH_ARGS=(--methods baseline,staged --sampling greedy --warmup 0)
else
  KV_ARGS=(--repeats 20 --past 16,128,512,960)
  BENCH_ARGS=(--methods baseline,speculative,staged,staged3 --sampling greedy,topk:50 --warmup 1)
fi
THREADS=${STAGEDX_GPU_THREADS:-$(( $(nproc) < 8 ? $(nproc) : 8 ))}
W=$OUT/work
mkdir -p "$W" "$STASH"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
export PYTHONPATH="$STASH/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
T0=$(date +%s)
TOOL="tools/gpu/device.py"

elapsed() { echo $(( $(date +%s) - T0 )); }

# step NAME LIMIT_S CMD...: run CMD with its output in work/NAME.log, time-boxed, never fatal
step() {
  local name=$1 limit=$2 left rc s
  shift 2
  left=$(( BUDGET_S - $(elapsed) ))
  if (( left < 15 )); then
    printf '%s\tskipped: out of time\t0\n' "$name" >>"$W/steps.tsv"
    echo "== $name skipped (out of time)"
    return 0
  fi
  (( limit > left - 10 )) && limit=$(( left - 10 ))
  s=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$W/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - s ))" >>"$W/steps.tsv"
  echo "== $name rc=$rc ($(( $(date +%s) - s )) s, limit $limit s)"
  tail -n 6 "$W/$name.log"
}

payload_name() { "$PY" -c 'import sys; print(f"ort-cp{sys.version_info[0]}{sys.version_info[1]}")'; }

cuda_env() {
  [ "$DEVICE" = cpu ] && return 0
  local dirs
  dirs=$("$PY" "$TOOL" libdirs 2>/dev/null)
  [ -n "$dirs" ] && export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
}

# Pack work/ into at most 8 files in $OUT (the device tool returns 8 files, 2 folders deep).
pack() {
  "$PY" "$TOOL" summary --out "$W" >/dev/null 2>&1
  cp "$W/summary.md" "$W/steps.tsv" "$OUT/" 2>/dev/null
  for dt in ${DTYPES//,/ }; do
    [ -f "$W/bench-$dt/bench.json" ] && cp "$W/bench-$dt/bench.json" "$OUT/bench-$dt.json"
    [ -f "$W/bench-$dt/figure1.png" ] && cp "$W/bench-$dt/figure1.png" "$OUT/figure1-$dt.png"
  done
  "$PY" - "$W" "$OUT/results.json" <<'EOF'
import json, sys
from pathlib import Path
work, dst = Path(sys.argv[1]), Path(sys.argv[2])
res = {}
for p in sorted(work.glob("*.json")):
    try:
        res[p.stem] = json.loads(p.read_text())
    except ValueError:
        res[p.stem] = "unreadable"
dst.write_text(json.dumps(res, indent=1, sort_keys=True))
EOF
  tar -czf "$OUT/work.tar.gz" -C "$OUT" work && rm -rf "$W"
  ls -la "$OUT"
}

do_stash() { step stash 120 "$PY" "$TOOL" stash --carry "$CARRY" --stash "$STASH" --out "$W"; }

do_install() {
  local name
  name=$(payload_name)
  step install 120 "$PY" "$TOOL" install --carry "$CARRY" --stash "$STASH" --payload "$name" --out "$W"
}

do_measure() {
  cuda_env
  local ref="$CARRY/small/cpu_reference.json" first=${DTYPES%%,*}
  step check_ort 60 "$PY" "$TOOL" check-ort --device "$DEVICE" --out "$W"
  step export 240 "$PY" "$TOOL" export --bundles "$BUNDLES" --dtypes "$DTYPES" --out "$W"
  step parity 150 "$PY" "$TOOL" parity --bundles "$BUNDLES" --device "$DEVICE" --reference "$ref" \
    --prompts "$N_PROMPTS" --max-new-tokens 64 --out "$W"
  for dt in ${DTYPES//,/ }; do
    step "validate-$dt" 60 bash -c "'$PY' -m stagedx validate '$BUNDLES/pair-$dt' > '$W/validate-$dt.txt' 2>&1"
  done
  step "kvcheck" 90 "$PY" "$TOOL" kvcheck --bundle "$BUNDLES/pair-$first" --device "$DEVICE" \
    "${KV_ARGS[@]}" --out "$W"
  bench "$first"  # then the GPU tests, then the other dtypes' benches (least needed last)
  step gpu_tests 150 "$PY" -m pytest -p no:cacheprovider -m gpu -q tests/runtime/backends/test_ort_cuda.py \
    tests/runtime/backends/test_trt.py
  for dt in ${DTYPES//,/ }; do
    [ "$dt" = "$first" ] || bench "$dt"
  done
}

bench() {
  step "bench-$1" 150 "$PY" -m stagedx bench "$BUNDLES/pair-$1" --device "$DEVICE" --threads "$THREADS" \
    --prompts tools/gpu/prompts.jsonl --limit "$N_PROMPTS" --max-new-tokens "$NEW_TOKENS" \
    "${BENCH_ARGS[@]}" --out "$W/bench-$1"
}

case "$STAGE" in
  probe)
    do_stash
    step probe 60 "$PY" "$TOOL" probe --out "$W"
    cat "$W/probe.json" 2>/dev/null
    pack
    ;;
  stash) do_stash; cat "$W/stash.json" 2>/dev/null ;;
  install) do_stash; do_install; pack ;;
  measure) do_measure; pack ;;
  all)
    trap 'pack' EXIT
    do_stash
    do_install
    step probe 60 "$PY" "$TOOL" probe --out "$W"
    do_measure
    ;;
  *) echo "error: unknown stage $STAGE (probe | stash | install | measure | all)" >&2; exit 2 ;;
esac
