#!/usr/bin/env bash
# Reproduce docs/results/: stagedx bench of the vendored pair and of the GPT-2-L-cost pair
# (tools/research/build_gpt2l_cost.sh), each untuned (the runtime defaults) and, with TUNE=1, tuned on a
# scratch copy of the bundle. Every run records its exact command in command.txt beside
# bench.json / bench.txt / bench.png / figure1.png. Timing runs hold /tmp/stagedx-timing.lock,
# runs of the large pair also /tmp/stagedx-bigmem.lock (~4-7 GB RSS).
#   tools/research/results.sh [small|big|all]       (default all)
# Environment: PY, SMALL_BUNDLE, BIG_BUNDLE, LIMIT (prompts, default 10), TOKENS (default 128),
# BIG_LIMIT / BIG_TOKENS (default LIMIT / TOKENS), TUNE=1, TUNE_LIMIT / TUNE_TOKENS (calibration),
# SCRATCH (tuned copies), THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SMALL_BUNDLE=${SMALL_BUNDLE:-bundles/stdlib-code-pair}
BIG_BUNDLE=${BIG_BUNDLE:-bundles/gpt2l-cost}
LIMIT=${LIMIT:-10}
TOKENS=${TOKENS:-128}
BIG_LIMIT=${BIG_LIMIT:-$LIMIT}
BIG_TOKENS=${BIG_TOKENS:-$TOKENS}
THREADS=${THREADS:-2}
TUNE=${TUNE:-0}
TUNE_LIMIT=${TUNE_LIMIT:-8}
TUNE_TOKENS=${TUNE_TOKENS:-64}
SCRATCH=${SCRATCH:-/tmp/stagedx-results}
WHAT=${1:-all}
SMALL_OUT=${SMALL_OUT:-docs/results/small-pair-untuned}
BIG_OUT=${BIG_OUT:-docs/results/gpt2l-cost-untuned}
TIMING=(flock /tmp/stagedx-timing.lock)
BIGMEM=(flock /tmp/stagedx-bigmem.lock)

# bench BUNDLE OUT LIMIT TOKENS [LOCK...] -- [extra bench args]
bench() {
  local bundle=$1 out=$2 limit=$3 tokens=$4; shift 4
  local locks=() extra=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do locks+=("$1"); shift; done
  [ $# -gt 0 ] && shift && extra=("$@")
  local cmd=(stagedx bench "$bundle" --limit "$limit" --max-new-tokens "$tokens" --threads "$THREADS"
             --out "$out" "${extra[@]}")
  mkdir -p "$out"
  "${locks[@]}" "${TIMING[@]}" $PY -m "${cmd[@]}"
  printf '%s\n' "${cmd[*]}" >"$out/command.txt"
}

# tuned_copy BUNDLE NAME [LOCK...]: a scratch copy of BUNDLE with this machine's tuning
tuned_copy() {
  local src=$1 name=$2; shift 2
  local dst="$SCRATCH/$name"
  rm -rf "$dst" && mkdir -p "$SCRATCH" && cp -r "$src" "$dst"
  "$@" "${TIMING[@]}" $PY -m stagedx tune "$dst" --limit "$TUNE_LIMIT" --max-new-tokens "$TUNE_TOKENS" \
    --threads "$THREADS" >&2
  echo "$dst"
}

if [ "$WHAT" = small ] || [ "$WHAT" = all ]; then
  bench "$SMALL_BUNDLE" "$SMALL_OUT" "$LIMIT" "$TOKENS"
  if [ "$TUNE" = 1 ]; then
    tuned=$(tuned_copy "$SMALL_BUNDLE" stdlib-code-pair-tuned)
    bench "$tuned" "$SMALL_OUT/tuned" "$LIMIT" "$TOKENS"
  fi
fi
if [ "$WHAT" = big ] || [ "$WHAT" = all ]; then
  bench "$BIG_BUNDLE" "$BIG_OUT" "$BIG_LIMIT" "$BIG_TOKENS" "${BIGMEM[@]}" -- --figure-with "$SMALL_OUT/bench.json"
  if [ "$TUNE" = 1 ]; then
    tuned=$(tuned_copy "$BIG_BUNDLE" gpt2l-cost-tuned "${BIGMEM[@]}")
    bench "$tuned" "$BIG_OUT/tuned" "$BIG_LIMIT" "$BIG_TOKENS" "${BIGMEM[@]}" -- \
      --figure-with "$SMALL_OUT/bench.json"
  fi
fi
