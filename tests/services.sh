#!/usr/bin/env bash
# Start or stop the services the test suite uses beyond what pip installs:
# - a real Mosquitto broker on loopback, with an anonymous plain listener and a
#   TLS listener that wants a user name and password (a throwaway CA, server
#   certificate and password file are made at start);
# - a throwaway PostgreSQL cluster on 127.0.0.1 only, trusting local
#   connections, with a database converge_test owned by the role converge.
# Their files are in a folder of their own under /tmp (tests/.services/run
# links to it): run as root, PostgreSQL and Mosquitto run as the users postgres
# and mosquitto, who must reach their files wherever the checkout is, also in
# a folder only root may enter (/root, or a clone in a `mktemp -d` folder).
# Installs Mosquitto, PostgreSQL and Chromium (which the report's test renders
# in, headless) from Debian's packages when they are missing (as root, as CI
# runs). Writes tests/.services.env, which the tests
# read; `stop` ends what `start` started and deletes what it made. `start`
# first stops and deletes whatever an interrupted run left behind.
set -euo pipefail
cd "$(dirname "$0")"
STATE=.services
RUN_LINK=$STATE/run  # the run's folder, made by `start`, deleted by `stop`
RUN_PREFIX=/tmp/converge-services.
ENV_FILE=.services.env
MOSQUITTO_PORT=${MOSQUITTO_PORT:-18830}
MOSQUITTO_TLS_PORT=${MOSQUITTO_TLS_PORT:-18831}
MOSQUITTO_USER=converge-test
MOSQUITTO_PASSWORD=converge-test-secret  # a fixed test value, for this loopback broker only
POSTGRES_PORT=${POSTGRES_PORT:-18832}
POSTGRES_ROLE=converge
POSTGRES_DB=converge_test

install_mosquitto() {
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  else
    echo "services: mosquitto is not installed and cannot be installed here" >&2
    return 1
  fi
}

# Chromium, for the test that renders report.html headless (not a server: `start`
# installs it and names it in the env file, `stop` leaves it installed).
chromium_bin() {
  command -v chromium || command -v chromium-browser
}

install_chromium() {
  chromium_bin >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    chromium_bin >/dev/null && return 0
  fi
  echo "services: chromium is not installed and cannot be installed here" >&2
  return 1
}

# The newest PostgreSQL server binaries folder with an initdb; fails when there is none.
postgres_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ]; then echo "$dir"; fi
  done | sort -V | tail -n 1 | grep .
}

install_postgres() {
  postgres_bin >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-common >/dev/null
    # The tests make their own cluster: no "main" cluster on port 5432 besides.
    sed -i 's/^#\?\s*create_main_cluster\b.*/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf 2>/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    postgres_bin >/dev/null && return 0
  fi
  echo "services: postgresql (initdb) is not installed and cannot be installed here" >&2
  return 1
}

# Run a PostgreSQL program as the owner of the cluster: initdb and postgres
# refuse to run as root, so as root that is the system user postgres (from /,
# as the checkout may be a folder that user cannot enter).
as_postgres() {
  if [ "$(id -u)" != 0 ]; then
    "$@"
  elif command -v runuser >/dev/null 2>&1; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && su postgres -s /bin/sh -c '"$0" "$@"' "$@")
  fi
}

# A throwaway CA and a server certificate for 127.0.0.1 that it signs, in $1.
make_certificates() {
  local dir=$1
  if command -v openssl >/dev/null 2>&1; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=converge-test-ca" \
      -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
      -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' \
      > "$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
      -CAcreateserial -days 2 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
  else
    "${PYTHON:-python3}" - "$dir" <<'EOF'
import datetime, ipaddress, pathlib, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

out = pathlib.Path(sys.argv[1])
now = datetime.datetime.now(datetime.timezone.utc)

def cert(subject, key, issuer, signer, extensions):
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())

def write(name, key, certificate):
    (out / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    (out / f"{name}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "converge-test-ca")])
ca = cert(ca_name, ca_key, ca_name, ca_key,
          [(x509.BasicConstraints(ca=True, path_length=None), True)])
server = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), server_key,
              ca_name, ca_key,
              [(x509.BasicConstraints(ca=False, path_length=None), True),
               (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                             x509.DNSName("localhost")]), False)])
write("ca", ca_key, ca)
write("server", server_key, server)
EOF
  fi
}

wait_for_port() {
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "services: nothing listens on 127.0.0.1:$1 (see $2)" >&2
  return 1
}

# A new folder under /tmp for this run's files, that the users postgres and
# mosquitto can enter, in RUN; tests/.services/run links to it, for `stop`.
make_run_folder() {
  mkdir -p "$STATE"
  RUN=$(mktemp -d "${RUN_PREFIX}XXXXXXXXXX")
  ln -s "$RUN" "$RUN_LINK"
  chmod 755 "$RUN"
}

# The folder of the run tests/.services/run links to, if it is one `start` made.
run_folder() {
  local run; run=$(readlink "$RUN_LINK" 2>/dev/null) || return 1
  case $run in "$RUN_PREFIX"*) [ -d "$run" ] && [ -O "$run" ] && echo "$run" ;; *) return 1 ;; esac
}

