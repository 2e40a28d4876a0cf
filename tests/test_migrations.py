"""Every migration applies to an empty database, and applying them again changes nothing."""

from __future__ import annotations

import psycopg
import pytest

from cimtwin.store.migrate import discover, migrate

from .conftest import _with_db
from .helpers import create_database


@pytest.fixture
def empty_database(base_settings):
    admin = _with_db(base_settings.database_url, "postgres")
    name = "cimtwin_migrate_check"
    create_database(admin, name)
    yield _with_db(base_settings.database_url, name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_all_migrations_apply_to_an_empty_database_once(empty_database):
    first = migrate(empty_database)
    versions = sorted({m.version for m in discover()})
    assert first.current_version == versions[-1]
    assert [n for n in first.applied if "@" not in n] == [m.path.name for m in discover() if m.variant is None]
    assert all(f"@{first.backend}" in n for n in first.applied if "@" in n)

    again = migrate(empty_database)
    assert again.applied == [] and again.backend == first.backend

    with psycopg.connect(empty_database) as conn:
        names = {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public'")}
        assert {"vendors", "devices", "sensors", "readings", "latest", "readings_1m", "readings_1h",
                "dead_letters", "pending_devices"} <= names
        # The unique key that makes redelivery a no-op.
        key = conn.execute("""SELECT array_agg(a.attname ORDER BY k.ord)
                              FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                              JOIN pg_attribute a ON a.attnum = k.attnum
                              WHERE i.indrelid = 'readings'::regclass AND i.indisunique
                                AND a.attrelid = 'readings'::regclass GROUP BY i.indexrelid""").fetchone()[0]
        assert key == ["sensor_id", "time"]
        if first.backend == "plain":
            kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'readings'::regclass").fetchone()[0]
            assert kind == "p"  # natively partitioned


def test_plain_partitions_are_made_on_demand_and_expire(database_url, db):
    if db.execute("SELECT value FROM cimtwin_meta WHERE key = 'backend'").fetchone()[0] != "plain":
        pytest.skip("plain-PostgreSQL partitions; this database uses TimescaleDB")
    # Weeks no other test writes to (partitions outlive a test's TRUNCATE).
    made = db.execute("SELECT cimtwin_ensure_readings_partitions(ARRAY['2001-03-05 00:00+00',"
                      "'2001-03-12 00:00+00']::timestamptz[])").fetchone()[0]
    assert made == 2
    assert db.execute("SELECT cimtwin_ensure_readings_partitions(ARRAY['2001-03-05 00:00+00']"
                      "::timestamptz[])").fetchone()[0] == 0
    db.execute("INSERT INTO readings VALUES ('2001-03-07 18:00+00', 1, 2.6, now())")
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("INSERT INTO readings VALUES ('1999-01-01 00:00+00', 1, 2.6, now())")
    dropped = db.execute("SELECT cimtwin_drop_readings_before('2001-03-13 00:00+00')").fetchone()[0]
    assert dropped == 1
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 0
    assert db.execute("SELECT to_regclass('readings_p20010312')").fetchone()[0] is not None


@pytest.mark.timescaledb
def test_timescaledb_objects(db):
    if db.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None:
        pytest.skip("TimescaleDB is not installed on this server")
    assert db.execute("SELECT count(*) FROM timescaledb_information.hypertables "
                      "WHERE hypertable_name = 'readings' AND compression_enabled").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM timescaledb_information.continuous_aggregates "
                      "WHERE view_name IN ('readings_1m', 'readings_1h')").fetchone()[0] == 2


def test_maintain_command_applies_retention(settings, db):
    """`cimtwin maintain` drops weekly partitions wholly older than CIMTWIN_RETENTION_DAYS."""
    import subprocess
    import sys

    from cimtwin.settings import settings_env

    if db.execute("SELECT value FROM cimtwin_meta WHERE key = 'backend'").fetchone()[0] != "plain":
        pytest.skip("TimescaleDB applies retention with its own policy")
    db.execute("SELECT cimtwin_ensure_readings_partitions(ARRAY[date_trunc('week', now() - interval '60 days'),"
               "date_trunc('week', now())]::timestamptz[])")
    db.execute("INSERT INTO readings VALUES (now() - interval '60 days', 1, 1, now()), (now(), 1, 2, now())")
    env = settings_env(settings.model_copy(update={"retention_days": 30}))
    subprocess.run([sys.executable, "-m", "cimtwin.cli", "maintain"], env=env, check=True, timeout=60)
    assert db.execute("SELECT value FROM readings").fetchall() == [(2.0,)]
