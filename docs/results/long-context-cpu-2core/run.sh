#!/usr/bin/env bash
# One quiet chunk of the before/after sweep: for each context length, the bundle exported before
# in-place attention (OLD) and after (NEW), back to back, the same bench (this branch's runtime).
# Run it under /work/quiet.sh (timed work alone on the machine); keep a chunk under ~10 minutes.
# Usage: run.sh OLD_BUNDLE NEW_BUNDLE OUT_DIR CONTEXTS [PROMPTS] [NEW_TOKENS] [METHODS]
#   writes OUT_DIR/{old,new}-N/context.{json,txt} for each N of CONTEXTS (comma-separated)
set -euo pipefail
old=$1 new=$2 out=$3 contexts=$4 limit=${5:-4} tokens=${6:-64} methods=${7:-baseline,staged,auto}
stagedx=${STAGEDX:-stagedx}
mkdir -p "$out"
for n in ${contexts//,/ }; do
  for pair in "old:$old" "new:$new"; do
    name=${pair%%:*} bundle=${pair#*:}
    [ -n "$bundle" ] || continue  # an empty OLD or NEW: that side is run in another chunk
    echo "== $name-$n $bundle $(date -u +%FT%TZ) load before: $(cat /proc/loadavg)" | tee -a "$out/run.log"
    "$stagedx" bench "$bundle" --context "$n" --prompts humaneval --limit "$limit" --max-new-tokens "$tokens" \
      --methods "$methods" --sampling greedy --warmup 1 --threads 2 --out "$out/$name-$n" 2>/dev/null |
      tail -n +1 >>"$out/run.log"
    echo "== $name-$n $(date -u +%FT%TZ) load after: $(cat /proc/loadavg)" | tee -a "$out/run.log"
  done
done
