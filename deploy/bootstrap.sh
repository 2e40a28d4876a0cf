#!/usr/bin/env bash
# Idempotent set-up for cimtwin on Debian: installs what is missing, starts what is
# not running, and leaves everything that already works alone.
#
#   deploy/bootstrap.sh [--test]     (--test adds what the test suite needs)
#
# Uses a PostgreSQL already listening on the configured host/port, else installs and
# starts Debian's. Runs cimtwin's own Mosquitto on CIMTWIN_MQTT port (default 1884)
# with deploy/mosquitto/cimtwin.conf, unless a broker already answers there. The broker
# requires a login: the service account's password is made once, into
# $STATE_DIR/mqtt-service.password (0600); `cimtwin broker-sync` writes the password and ACL files.
# Builds the console (web/ → web/dist, npm packages from package-lock.json) when its sources changed.
# With --test also Debian's chromium, which the browser tests drive headless.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

STATE_DIR=${CIMTWIN_STATE_DIR:-$ROOT/var}
DATABASE_URL=${CIMTWIN_DATABASE_URL:-postgresql://cimtwin:cimtwin@127.0.0.1:5432/cimtwin}
MQTT_URL=${CIMTWIN_MQTT_URL:-mqtt://127.0.0.1:1884}

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- URL pieces -------------------------------------------------------------------
url_field() {  # url_field URL host|port|user|password|db
  python3 - "$1" "$2" <<'PY'
import sys
from urllib.parse import urlsplit, unquote
u = urlsplit(sys.argv[1]); f = sys.argv[2]
v = {"host": u.hostname or "127.0.0.1", "port": u.port or {"mqtt": 1883, "postgresql": 5432, "postgres": 5432}.get(u.scheme, ""),
     "user": unquote(u.username or ""), "password": unquote(u.password or ""), "db": u.path.lstrip("/")}[f]
print(v)
PY
}
PG_HOST=$(url_field "$DATABASE_URL" host); PG_PORT=$(url_field "$DATABASE_URL" port)
PG_USER=$(url_field "$DATABASE_URL" user); PG_PASS=$(url_field "$DATABASE_URL" password)
PG_DB=$(url_field "$DATABASE_URL" db)
MQTT_HOST=$(url_field "$MQTT_URL" host); MQTT_PORT=$(url_field "$MQTT_URL" port)
is_local() { case "$1" in 127.*|localhost|::1) return 0;; *) return 1;; esac; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# --- packages ---------------------------------------------------------------------
APT_UPDATED=0
apt_install() {  # installs the packages among "$@" that are not installed yet
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  if [ $APT_UPDATED -eq 0 ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- PostgreSQL + PostGIS ---------------------------------------------------------
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}
pg_version() { ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1; }

setup_postgres() {
  if ! is_local "$PG_HOST"; then
    say "PostgreSQL at $PG_HOST:$PG_PORT is remote; not managing it"; return
  fi
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(pg_version)" ]; then
    apt_install postgresql postgresql-contrib
  fi
  local v; v=$(pg_version)
  apt_install "postgresql-$v-postgis-3" postgresql-client
  if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
    say "starting PostgreSQL $v"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>/dev/null \
      || $SUDO pg_ctlcluster "$v" main start
    for _ in $(seq 30); do pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && break; sleep 1; done
  fi
  # Role, database and a template with the extensions (creating them needs a superuser).
  as_postgres psql -q -v ON_ERROR_STOP=1 -v VERBOSITY=terse -p "$PG_PORT" -d postgres <<SQL
SET client_min_messages = warning;
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', '$PG_USER', '$PG_PASS')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', 'cimtwin_template', '$PG_USER')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'cimtwin_template') \gexec
\c cimtwin_template
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS postgis;
\c postgres
UPDATE pg_database SET datistemplate = true WHERE datname = 'cimtwin_template';
SELECT format('CREATE DATABASE %I OWNER %I TEMPLATE cimtwin_template', '$PG_DB', '$PG_USER')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_DB') \gexec
SQL
  # TimescaleDB is used when the server has it preloaded; never required.
  as_postgres psql -q -p "$PG_PORT" -d "$PG_DB" -c "CREATE EXTENSION IF NOT EXISTS timescaledb" >/dev/null 2>&1 \
    && as_postgres psql -q -p "$PG_PORT" -d cimtwin_template -c "CREATE EXTENSION IF NOT EXISTS timescaledb" >/dev/null 2>&1 \
    || true
}

