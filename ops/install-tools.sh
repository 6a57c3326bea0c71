#!/usr/bin/env bash
# Installs the system tools the tests and benchmarks drive for real: mosquitto (MQTT
# broker), promtool (Prometheus' metrics checker), hey and wrk (HTTP load generators).
# Idempotent: does nothing when they are already there.
set -euo pipefail
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v hey >/dev/null || missing+=(hey)
command -v wrk >/dev/null || missing+=(wrk)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
