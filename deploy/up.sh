#!/usr/bin/env bash
# The main job: set up what is missing, then run cimtwin (services, migrations, demo, ingest, API).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/deploy/bootstrap.sh"
exec "$ROOT/.venv/bin/cimtwin" up "$@"
