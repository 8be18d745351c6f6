#!/usr/bin/env bash
# setup_vllm.sh -- idempotent install of vLLM 0.33.0 (the release the sharding
# tables follow) and tensorizer 2.12.1 (its loader) into their own venv, for `cargo xtask vllm-reference`, which
# builds vLLM's model classes on the CPU to compare their per-rank tensors
# with ours. Big: about 9.4 GB with its CUDA wheels, about 4 minutes once.
# Not part of `cargo xtask test`.
#
# Usage: bash scripts/setup_vllm.sh     (prints the venv's python last)
set -euo pipefail

VLLM_VERSION="0.33.0"
VENV="${TENSORIZER_VLLM_VENV:-$HOME/.cache/tensorizer-vllm-ref}"

log() { echo "[setup_vllm] $*" >&2; }

TENSORIZER_VERSION="2.12.1"
if ! "$VENV/bin/python" -c "import vllm, tensorizer, sys; sys.exit(vllm.__version__ != '$VLLM_VERSION' or tensorizer.__version__ != '$TENSORIZER_VERSION')" 2>/dev/null; then
  log "python3 -m venv $VENV; pip install vllm==$VLLM_VERSION tensorizer==$TENSORIZER_VERSION (~9.4 GB, once)"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "vllm==$VLLM_VERSION" "tensorizer==$TENSORIZER_VERSION" >&2 \
    || { log "ERROR: needs network access to PyPI and ~10 GB of disk"; exit 1; }
fi
echo "$VENV/bin/python"
