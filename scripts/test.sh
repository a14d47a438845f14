#!/usr/bin/env bash
# Runs every test, starting real brokers as local processes (see testkit/README.md).
# Brokers come from scripts/install-brokers.sh, or from POLYBRIDGE_<BROKER>_URL variables
# pointing at running ones (e.g. `docker compose up`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
