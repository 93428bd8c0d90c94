#!/usr/bin/env bash
# The 512-token distilled draft against the shipped one, on a quiet machine, back to back:
# the small pair (same options as bench_both.sh) and the GPT-2-L-cost twins (as bench_gpt2l_cost.sh),
# then the shipped GPT-2-L-cost bundle in top-k again with the cheap-draft sampled default.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
B=${BUNDLES:-/work/bundles}
OUT=docs/results/distill/seq512
SMALL=(--limit 10 --max-new-tokens 128 --sampling greedy,topk:50 --threads 1)
BIG=(--limit 5 --max-new-tokens 128 --sampling greedy,topk:50 --threads 2)
date -u
$PY -m stagedx bench "$B/stdlib-code-pair" "${SMALL[@]}" --out $OUT/small-shipped
$PY -m stagedx bench "$B/stdlib-code-pair-distilled512" "${SMALL[@]}" --out $OUT/small-distilled512
date -u
$PY -m stagedx bench "$B/gpt2l-cost-distilled512" "${BIG[@]}" --out $OUT/gpt2l-cost-distilled512
date -u
$PY -m stagedx bench "$B/gpt2l-cost" --limit 5 --max-new-tokens 128 --sampling topk:50 --threads 2 \
    --out $OUT/gpt2l-cost-shipped-topk-cheap-default
date -u
