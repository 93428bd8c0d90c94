#!/usr/bin/env bash
# fp32 vs int8 vs int4 on one model pair: export the int8 and int4 bundles like the fp32 one
# (tools/demo_small.sh's arguments), bench the three back to back, write the table.
#   PAIR=pairs/gpt2l-cost FP32=bundles/gpt2l-cost NAME=gpt2l-cost tools/research/quant_bench.sh
# Environment: PY, PAIR (checkpoints oracle/ and draft/), FP32 (its fp32 bundle), NAME,
# BUNDLES (where the quantized bundles go), BENCH_ARGS, HELDOUT_TOKENS, LOCK_BIGMEM / LOCK_TIMING
# (set to "flock /tmp/stagedx-bigmem.lock" etc. on a shared machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
PAIR=${PAIR:-models/stdlib-code-pair}
FP32=${FP32:-bundles/stdlib-code-pair}
NAME=${NAME:-stdlib-code-pair}
BUNDLES=${BUNDLES:-bundles}
HELDOUT_TOKENS=${HELDOUT_TOKENS:-1024}
read -r -a BENCH_ARGS <<< "${BENCH_ARGS:---limit 10 --max-new-tokens 128 --methods baseline,staged --sampling greedy --threads 2}"
OUT=docs/results/quantization/$NAME
VAL=models/stdlib-code-pair/val_files.json
EXPORT_ARGS=(--draft2 both --corpus stdlib --exclude-from "$VAL" --heldout "$VAL"
             --heldout-tokens "$HELDOUT_TOKENS" --force)
mkdir -p "$OUT"
for k in int8 int4; do
  if [ ! -f "$BUNDLES/quant-$NAME-$k/manifest.json" ]; then
    ${LOCK_BIGMEM:-} $PY -m stagedx export "$PAIR/oracle" --draft "$PAIR/draft" "${EXPORT_ARGS[@]}" \
      --quantize "$k" -o "$BUNDLES/quant-$NAME-$k" 2>&1 | grep -v "it/s" | tee "$OUT/export-$k.log"
  fi
done
runs=()
for b in "$FP32:fp32" "$BUNDLES/quant-$NAME-int8:int8" "$BUNDLES/quant-$NAME-int4:int4"; do
  ${LOCK_TIMING:-} $PY -m stagedx bench "${b%%:*}" "${BENCH_ARGS[@]}" --out "$OUT/${b##*:}" > /dev/null
  runs+=("${b##*:}=$OUT/${b##*:}/bench.json")
done
$PY tools/research/quant_table.py "${runs[@]}" | tee "$OUT/table.md"
