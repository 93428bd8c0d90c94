#!/usr/bin/env bash
# Tuned: the GPT-2-L-cost pair with the distilled draft, its draft fp32 or int8, tuned
# through the small twin, benched on a quiet machine (nothing else running), 10 HumanEval prompts
# x 128 tokens, 2 threads. Bundles (BUNDLES=/work/bundles by default):
#   tools/research/build_gpt2l_cost.sh                                          # pairs/gpt2l-cost/{oracle,draft}
#   python tools/research/scale_pair.py scale models/stdlib-code-pair/draft-distilled pairs/gpt2l-cost/draft-distilled512 \
#       --factor 4 --layers 5 --seed 1 --force
#   E=(--draft2 both --corpus stdlib --exclude-from models/stdlib-code-pair/val_files.json)
#   python -m stagedx export pairs/gpt2l-cost/oracle --draft pairs/gpt2l-cost/draft-distilled512 "${E[@]}" \
#       -o $BUNDLES/gpt2l-cost-distilled512
#   python -m stagedx export pairs/gpt2l-cost/oracle --draft pairs/gpt2l-cost/draft-distilled512 "${E[@]}" \
#       --quantize draft=int8 --heldout models/stdlib-code-pair/val_files.json --heldout-tokens 512 \
#       -o $BUNDLES/gpt2l-cost-distilled512-d8                        # 1 min, 3.6 GB peak
#   python -m stagedx export models/stdlib-code-pair/oracle --draft models/stdlib-code-pair/draft-distilled \
#       "${E[@]}" -o $BUNDLES/stdlib-code-pair-distilled512             # the small twin
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
B=${BUNDLES:-/work/bundles}
OUT=docs/results/gpt2l-cost-tuned
TWIN=$B/stdlib-code-pair-distilled512
tune() {  # curves measured on the big bundle, the search priced on them with the twin's acceptance
  $PY -m stagedx tune "$1" --acceptance-from "$TWIN" --passes 0 --limit 1 --max-new-tokens 8 --threads 2 "${@:2}"
  $PY -m stagedx tune "$1" --acceptance-from "$TWIN" --reuse-curves --limit 10 --max-new-tokens 128 --threads 2 "${@:2}"
}
BENCH=(--limit 10 --max-new-tokens 128 --threads 2 --figure-with docs/results/cpu-2core/bench.json)
date -u
# int8 draft: greedy and top-k tuned, both modes benched; then top-k re-tuned on the every-T curve
tune "$B/gpt2l-cost-distilled512-d8"
$PY -m stagedx bench "$B/gpt2l-cost-distilled512-d8" "${BENCH[@]}" --sampling greedy,topk:50 \
    --out $OUT/distilled-int8-draft
tune "$B/gpt2l-cost-distilled512-d8" --sampling topk:50
$PY -m stagedx bench "$B/gpt2l-cost-distilled512-d8" "${BENCH[@]}" --sampling topk:50 \
    --out $OUT/distilled-int8-draft-topk
# the same int8 bundle exported again with the LM head in its fast form (export/head.py) into
# $B/gpt2l-cost-distilled512-d8-head (same export command), top-k only
tune "$B/gpt2l-cost-distilled512-d8-head" --sampling topk:50
$PY -m stagedx bench "$B/gpt2l-cost-distilled512-d8-head" "${BENCH[@]}" --sampling topk:50 \
    --out $OUT/distilled-int8-draft-topk-new-head
# fp32 draft: both modes
tune "$B/gpt2l-cost-distilled512"
$PY -m stagedx bench "$B/gpt2l-cost-distilled512" "${BENCH[@]}" --sampling greedy,topk:50 \
    --out $OUT/distilled-fp32-draft
date -u
