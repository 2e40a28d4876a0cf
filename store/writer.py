"""The ingest write path: one transaction per batch, idempotent under redelivery.

Rows are COPYed (binary) into a temporary stage, then moved into ``readings`` with
``ON CONFLICT DO NOTHING``. Only rows that were really inserted feed ``latest`` and,
on plain PostgreSQL, the ``readings_1m``/``readings_1h`` rollup tables, so a
redelivered message changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg
from psycopg import sql

from .db import connect, has_timescaledb

WEEK_S = 7 * 24 * 3600
# 1970-01-05 was a Monday: partitions run Monday to Monday, UTC.
_MONDAY_OFFSET_S = 4 * 24 * 3600

_STAGE = """CREATE TEMP TABLE IF NOT EXISTS readings_stage (
                time timestamptz NOT NULL, sensor_id bigint NOT NULL,
                value double precision NOT NULL, received_at timestamptz NOT NULL
            ) ON COMMIT DELETE ROWS"""
_COPY = "COPY readings_stage (time, sensor_id, value, received_at) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = ["timestamptz", "int8", "float8", "timestamptz"]

_INSERTED = """
    ins AS (
        INSERT INTO readings (time, sensor_id, value, received_at)
        SELECT time, sensor_id, value, received_at FROM readings_stage
        ON CONFLICT DO NOTHING
        RETURNING time, sensor_id, value, received_at),
    newest AS (
        INSERT INTO latest AS l (sensor_id, time, value, received_at)
        SELECT DISTINCT ON (sensor_id) sensor_id, time, value, received_at
        FROM ins ORDER BY sensor_id, time DESC
        ON CONFLICT (sensor_id) DO UPDATE
            SET time = excluded.time, value = excluded.value, received_at = excluded.received_at
            WHERE l.time < excluded.time)"""

_ROLLUP = """
    {name} AS (
        INSERT INTO {table} AS r (sensor_id, bucket, count, sum, min, max)
        SELECT sensor_id, date_trunc({unit}, time), count(*), sum(value), min(value), max(value)
        FROM ins GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (sensor_id, bucket) DO UPDATE
            SET count = r.count + excluded.count, sum = r.sum + excluded.sum,
                min = least(r.min, excluded.min), max = greatest(r.max, excluded.max))"""


def _move_statement(with_rollups: bool) -> sql.Composable:
    parts = [sql.SQL(_INSERTED)]
    if with_rollups:
        for name, table, unit in (("m1", "readings_1m", "minute"), ("h1", "readings_1h", "hour")):
            parts.append(sql.SQL(_ROLLUP).format(name=sql.Identifier(name), table=sql.Identifier(table),
                                                 unit=sql.Literal(unit)))
    return sql.SQL("WITH ") + sql.SQL(",").join(parts) + sql.SQL(" SELECT count(*) FROM ins")


_DEAD_LETTER = """
    INSERT INTO dead_letters AS d (digest, topic, vendor_code, device_ext_id, reason_code, reason,
                                   payload, payload_size, first_received_at, last_received_at, occurrences)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (digest) DO UPDATE
        SET occurrences = d.occurrences + excluded.occurrences,
            last_received_at = greatest(d.last_received_at, excluded.last_received_at)"""

_PENDING = """
    INSERT INTO pending_devices AS p (vendor_code, ext_id, first_seen, last_seen, messages, last_topic, last_payload)
    VALUES (%s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (vendor_code, ext_id) DO UPDATE
        SET last_seen = greatest(p.last_seen, excluded.last_seen), messages = p.messages + excluded.messages,
            last_topic = excluded.last_topic, last_payload = excluded.last_payload"""

_DEVICES = """
    SELECT v.code, d.ext_id, d.id, s.channel, s.id, s.min_value, s.max_value
    FROM unnest(%s::text[], %s::text[]) AS k(vendor_code, ext_id)
    JOIN vendors v ON v.code = k.vendor_code
    JOIN devices d ON d.vendor_id = v.id AND d.ext_id = k.ext_id
    LEFT JOIN sensors s ON s.device_id = d.id"""


@dataclass(frozen=True, slots=True)
class SensorRef:
    id: int
    min_value: float | None
    max_value: float | None


@dataclass(slots=True)
class DeviceRef:
    id: int
    sensors: dict[str, SensorRef] = field(default_factory=dict)


@dataclass(slots=True)
class DeadLetter:
    digest: bytes
    topic: str
    vendor_code: str | None
    device_ext_id: str | None
    reason_code: str
    reason: str
    payload: bytes
    received_at: datetime
    occurrences: int = 1


@dataclass(slots=True)
class PendingDevice:
    vendor_code: str
    ext_id: str
    topic: str
    payload: bytes
    first_seen: datetime
    last_seen: datetime
    messages: int = 1


def week_starts(times: Iterable[datetime]) -> set[int]:
    """Epoch seconds of the Monday-00:00-UTC week start of each time."""
    return {int((t.timestamp() - _MONDAY_OFFSET_S) // WEEK_S) * WEEK_S + _MONDAY_OFFSET_S for t in times}


class ReadingWriter:
    """Owns one connection; any psycopg.OperationalError means reconnect and retry the batch."""

    def __init__(self, url: str, *, application_name: str = "cimtwin-ingest"):
        self._url = url
        self._application_name = application_name
        self._conn: psycopg.Connection | None = None
        self._weeks_ready: set[int] = set()
        self._move: sql.Composable | None = None
        self.timescaledb = False

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            conn = connect(self._url, application_name=self._application_name)
            conn.execute(_STAGE)
            self.timescaledb = has_timescaledb(conn)
            conn.commit()
            self._move = _move_statement(with_rollups=not self.timescaledb)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def ping(self) -> None:
        self._connection().execute("SELECT 1")
        self._conn.rollback()

    def lookup_devices(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], DeviceRef]:
        """Registered devices among ``(vendor_code, ext_id)`` keys, with their sensors."""
        if not keys:
            return {}
        conn = self._connection()
        found: dict[tuple[str, str], DeviceRef] = {}
        rows = conn.execute(_DEVICES, ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
        conn.rollback()
        for vendor, ext_id, device_id, channel, sensor_id, lo, hi in rows:
            ref = found.setdefault((vendor, ext_id), DeviceRef(device_id))
            if channel is not None:
                ref.sensors[channel] = SensorRef(sensor_id, lo, hi)
        return found

    def _ensure_partitions(self, conn: psycopg.Connection, rows: Sequence[tuple]) -> None:
        missing = week_starts(r[0] for r in rows) - self._weeks_ready
        if not missing:
            return
        weeks = [datetime.fromtimestamp(w, tz=timezone.utc) for w in sorted(missing)]
        conn.execute("SELECT cimtwin_ensure_readings_partitions(%s::timestamptz[])", (weeks,))
        conn.commit()
        self._weeks_ready |= missing

    def write(self, rows: Sequence[tuple[datetime, int, float, datetime]], *,
              dead_letters: Sequence[DeadLetter] = (), pending: Sequence[PendingDevice] = ()) -> int:
        """Store one batch in one transaction; returns how many readings were new."""
        try:
            return self._write(rows, dead_letters, pending)
        except psycopg.errors.CheckViolation:
            if self.timescaledb or not self._weeks_ready:
                raise
            # A partition we knew of was dropped (retention): look again.
            self._weeks_ready.clear()
            return self._write(rows, dead_letters, pending)

    def _write(self, rows, dead_letters, pending) -> int:
        conn = self._connection()
        try:
            inserted = 0
            if rows and not self.timescaledb:
                self._ensure_partitions(conn, rows)
            with conn.cursor() as cur:
                if rows:
                    with cur.copy(_COPY) as copy:
                        copy.set_types(_COPY_TYPES)
                        for row in rows:
                            copy.write_row(row)
                    inserted = cur.execute(self._move).fetchone()[0]
                if dead_letters:
                    cur.executemany(_DEAD_LETTER, [
                        (d.digest, d.topic, d.vendor_code, d.device_ext_id, d.reason_code, d.reason,
                         d.payload, len(d.payload), d.received_at, d.received_at, d.occurrences)
                        for d in dead_letters])
                if pending:
                    cur.executemany(_PENDING, [
                        (p.vendor_code, p.ext_id, p.first_seen, p.last_seen, p.messages, p.topic, p.payload)
                        for p in pending])
            conn.commit()
            return inserted
        except BaseException:
            if not conn.closed and not conn.broken:
                try:
                    conn.rollback()
                except psycopg.Error:
                    self.close()
            raise
