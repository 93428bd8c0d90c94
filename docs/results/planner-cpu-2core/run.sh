#!/usr/bin/env bash
# The online planner (strategy auto) against baseline, speculative and staged on untuned
# bundles: 10 HumanEval prompts x 128 new tokens (5 at GPT-2-L cost), 2 threads, greedy and
# top-k 50, ONNX Runtime CPU; each bench alone on the machine (/work/quiet.sh).
# Bundles (B=bundles by default; all untuned):
#   stdlib-code-pair     the vendored pair, shipped draft, --draft2 both --corpus stdlib (tools/research/build_gpt2l_cost.sh makes it)
#   pair-weak-draft2     the vendored pair, --draft2 ngram --corpus <stdlib>/json (one small package)
#   pair-no-draft2       the vendored pair, --draft2 none
#   gpt2l-cost           tools/research/build_gpt2l_cost.sh (shipped draft scaled)
#   gpt2l-cost-distilled the same oracle, the distilled draft scaled (docs/results/gpt2l-cost-tuned/run.sh)
#   gpt2l-cost-distilled512-d8  the same oracle, the distilled int8 draft (built like the tuned bundle, untuned)
#   smollm2-fp32         /work/bundles/smollm2-fp32 (SmolLM2-135M-Instruct, 2-layer untrained draft)
# usage: run.sh NAME   (one bench per call; NAME as below)
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
B=${B:-bundles}
OUT=docs/results/planner-cpu-2core
M=baseline,speculative,staged,auto
BENCH=(--max-new-tokens 128 --threads 2 --sampling greedy,topk:50 --methods "$M")
case "$1" in
  pair) $PY -m stagedx bench "$B/stdlib-code-pair" --limit 10 "${BENCH[@]}" --out $OUT/pair ;;
  weak) $PY -m stagedx bench "$B/pair-weak-draft2" --limit 10 "${BENCH[@]}" --out $OUT/pair-weak-draft2 ;;
  nod2) $PY -m stagedx bench "$B/pair-no-draft2" --limit 10 "${BENCH[@]}" --out $OUT/pair-no-draft2 ;;
  gpt2l-greedy|gpt2l-topk|gpt2l-distilled-greedy|gpt2l-distilled-topk|gpt2l-distilled512-d8-greedy|gpt2l-distilled512-d8-topk)
    # one sampling mode per run (<= 10 min each)
    name=${1%-*}; mode=${1##*-}; [ "$mode" = topk ] && mode=topk:50
    bundle=gpt2l-cost${name#gpt2l}
    $PY -m stagedx bench "$B/$bundle" --limit 5 --max-new-tokens 128 --threads 2 --sampling "$mode" --methods "$M" \
      --out "$OUT/$bundle-${1##*-}" ;;
  smollm2) $PY -m stagedx bench /work/bundles/smollm2-fp32 --limit 10 "${BENCH[@]}" --out $OUT/smollm2-fp32 ;;
  pair-tuned) $PY -m stagedx bench "$B/stdlib-code-pair-tuned" --limit 10 "${BENCH[@]}" --out $OUT/pair-tuned ;;  # after: stagedx tune B/stdlib-code-pair-tuned --threads 2 (a copy)
  switch) $PY tools/planner_switch.py "${2:-/work/bundles/smollm2-fp32}" "${@:3}" ;;
  *) echo "unknown run $1" >&2; exit 2 ;;
esac
