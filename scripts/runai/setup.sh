#!/usr/bin/env bash
# setup.sh -- idempotent setup of Run:ai Model Streamer 0.17.0's own tests,
# run against the real package and against tensorizer_rs's
# runai_model_streamer (cargo xtask runai-test):
#
#   * the torch 2 venv of scripts/setup_oracle.sh (ORACLE_TORCH=pypi; shared
#     with the tensorizer suite, ~6.6 GB once, several minutes);
#   * runai-model-streamer 0.17.0's wheel and its S3 backend's
#     (runai-model-streamer-s3, for the bench's S3 rows) from PyPI, each
#     checked against a pinned SHA-256, installed there with their
#     dependencies (humanize, boto3) and safetensors 0.8.0, which its tests
#     compare with and the bench measures (~40 MB, ~30 s once);
#   * the wheel's test files, copied out of it into a cache folder (nothing
#     of them is copied into this repository).
#
# Prints three lines last: the venv's python, the tests folder, the folder
# of the two wheels (for other venvs: `cargo xtask vllm-reference`).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${TENSORIZER_RUNAI_CACHE:-$HOME/.cache/tensorizer-runai}"
VERSION="0.17.0"
WHEEL="runai_model_streamer-${VERSION}-py3-none-manylinux_2_30_x86_64.whl"
WHEEL_SHA256="d7189e8f6963adc39d38eb7423ac79542e69d1a2eac5e76a473c60ae942b8760"
S3_WHEEL="runai_model_streamer_s3-${VERSION}-py3-none-manylinux_2_30_x86_64.whl"
S3_WHEEL_SHA256="87ddb91f0f89959b08657d1d95318a3dfbe7dcc04aa1731a028247ae436d1358"

log() { echo "[runai] $*" >&2; }
die() { echo "[runai] ERROR: $*" >&2; exit 1; }

PY="$(ORACLE_TORCH=pypi bash "$HERE/../setup_oracle.sh" | tail -n1)"
[[ -x "$PY" ]] || die "scripts/setup_oracle.sh (ORACLE_TORCH=pypi) printed no python"
mkdir -p "$CACHE"

fetch() { # fetch FILE SHA256 PACKAGE
  if [[ ! -f "$CACHE/$1" ]] || ! echo "$2  $CACHE/$1" | sha256sum -c --quiet - 2>/dev/null; then
    log "downloading $1 from PyPI"
    rm -f "$CACHE/$1"
    "$PY" -m pip download -q --no-deps "$3==$VERSION" \
      --only-binary=:all: --platform manylinux_2_30_x86_64 -d "$CACHE" >&2
    echo "$2  $CACHE/$1" | sha256sum -c --quiet - || die "$1: SHA-256 mismatch"
  fi
}
fetch "$WHEEL" "$WHEEL_SHA256" runai-model-streamer
fetch "$S3_WHEEL" "$S3_WHEEL_SHA256" runai-model-streamer-s3

if ! "$PY" -c "import runai_model_streamer, runai_model_streamer_s3, humanize, safetensors, importlib.metadata as m; assert m.version('runai-model-streamer') == '$VERSION' and safetensors.__version__ == '0.8.0'" 2>/dev/null; then
  log "installing runai-model-streamer $VERSION (+ its S3 backend), humanize, safetensors 0.8.0 into the torch 2 venv"
  "$PY" -m pip install -q "$CACHE/$WHEEL" "$CACHE/$S3_WHEEL" humanize "safetensors==0.8.0" >&2
fi

TESTS="$CACHE/tests-$VERSION"
if [[ ! -f "$TESTS/.complete" ]]; then
  log "copying the wheel's tests into $TESTS"
  rm -rf "$TESTS" "$TESTS.tmp"
  mkdir -p "$TESTS.tmp"
  "$PY" - "$CACHE/$WHEEL" "$TESTS.tmp" <<'PYEOF'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        parts = name.split("/")
        if "tests" not in parts[:-1] or not name.endswith(".py") or parts[-1] == "__init__.py":
            continue
        # package/sub/tests/test_x.py -> sub/test_x.py (a flat folder per package)
        sub = parts[parts.index("tests") - 1]
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        with open(os.path.join(out, sub, parts[-1]), "wb") as f:
            f.write(z.read(name))
PYEOF
  touch "$TESTS.tmp/.complete"
  mv "$TESTS.tmp" "$TESTS"
fi

echo "$PY"
echo "$TESTS"
echo "$CACHE"
