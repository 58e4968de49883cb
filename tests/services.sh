#!/usr/bin/env bash
# Start or stop the services the test suite uses beyond what pip installs:
# a real Mosquitto broker on loopback. Installs it from Debian's packages when
# it is missing (as root, as CI runs). Writes tests/.services.env, which the
# tests read; `stop` ends what `start` started.
set -euo pipefail
cd "$(dirname "$0")"
STATE=.services
ENV_FILE=.services.env
MOSQUITTO_PORT=${MOSQUITTO_PORT:-18830}

install_mosquitto() {
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  else
    echo "services: mosquitto is not installed and cannot be installed here" >&2
    return 1
  fi
}

start() {
  mkdir -p "$STATE"
  : > "$ENV_FILE"
  if install_mosquitto; then
    local bin; bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$MOSQUITTO_PORT" \
      > "$STATE/mosquitto.conf"
    "$bin" -c "$STATE/mosquitto.conf" > "$STATE/mosquitto.log" 2>&1 &
    echo $! > "$STATE/mosquitto.pid"
    for _ in $(seq 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$MOSQUITTO_PORT") 2>/dev/null && break
      sleep 0.1
    done
    echo "CONVERGE_MOSQUITTO=mqtt://127.0.0.1:$MOSQUITTO_PORT" >> "$ENV_FILE"
    echo "services: mosquitto on 127.0.0.1:$MOSQUITTO_PORT"
  fi
}

stop() {
  if [ -f "$STATE/mosquitto.pid" ]; then
    kill "$(cat "$STATE/mosquitto.pid")" 2>/dev/null || true
  fi
  rm -rf "$STATE" "$ENV_FILE"
}

"${1:?usage: services.sh start|stop}"