start_postgres() {
  local bin; bin=$(postgres_bin)
  local dir=$1/pg
  if (exec 3<>"/dev/tcp/127.0.0.1/$POSTGRES_PORT") 2>/dev/null; then
    echo "services: 127.0.0.1:$POSTGRES_PORT is taken by another process;" \
         "set POSTGRES_PORT to a free port" >&2
    return 1
  fi
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
    if ! as_postgres test -w "$dir"; then
      echo "services: the user postgres cannot write to $dir" >&2
      return 1
    fi
  fi
  as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
    --no-locale --no-sync > "$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  # fast and throwaway: no durability, loopback and the socket in the state folder only
  cat >> "$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $POSTGRES_PORT
unix_socket_directories = '$dir'
max_connections = 50
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null \
    || { tail -n 20 "$dir/postgres.log" >&2; return 1; }
  "$bin/createuser" -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres --superuser "$POSTGRES_ROLE"
  "$bin/createdb" -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -O "$POSTGRES_ROLE" "$POSTGRES_DB"
  echo "CONVERGE_POSTGRES_URL=postgresql+psycopg://$POSTGRES_ROLE@127.0.0.1:$POSTGRES_PORT/$POSTGRES_DB" \
    >> "$ENV_FILE"
  echo "services: postgresql $("$bin/postgres" -V | awk '{print $3}') on 127.0.0.1:$POSTGRES_PORT," \
       "database $POSTGRES_DB"
}

stop_postgres() {
  local data=$1/pg/data
  [ -f "$data/postmaster.pid" ] || return 0
  local bin; bin=$(postgres_bin) || return 0
  # a fast shutdown, waited for; an immediate one if that does not end it
  as_postgres "$bin/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 \
    || as_postgres "$bin/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 \
    || true
}

start() {
  stop  # whatever an interrupted run left: servers still up, a stale state folder
  # On any failure, end what was started already, so nothing keeps running.
  trap 'echo "services: start failed; stopping what was started" >&2; stop' EXIT
  make_run_folder
  : > "$ENV_FILE"
  if install_postgres; then
    start_postgres "$RUN"
  fi
  if install_mosquitto; then
    start_mosquitto "$RUN"
  fi
  if install_chromium; then
    echo "CONVERGE_CHROMIUM=$(chromium_bin)" >> "$ENV_FILE"
    echo "services: $("$(chromium_bin)" --version 2>/dev/null || echo chromium)"
  fi
  trap - EXIT
}

# Mosquitto started as root runs as the user mosquitto: it must read these (the group
# mosquitto only, where there is one).
readable_by_mosquitto() {
  if [ "$(id -u)" = 0 ] && getent group mosquitto >/dev/null; then
    chgrp mosquitto "$@"
    chmod 640 "$@"
  else
    chmod 644 "$@"
  fi
}

start_mosquitto() {
  local dir=$1
  local bin; bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  local passwd; passwd=$(command -v mosquitto_passwd || echo /usr/bin/mosquitto_passwd)
  make_certificates "$dir"
  "$passwd" -b -c "$dir/passwd" "$MOSQUITTO_USER" "$MOSQUITTO_PASSWORD"
  readable_by_mosquitto "$dir/server.key" "$dir/passwd"
  cat > "$dir/mosquitto.conf" <<EOF
per_listener_settings true

listener $MOSQUITTO_PORT 127.0.0.1
allow_anonymous true

listener $MOSQUITTO_TLS_PORT 127.0.0.1
cafile $dir/ca.crt
certfile $dir/server.crt
keyfile $dir/server.key
allow_anonymous false
password_file $dir/passwd
EOF
  "$bin" -c "$dir/mosquitto.conf" > "$dir/mosquitto.log" 2>&1 &
  echo $! > "$dir/mosquitto.pid"
  wait_for_port "$MOSQUITTO_PORT" "$dir/mosquitto.log"
  wait_for_port "$MOSQUITTO_TLS_PORT" "$dir/mosquitto.log"
  {
    echo "CONVERGE_MOSQUITTO=mqtt://127.0.0.1:$MOSQUITTO_PORT"
    echo "CONVERGE_MOSQUITTO_TLS=mqtts://127.0.0.1:$MOSQUITTO_TLS_PORT"
    echo "CONVERGE_MOSQUITTO_CA=$dir/ca.crt"
    echo "CONVERGE_MOSQUITTO_USER=$MOSQUITTO_USER"
    echo "CONVERGE_MOSQUITTO_PASSWORD=$MOSQUITTO_PASSWORD"
  } >> "$ENV_FILE"
  echo "services: mosquitto on 127.0.0.1:$MOSQUITTO_PORT, TLS with a password on :$MOSQUITTO_TLS_PORT"
}

stop_mosquitto() {
  local pid; pid=$(cat "$1/mosquitto.pid" 2>/dev/null || true)
  # only a mosquitto: the id in a file an interrupted run left may be another process's now
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mosquitto ]; then
    kill "$pid" 2>/dev/null || true
    # Wait until it is gone, so a `start` right after finds its ports free.
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
}

stop() {
  local run
  if run=$(run_folder); then
    stop_postgres "$run"
    stop_mosquitto "$run"
    rm -rf "$run"
  fi
  rm -rf "$STATE" "$ENV_FILE"
}

"${1:?usage: services.sh start|stop}"
