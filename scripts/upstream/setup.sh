#!/usr/bin/env bash
# setup.sh -- idempotent setup of the Python tensorizer 2.12.1 test-suite,
# run offline against the real library (`--reference`) or tensorizer_rs.
#
#   * a torch 2 venv (the suite uses torch 2 APIs: untyped_storage, the
#     torch_compat module): scripts/setup_oracle.sh with ORACLE_TORCH=pypi,
#     which also installs the real tensorizer 2.12.1 for the reference run;
#   * the suite's own test dependencies, pinned;
#   * the tests/ folder of the tensorizer 2.12.1 sdist from PyPI, checked
#     against a pinned SHA-256 (nothing of it is copied into this repository);
#   * the offline stand-in for EleutherAI/gpt-neo-125M (make_standin.py);
#   * moto 4 (the version the suite's TestS3 is written for: moto 5 removed
#     mock_s3), in a package folder of its own that only the TestS3 run puts
#     first on PYTHONPATH (~30 MB, ~20 s once).
#
# Prints four lines last: the venv's python, the tests folder, HF_HOME,
# the moto 4 folder.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${TENSORIZER_UPSTREAM_CACHE:-$HOME/.cache/tensorizer-upstream}"
VERSION="2.12.1"
SDIST_SHA256="8af9b3be54f31d08d1928e3f25bfaaa963cdc8d716d09559c68ec014f8beb440"
TEST_DEPS=(
  "transformers==4.57.6"
  "tokenizers==0.22.1"
  "moto[server]==5.2.5"
  "pytest==8.3.5"
)

log() { echo "[upstream] $*" >&2; }
die() { echo "[upstream] ERROR: $*" >&2; exit 1; }

PY="$(ORACLE_TORCH=pypi bash "$HERE/../setup_oracle.sh" | tail -n1)"
[[ -x "$PY" ]] || die "scripts/setup_oracle.sh (ORACLE_TORCH=pypi) printed no python"

if ! "$PY" -c "import transformers, tokenizers, moto, pytest, werkzeug, redis; assert transformers.__version__ == '4.57.6'" 2>/dev/null; then
  log "installing the suite's test dependencies: ${TEST_DEPS[*]}"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip install -q "${TEST_DEPS[@]}" >&2
fi

mkdir -p "$CACHE"
SDIST="$CACHE/tensorizer-$VERSION.tar.gz"
TESTS="$CACHE/tests-$VERSION"
if [[ ! -f "$TESTS/test_serialization.py" ]]; then
  if [[ ! -f "$SDIST" ]] || ! echo "$SDIST_SHA256  $SDIST" | sha256sum -c --quiet - 2>/dev/null; then
    log "downloading the tensorizer $VERSION sdist from PyPI"
    tmp="$(mktemp -d)"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip download -q --no-deps --no-binary :all: \
      "tensorizer==$VERSION" -d "$tmp" >&2
    mv "$tmp/tensorizer-$VERSION.tar.gz" "$SDIST"
    rm -rf "$tmp"
  fi
  echo "$SDIST_SHA256  $SDIST" | sha256sum -c --quiet - || die "$SDIST: SHA-256 mismatch"
  tmp="$(mktemp -d)"
  tar -xzf "$SDIST" -C "$tmp" "tensorizer-$VERSION/tests"
  rm -rf "$TESTS"
  mv "$tmp/tensorizer-$VERSION/tests" "$TESTS"
  rm -rf "$tmp"
fi

HF="$CACHE/hf"
log "offline stand-in for EleutherAI/gpt-neo-125M in $HF"
"$PY" "$HERE/make_standin.py" "$HF" >/dev/null

MOTO4="$CACHE/moto4"
MOTO4_VERSION="4.2.14"
if ! PYTHONPATH="$MOTO4" "$PY" -c "import moto, werkzeug.serving, cryptography; assert moto.__version__ == '$MOTO4_VERSION'" 2>/dev/null; then
  log "installing moto[server]==$MOTO4_VERSION (+ cryptography, for its TLS test servers) into $MOTO4"
  rm -rf "$MOTO4"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip install -q --target "$MOTO4" \
    "moto[server]==$MOTO4_VERSION" "cryptography>=42" >&2
fi

echo "$PY"
echo "$TESTS"
echo "$HF"
echo "$MOTO4"
