#!/usr/bin/env bash
# Installs the system tools the tests and benchmarks drive for real: mosquitto (MQTT
# broker), promtool (Prometheus' metrics checker), hey and wrk (HTTP load generators),
# and Azurite (Azure Blob Storage emulator), the latter locally under .tools/azurite
# (not globally) from the npm registry.
# Idempotent: does nothing when they are already there.
set -euo pipefail
PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AZURITE_VERSION="3.35.0"
AZURITE_PREFIX="$PROJECT_ROOT/.tools/azurite"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v hey >/dev/null || missing+=(hey)
command -v wrk >/dev/null || missing+=(wrk)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
need_azurite=0
[ -x "$AZURITE_PREFIX/node_modules/.bin/azurite-blob" ] || need_azurite=1
# Azurite needs Node and npm (Node 20 runs Azurite 3.35).
if [ "$need_azurite" -eq 1 ] && ! command -v npm >/dev/null; then
    missing+=(nodejs npm)
fi

if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$need_azurite" -eq 1 ]; then
    echo "installing: azurite@$AZURITE_VERSION into $AZURITE_PREFIX"
    mkdir -p "$AZURITE_PREFIX"
    npm install --prefix "$AZURITE_PREFIX" "azurite@$AZURITE_VERSION" --no-audit --no-fund
fi
