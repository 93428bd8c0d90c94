#!/usr/bin/env bash
# Structured output: constrained baseline vs constrained staged decoding, greedy and top-k 50,
# 4 JSON schemas x 2 prompts each, up to 256 new tokens, 2 threads, CPU.
#   run.sh smollm2 pair   # both, one after the other; smollm2: /work/bundles/smollm2-fp32 (SmolLM2-135M-Instruct fp32, 2-layer untrained draft, draft2 both)
#   pair: the vendored stdlib-code pair, exported with prompt lookup:
#     python -m stagedx export models/stdlib-code-pair/oracle --draft models/stdlib-code-pair/draft \
#         --draft2 prompt-lookup -o /tmp/constrain/pair
# Timed runs go through /work/quiet.sh in this project (nothing else running).
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
OUT=docs/results/structured-cpu-2core
for target in "$@"; do
  case "$target" in
    smollm2) B=${SMOLLM2:-/work/bundles/smollm2-fp32} ;;
    pair) B=${PAIR:-/tmp/constrain/pair} ;;
    *) echo "usage: run.sh smollm2|pair ..." >&2; exit 2 ;;
  esac
  date -u
  uptime
  $PY -m stagedx.bench.structured "$B" --out "$OUT/$target" --sampling greedy,topk:50 --max-new-tokens 256 --threads 2
  uptime
done
