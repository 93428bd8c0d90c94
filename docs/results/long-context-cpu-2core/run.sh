#!/usr/bin/env bash
# The before/after sweep: the same bench (this branch's runtime) on a bundle exported by main's
# exporter (Concat + repeat of K/V) and one exported by this branch (past read in place),
# back to back under one hold of the timing lock.
# Usage: run.sh OLD_BUNDLE NEW_BUNDLE OUT_DIR [CONTEXTS] [PROMPTS] [NEW_TOKENS]
set -euo pipefail
old=$1 new=$2 out=$3 contexts=${4:-128,512,1024,2048} limit=${5:-2} tokens=${6:-64}
stagedx=${STAGEDX:-stagedx}
mkdir -p "$out"
flock /work/timing.lock bash -c '
  set -euo pipefail
  for pair in "old:$1" "new:$2"; do
    name=${pair%%:*} bundle=${pair#*:}
    echo "== $name $bundle $(date -u +%FT%TZ) load before: $(cat /proc/loadavg)"
    "$5" bench "$bundle" --context "$4" --prompts humaneval --limit "$6" --max-new-tokens "$7" \
      --methods baseline,staged --sampling greedy --warmup 1 --threads 2 --out "$3/$name" 2>/dev/null
    echo "== $name $(date -u +%FT%TZ) load after: $(cat /proc/loadavg)"
  done
' _ "$old" "$new" "$out" "$contexts" "$stagedx" "$limit" "$tokens" | tee "$out/run.log"
