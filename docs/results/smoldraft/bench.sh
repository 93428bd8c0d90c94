#!/usr/bin/env bash
# Greedy bench of a SmolLM2 bundle on held-out chat prompts (the oracle's chat template applied):
#   bash docs/results/smoldraft/bench.sh BUNDLE OUT [LIMIT] [NEW_TOKENS]
# PROMPTS defaults to the held-out file tools/draft_prompts.py writes, rendered through the
# chat template into JSONL (see docs/distill.md). Timed: holds /work/timing.lock.
set -euo pipefail
BUNDLE=$1 OUT=$2 LIMIT=${3:-3} NEW=${4:-48}
PROMPTS=${PROMPTS:-/work/cache/smoldraft-prompts/heldout-chat.jsonl}
mkdir -p "$OUT"
cat /proc/loadavg > "$OUT/loadavg.txt"
flock /work/timing.lock stagedx bench "$BUNDLE" --prompts "$PROMPTS" --limit "$LIMIT" \
    --max-new-tokens "$NEW" --sampling greedy --methods baseline,speculative,staged,staged3 \
    --warmup "${WARMUP:-1}" --threads 2 --out "$OUT"
cat /proc/loadavg >> "$OUT/loadavg.txt"
