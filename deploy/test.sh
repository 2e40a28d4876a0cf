#!/usr/bin/env bash
# The test suite: set up what is missing, then run pytest against the real PostgreSQL and Mosquitto.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/deploy/bootstrap.sh" --test
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
