#!/usr/bin/env bash
# The SmolLM2-135M-Instruct bench table: 10 prompts x 128 new tokens, 2 threads, HumanEval and
# the chat set, greedy and top-k 50, on the two bundles the demo's export makes (BUNDLES=/work/bundles):
#   GGUF=$(STAGEDX_CACHE=/work/cache bash tools/fetch_smollm2.sh)
#   python tools/truncated_draft.py "$GGUF" 2 /work/cache/smollm2/draft-first2layers   # untrained
#   E=(--draft /work/cache/smollm2/draft-first2layers --draft2 both --corpus stdlib)
#   stagedx export "$GGUF" "${E[@]}" -o $BUNDLES/smollm2-fp32                        # fp32 oracle
#   stagedx export "$GGUF" "${E[@]}" --quantize oracle=gguf -o $BUNDLES/smollm2-gguf4  # Q4_1 blocks carried
# One cell per call, each through /work/quiet.sh (nothing else runs while it is timed):
#   /work/quiet.sh bash docs/results/smollm2-cpu-2core/run.sh fp32 humaneval greedy
# with BUNDLE in fp32 | gguf4, PROMPTS in humaneval | chat, SAMPLING in greedy | topk:50.
# METHODS overrides the methods (default baseline,speculative,staged; add auto where it exists).
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
B=${BUNDLES:-/work/bundles}
OUT=docs/results/smollm2-cpu-2core
[ $# -eq 3 ] || { echo "usage: run.sh fp32|gguf4 humaneval|chat greedy|topk:50" >&2; exit 2; }
NAME=$1 PROMPTS=$2 SAMPLING=$3
METHODS=${METHODS:-baseline,speculative,staged}
DIR=$OUT/$NAME/$PROMPTS-${SAMPLING/:/}${TAG:+-$TAG}
mkdir -p "$DIR"
{ echo "start $(date -u +%FT%TZ) load $(cat /proc/loadavg)"; } > "$DIR/load.txt"
$PY -m stagedx bench "$B/smollm2-$NAME" --prompts "$PROMPTS" --limit 10 --max-new-tokens 128 \
    --threads 2 --sampling "$SAMPLING" --methods "$METHODS" --out "$DIR"
{ echo "end $(date -u +%FT%TZ) load $(cat /proc/loadavg)"; } >> "$DIR/load.txt"
