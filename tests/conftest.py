"""Fixtures: a database built from the migrations once per session, the project's broker,
ingest workers and the API as real subprocesses. Nothing is mocked."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from pydantic import SecretStr

from cimtwin.settings import Settings
from cimtwin.store.migrate import migrate

from .helpers import (TEST_ADMIN_KEY, ApiServer, Broker, IngestProcess, Publisher, clear_mqtt_session,
                      create_database)

# One database per pytest process, so concurrent runs never share or drop each other's.
TEST_DB = os.environ.get("CIMTWIN_TEST_DATABASE", f"cimtwin_test_{os.getpid()}")
DATA_TABLES = ["notification_outbox", "alert_events", "alerts", "alert_rule_state", "alert_rule_versions",
               "alert_rules", "readings", "readings_1m", "readings_1h", "latest", "dead_letters", "pending_devices",
               "sensors", "devices", "mqtt_credentials", "api_keys", "audit_log", "vendors",
               "party_assignments", "parties", "components", "rooms", "floors", "buildings", "areas"]


def _with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Broker:
    """This session's own Mosquitto, with the project's broker configuration."""
    broker = Broker()  # in a directory of its own that the 'mosquitto' user can reach
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def base_settings(broker: Broker) -> Settings:
    # Every API server in the tests accepts this admin key, and ApiServer sends it (tests/helpers.py).
    # The broker's login: its service account, password and ACL files (tests/helpers.py Broker).
    return Settings(mqtt_url=broker.url, admin_api_key=SecretStr(TEST_ADMIN_KEY), **broker.settings_overrides)


@pytest.fixture(scope="session")
def database_url(base_settings: Settings) -> str:
    """A fresh database from the bootstrap's template, with every migration applied."""
    admin = _with_db(base_settings.database_url, "postgres")
    create_database(admin, TEST_DB)
    url = _with_db(base_settings.database_url, TEST_DB)
    migrate(url)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')


@pytest.fixture
def db(database_url: str):
    """An autocommit connection to the test database, emptied before the test."""
    with psycopg.connect(database_url, autocommit=True, options="-c TimeZone=UTC") as conn:
        existing = [t for t in DATA_TABLES
                    if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0] is not None
                    and conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                                     (t,)).fetchone()[0] in ("r", "p")]
        conn.execute(f"TRUNCATE {', '.join(existing)} RESTART IDENTITY CASCADE")
        yield conn


@pytest.fixture
def settings(base_settings: Settings, database_url: str) -> Settings:
    """Settings for this test: the test database and a unique ingest client id."""
    return base_settings.model_copy(update={
        "database_url": database_url,
        "ingest_client_id": f"test-{uuid.uuid4().hex[:10]}",
        "ingest_session_expiry_s": 600,
        "ingest_status_interval_s": 0.5,
    })


@pytest.fixture
def ingest(settings: Settings, db):
    """Starts ingest workers as `cimtwin ingest` subprocesses; stops them and clears their sessions."""
    started: list[IngestProcess] = []

    def start(**overrides) -> IngestProcess:
        proc = IngestProcess(settings.model_copy(update=overrides))
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
    for client_id in {cid for proc in started for cid in proc.client_ids()}:
        clear_mqtt_session(settings, client_id)


@pytest.fixture
def api(settings: Settings, db):
    server = ApiServer(settings)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def publisher(settings: Settings):
    pub = Publisher(settings)
    yield pub
    pub.close()


@pytest.fixture
def register(db):
    """Registers a vendor and devices straight in the database; returns {(device, channel): sensor_id}."""

    def _register(vendor: str, devices: dict[str, list[str]], *, ranges: dict[str, tuple] | None = None) -> dict:
        ranges = ranges or {}
        ids = {}
        vendor_id = db.execute("INSERT INTO vendors (code, name) VALUES (%s, %s) ON CONFLICT (code) DO UPDATE "
                               "SET name = excluded.name RETURNING id", (vendor, vendor.title())).fetchone()[0]
        for ext_id, channels in devices.items():
            device_id = db.execute("INSERT INTO devices (vendor_id, ext_id) VALUES (%s, %s) RETURNING id",
                                   (vendor_id, ext_id)).fetchone()[0]
            for ch in channels:
                lo, hi = ranges.get(ch, (None, None))
                ids[(ext_id, ch)] = db.execute(
                    "INSERT INTO sensors (device_id, channel, quantity, unit, min_value, max_value) "
                    "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id", (device_id, ch, ch, "1", lo, hi)).fetchone()[0]
        return ids

    return _register