# --- Mosquitto ----------------------------------------------------------------------
setup_mosquitto() {
  apt_install mosquitto mosquitto-clients
  if ! is_local "$MQTT_HOST"; then say "broker at $MQTT_HOST is remote; not managing it"; return; fi
  local dir="$STATE_DIR/mosquitto"
  local auth_dir=${CIMTWIN_BROKER_AUTH_DIR:-$dir} pid_file=${CIMTWIN_BROKER_PID_FILE:-$dir/mosquitto.pid}
  local as_mosquitto=0
  [ "$(id -u)" -eq 0 ] && id mosquitto >/dev/null 2>&1 && as_mosquitto=1
  local running=""  # the pid of cimtwin's own broker, when it is the one answering
  if port_open "$MQTT_HOST" "$MQTT_PORT"; then
    running=$(cat "$pid_file" 2>/dev/null || true)
    if [ -z "$running" ] || [ "$(cat "/proc/$running/comm" 2>/dev/null)" != "mosquitto" ]; then
      say "a broker that is not cimtwin's answers on $MQTT_HOST:$MQTT_PORT; not managing it"; return
    fi
  fi
  mkdir -p "$dir" "$auth_dir"
  if [ $as_mosquitto -eq 1 ]; then chown mosquitto: "$dir" "$auth_dir"; fi
  {
    echo "# Written by deploy/bootstrap.sh; edit deploy/mosquitto/cimtwin.conf instead."
    echo "listener $MQTT_PORT $MQTT_HOST"
    echo "persistence_location $dir/"
    echo "pid_file $pid_file"
    echo "log_dest file $dir/mosquitto.log"
    echo "password_file $auth_dir/passwd"
    echo "acl_file $auth_dir/acl"
    if [ $as_mosquitto -eq 1 ]; then echo "user mosquitto"; fi
    cat "$ROOT/deploy/mosquitto/cimtwin.conf"
  } > "$dir/mosquitto.conf.new"
  # The service account's password (made once) and the password and ACL files, keeping any
  # vendor entries they hold; `cimtwin up` then syncs them from the database.
  CIMTWIN_STATE_DIR="$STATE_DIR" CIMTWIN_BROKER_AUTH_DIR="$auth_dir" CIMTWIN_BROKER_PID_FILE="$pid_file" \
    "$ROOT/.venv/bin/cimtwin" broker-sync --no-database
  if [ -n "$running" ]; then
    if cmp -s "$dir/mosquitto.conf.new" "$dir/mosquitto.conf"; then rm -f "$dir/mosquitto.conf.new"; return; fi
    # An older configuration (say, one without logins): the reloadable settings, password and
    # ACL files included, take effect on SIGHUP; a changed listener needs a restart.
    mv "$dir/mosquitto.conf.new" "$dir/mosquitto.conf"
    if [ $as_mosquitto -eq 1 ]; then chown mosquitto: "$dir/mosquitto.conf"; fi
    say "reloading cimtwin's Mosquitto (pid $running) with the new configuration"
    kill -HUP "$running"; return
  fi
  mv "$dir/mosquitto.conf.new" "$dir/mosquitto.conf"
  if [ $as_mosquitto -eq 1 ]; then chown -R mosquitto: "$dir"; fi
  say "starting cimtwin's Mosquitto on $MQTT_HOST:$MQTT_PORT"
  mosquitto -d -c "$dir/mosquitto.conf"
  for _ in $(seq 20); do port_open "$MQTT_HOST" "$MQTT_PORT" && return; sleep 0.25; done
  echo "Mosquitto did not start; see $dir/mosquitto.log" >&2; exit 1
}

