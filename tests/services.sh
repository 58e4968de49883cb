#!/usr/bin/env bash
# Start or stop the services the test suite uses beyond what pip installs:
# a real Mosquitto broker on loopback, with an anonymous plain listener and a
# TLS listener that wants a user name and password (a throwaway CA, server
# certificate and password file are made at start in tests/.services/).
# Installs Mosquitto from Debian's packages when it is missing (as root, as CI
# runs). Writes tests/.services.env, which the tests read; `stop` ends what
# `start` started and deletes what it made.
set -euo pipefail
cd "$(dirname "$0")"
STATE=.services
ENV_FILE=.services.env
MOSQUITTO_PORT=${MOSQUITTO_PORT:-18830}
MOSQUITTO_TLS_PORT=${MOSQUITTO_TLS_PORT:-18831}
MOSQUITTO_USER=converge-test
MOSQUITTO_PASSWORD=converge-test-secret  # a fixed test value, for this loopback broker only

install_mosquitto() {
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  else
    echo "services: mosquitto is not installed and cannot be installed here" >&2
    return 1
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
  echo "services: nothing listens on 127.0.0.1:$1 (see tests/$STATE/mosquitto.log)" >&2
  return 1
}

start() {
  mkdir -p "$STATE"
  : > "$ENV_FILE"
  if install_mosquitto; then
    local bin; bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    local dir; dir=$(cd "$STATE" && pwd)
    local passwd; passwd=$(command -v mosquitto_passwd || echo /usr/bin/mosquitto_passwd)
    make_certificates "$dir"
    "$passwd" -b -c "$dir/passwd" "$MOSQUITTO_USER" "$MOSQUITTO_PASSWORD"
    # Mosquitto started as root runs as the user mosquitto: it must read these.
    chmod 644 "$dir/server.key" "$dir/passwd"
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
    echo $! > "$STATE/mosquitto.pid"
    wait_for_port "$MOSQUITTO_PORT"
    wait_for_port "$MOSQUITTO_TLS_PORT"
    {
      echo "CONVERGE_MOSQUITTO=mqtt://127.0.0.1:$MOSQUITTO_PORT"
      echo "CONVERGE_MOSQUITTO_TLS=mqtts://127.0.0.1:$MOSQUITTO_TLS_PORT"
      echo "CONVERGE_MOSQUITTO_CA=$dir/ca.crt"
      echo "CONVERGE_MOSQUITTO_USER=$MOSQUITTO_USER"
      echo "CONVERGE_MOSQUITTO_PASSWORD=$MOSQUITTO_PASSWORD"
    } >> "$ENV_FILE"
    echo "services: mosquitto on 127.0.0.1:$MOSQUITTO_PORT, TLS with a password on :$MOSQUITTO_TLS_PORT"
  fi
}

stop() {
  if [ -f "$STATE/mosquitto.pid" ]; then
    local pid; pid=$(cat "$STATE/mosquitto.pid")
    kill "$pid" 2>/dev/null || true
    # Wait until it is gone, so a `start` right after finds its ports free.
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -rf "$STATE" "$ENV_FILE"
}

"${1:?usage: services.sh start|stop}"