# --- Python -------------------------------------------------------------------------
setup_python() {
  local venv="$ROOT/.venv"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv python3-pip
    say "creating $venv"
    python3 -m venv "$venv"
  fi
  # The stamp records what was installed: the pyproject hash, plus "[test]" with the test extras.
  local extras="" stamp="$venv/.cimtwin-installed" hash
  [ $WITH_TEST -eq 1 ] && extras="[test]"
  hash=$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)
  local want="$hash$extras" have; have=$(cat "$stamp" 2>/dev/null || true)
  if [ "$have" != "$want" ] && [ "$have" != "$hash[test]" ]; then
    say "installing cimtwin$extras into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$ROOT$extras"
    echo "$want" > "$stamp"
  fi
}

# --- Console (web/) -----------------------------------------------------------------
# `npm ci` when package-lock.json changed since the last install, `npm run build` when any
# file of web/ (outside node_modules/ and dist/) changed since the last build. The stamps
# live in web/node_modules, so a fresh `npm ci` (which empties it) also means a rebuild.
tree_hash() {  # tree_hash DIR: one hash over the names and contents of DIR's source files
  (cd "$1" && find . \( -path ./node_modules -o -path ./dist \) -prune -o -type f -print0 \
    | LC_ALL=C sort -z | xargs -0 -r sha256sum) | sha256sum | cut -c1-16
}

node_ok() {  # Vite 8 needs Node.js ^20.19 or >= 22.12
  node -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>22||(a===22&&b>=12)||(a===20&&b>=19)?0:1)' 2>/dev/null
}

setup_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi
  node_ok && return 0
  # Debian 12's nodejs is 18: take a newer Node.js from the npm registry (the node-linux-<arch>
  # packages hold the official binaries) into $STATE_DIR/node, and use it for the console only.
  local arch; case "$(uname -m)" in x86_64) arch=x64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
  local prefix="$STATE_DIR/node"
  if [ ! -x "$prefix/node_modules/node-linux-$arch/bin/node" ]; then
    say "Node.js $(node -v) is too old for the console's build; installing node-linux-$arch@22 into $prefix"
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "node-linux-$arch@22" >/dev/null
  fi
  export PATH="$prefix/node_modules/node-linux-$arch/bin:$PATH"
  node_ok || { say "Node.js >= 20.19 is needed to build the console; found $(node -v)"; exit 1; }
}

setup_console() {
  local web="$ROOT/web"
  [ -f "$web/package.json" ] || return 0
  setup_node
  local lock_stamp="$web/node_modules/.cimtwin-lock" build_stamp="$web/node_modules/.cimtwin-build" hash
  hash=$(sha256sum "$web/package-lock.json" | cut -c1-16)
  if [ "$(cat "$lock_stamp" 2>/dev/null || true)" != "$hash" ]; then
    say "installing the console's npm packages (npm ci in web/)"
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$hash" > "$lock_stamp"
  fi
  hash=$(tree_hash "$web")
  if [ ! -f "$web/dist/index.html" ] || [ "$(cat "$build_stamp" 2>/dev/null || true)" != "$hash" ]; then
    say "building the console (npm run build in web/)"
    local log; log=$(mktemp)
    (cd "$web" && npm run build >"$log" 2>&1) || { cat "$log" >&2; rm -f "$log"; exit 1; }
    rm -f "$log"
    echo "$hash" > "$build_stamp"
  fi
}

setup_postgres
setup_python     # before the broker: `cimtwin broker-sync` writes its password and ACL files
setup_mosquitto
setup_console
# The tests read files with GDAL's tools and drive the console in Debian's Chromium (headless;
# a CJK font so that the Chinese UI in their screenshots is legible).
if [ $WITH_TEST -eq 1 ]; then apt_install gdal-bin chromium fonts-wqy-microhei; fi
say "ready: database $PG_HOST:$PG_PORT/$PG_DB, broker $MQTT_HOST:$MQTT_PORT"
