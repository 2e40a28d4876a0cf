"""The ingest write path: one transaction per batch, idempotent under redelivery.

Only rows that were really inserted feed ``latest`` and, on plain PostgreSQL, the
``readings_1m``/``readings_1h`` rollup tables, so a redelivered message changes nothing.
A batch takes one of three paths:

* **Small batches** (up to ``SMALL_BATCH_ROWS``, the usual case under a steady load): one
  statement inserts the rows, sent as binary arrays, with ``ON CONFLICT DO NOTHING`` and feeds
  ``latest`` and the rollups from what it really inserted; COMMIT is pipelined behind it, so
  without an alert rule to evaluate the whole batch is one round trip.
* **Fast path** (a bigger batch, nothing of it stored yet: a backlog). The rows are
  COPYed (binary) straight into ``readings``; the primary key ``(sensor_id, time)``
  rejects the whole COPY if any row is already there. All rows being new, ``latest``
  and the rollups are upserted from a :class:`Summary` of the batch computed in Python
  (one small row per sensor and per sensor-minute/hour instead of a pass over every
  row), which is COPYed into temporary tables first.
* **Safe path**, after a conflict (a redelivery, or a duplicate inside the batch): the
  transaction is rolled back and the rows are COPYed into a temporary stage, moved into
  ``readings`` with ``ON CONFLICT DO NOTHING``, and only the rows really inserted
  (``RETURNING``) feed ``latest`` and the rollups. After a conflict the next few
  batches go this way directly, since redeliveries come in runs. A batch with a NaN
  value goes this way too.

All paths store the same rows and give bit-identical ``latest`` and rollup rows (SQL adds a
bucket's values in row order, as :func:`summarize` does).
:func:`prepare_rows` does all the Python work of a batch (the binary COPY data and the
summary) without touching the database, so an ingest worker runs it for the next batch
while PostgreSQL still writes this one; :meth:`ReadingWriter.write` then mostly sends bytes.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Protocol

import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

from .db import connect, has_timescaledb

log = logging.getLogger("cimtwin.ingest")

WEEK_S = 7 * 24 * 3600
# 1970-01-05 was a Monday: partitions run Monday to Monday, UTC.
_MONDAY_OFFSET_S = 4 * 24 * 3600

_STAGE = """CREATE TEMP TABLE IF NOT EXISTS readings_stage (
                time timestamptz NOT NULL, sensor_id bigint NOT NULL,
                value double precision NOT NULL, received_at timestamptz NOT NULL
            ) ON COMMIT DELETE ROWS"""
# What a batch adds to latest and the rollups, in one table so it goes in one COPY: kind 0 is a
# sensor's newest reading (time, value, received_at), kinds 1 and 2 its UTC minute and hour
# (bucket in time; count, sum, min, max).
_SUMMARY_STAGE = """CREATE TEMP TABLE IF NOT EXISTS summary_stage (
                        kind smallint NOT NULL, sensor_id bigint NOT NULL, time timestamptz NOT NULL,
                        value double precision, received_at timestamptz,
                        count bigint, sum double precision, min double precision, max double precision
                    ) ON COMMIT DELETE ROWS"""
_COPY = "COPY readings_stage (time, sensor_id, value, received_at) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = ["timestamptz", "int8", "float8", "timestamptz"]
_COPY_DIRECT = "COPY readings (time, sensor_id, value, received_at) FROM STDIN (FORMAT BINARY)"
_COPY_SUMMARY = ("COPY summary_stage (kind, sensor_id, time, value, received_at, count, sum, min, max) "
                 "FROM STDIN (FORMAT BINARY)")
# After a conflict, this many batches take the safe path before the fast one is tried again.
SAFE_BATCHES_AFTER_CONFLICT = 8
# Batches of up to this many rows go as arrays in one statement instead of two COPYs and a
# statement: with COMMIT pipelined behind it, a batch no rule watches costs one round trip (six
# with the COPYs). Under a steady load most batches are this small; a backlog's are not.
SMALL_BATCH_ROWS = 500

_INSERTED = """
    ins AS (
        INSERT INTO readings (time, sensor_id, value, received_at)
        {source}
        ON CONFLICT DO NOTHING
        RETURNING time, sensor_id, value, received_at),
    newest AS (
        INSERT INTO latest AS l (sensor_id, time, value, received_at)
        SELECT DISTINCT ON (sensor_id) sensor_id, time, value, received_at
        FROM ins ORDER BY sensor_id, time DESC
        ON CONFLICT (sensor_id) DO UPDATE
            SET time = excluded.time, value = excluded.value, received_at = excluded.received_at
            WHERE l.time < excluded.time)"""

# A bucket's values are added in the order the rows were inserted (n), as summarize() adds them:
# a Sort + GroupAggregate plan alone would add them in any order (the last bits of a sum, the
# sign of a zero min or max).
_ROLLUP = """
    {name} AS (
        INSERT INTO {table} AS r (sensor_id, bucket, count, sum, min, max)
        SELECT sensor_id, date_trunc({unit}, time), count(*),
               sum(value ORDER BY n), min(value ORDER BY n), max(value ORDER BY n)
        FROM (SELECT sensor_id, time, value, row_number() OVER () AS n FROM ins) i GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (sensor_id, bucket) DO UPDATE
            SET count = r.count + excluded.count, sum = r.sum + excluded.sum,
                min = least(r.min, excluded.min), max = greatest(r.max, excluded.max))"""


_FROM_STAGE = "SELECT time, sensor_id, value, received_at FROM readings_stage"
# A small batch's rows as four binary arrays (see _encode_arrays): one statement, no stage.
_FROM_ARRAYS = "SELECT * FROM unnest(%b::timestamptz[], %b::int8[], %b::float8[], %b::timestamptz[])"


def _move_statement(with_rollups: bool, *, rows: bool = False, source: str = _FROM_STAGE) -> sql.Composable:
    """Stage (or arrays) → readings (new rows only) → latest and rollups; selects the count, or the new rows."""
    parts = [sql.SQL(_INSERTED).format(source=sql.SQL(source))]
    if with_rollups:
        for name, table, unit in (("m1", "readings_1m", "minute"), ("h1", "readings_1h", "hour")):
            parts.append(sql.SQL(_ROLLUP).format(name=sql.Identifier(name), table=sql.Identifier(table),
                                                 unit=sql.Literal(unit)))
    tail = " SELECT time, sensor_id, value, received_at FROM ins" if rows else " SELECT count(*) FROM ins"
    return sql.SQL("WITH ") + sql.SQL(",").join(parts) + sql.SQL(tail)


_UPSERT_LATEST = """
    newest AS (
        INSERT INTO latest AS l (sensor_id, time, value, received_at)
        SELECT sensor_id, time, value, received_at FROM summary_stage WHERE kind = 0 ORDER BY sensor_id
        ON CONFLICT (sensor_id) DO UPDATE
            SET time = excluded.time, value = excluded.value, received_at = excluded.received_at
            WHERE l.time < excluded.time)"""

_UPSERT_ROLLUP = """
    {name} AS (
        INSERT INTO {table} AS r (sensor_id, bucket, count, sum, min, max)
        SELECT sensor_id, time, count, sum, min, max FROM summary_stage WHERE kind = {kind} ORDER BY 1, 2
        ON CONFLICT (sensor_id, bucket) DO UPDATE
            SET count = r.count + excluded.count, sum = r.sum + excluded.sum,
                min = least(r.min, excluded.min), max = greatest(r.max, excluded.max))"""


def _summary_statement(with_rollups: bool) -> sql.Composable:
    parts = [sql.SQL(_UPSERT_LATEST)]
    if with_rollups:
        for name, table, kind in (("m1", "readings_1m", 1), ("h1", "readings_1h", 2)):
            parts.append(sql.SQL(_UPSERT_ROLLUP).format(name=sql.Identifier(name), table=sql.Identifier(table),
                                                        kind=sql.Literal(kind)))
    return sql.SQL("WITH ") + sql.SQL(",").join(parts) + sql.SQL(" SELECT 1")


_DEAD_LETTER = """
    INSERT INTO dead_letters AS d (digest, topic, vendor_code, device_ext_id, reason_code, reason,
                                   payload, payload_size, first_received_at, last_received_at, occurrences)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (digest) DO UPDATE
        SET occurrences = d.occurrences + excluded.occurrences,
            last_received_at = greatest(d.last_received_at, excluded.last_received_at)"""

_PENDING = """
    INSERT INTO pending_devices AS p (vendor_code, ext_id, first_seen, last_seen, messages, last_topic, last_payload,
                                      profile_id)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (vendor_code, ext_id) DO UPDATE
        SET last_seen = greatest(p.last_seen, excluded.last_seen), messages = p.messages + excluded.messages,
            last_topic = excluded.last_topic, last_payload = excluded.last_payload,
            profile_id = coalesce(excluded.profile_id, p.profile_id)"""

# A replayed dead letter: stored (replayed_at set) or still failing (the new reason kept).
_REPLAYED = """
    UPDATE dead_letters SET replay_attempts = replay_attempts + 1, last_replay_reason = %s,
                            replayed_at = CASE WHEN %s THEN now() ELSE replayed_at END
    WHERE id = %s"""

_DEVICES = """
    SELECT v.code, d.ext_id, d.id, d.profile_id, s.channel, s.id, s.min_value, s.max_value
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
    profile_id: int | None = None  # the profile version the device is pinned to


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


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    dead_letter_id: int
    stored: bool
    reason: str | None  # why it still fails (or what part failed), None when fully stored


@dataclass(slots=True)
class PendingDevice:
    vendor_code: str
    ext_id: str
    topic: str
    payload: bytes
    first_seen: datetime
    last_seen: datetime
    messages: int = 1
    profile_id: int | None = None


def _week_start(epoch_s: float) -> int:
    """The Monday-00:00-UTC week start (epoch s) of a time in epoch seconds."""
    return int((epoch_s - _MONDAY_OFFSET_S) // WEEK_S) * WEEK_S + _MONDAY_OFFSET_S


def week_starts(times: Iterable[datetime]) -> set[int]:
    """Epoch seconds of the Monday-00:00-UTC week start of each time."""
    return {_week_start(t.timestamp()) for t in times}


_UTC = timezone.utc
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=_UTC)
_MICROSECOND = timedelta(microseconds=1)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
# One row of binary COPY data: the field count, then each field's length and value.
# (timestamptz, int8, float8, timestamptz): readings.
_READING_ROW = struct.Struct("!hiqiqidiq")
# summary_stage rows: (kind, sensor_id, time, value, received_at, NULL × 4) for latest and
# (kind, sensor_id, bucket, NULL, NULL, count, sum, min, max) for the rollups.
_LATEST_ROW = struct.Struct("!hihiqiqidiqiiii")
_ROLLUP_ROW = struct.Struct("!hihiqiqiiiqididid")
_NULL = -1
# A one-dimensional binary array's header (dimensions, has nulls, element type, length, lower
# bound) and its elements (length, value).
_ARRAY_HEADER = struct.Struct("!iiIii")
_INT8_ITEM = struct.Struct("!iq")
_FLOAT8_ITEM = struct.Struct("!id")
_PG_EPOCH_S = 946_684_800  # 2000-01-01 in Unix time


@dataclass(slots=True)
class Summary:
    """What a batch of new rows adds to ``latest`` and the rollups: ``stage``, binary COPY data
    for ``summary_stage``: each sensor's newest row, and its (count, sum, min, max) per UTC
    minute and hour.
    """

    stage: bytes


class _BinaryArray(bytes):
    """A one-dimensional array in PostgreSQL's binary format, encoded ahead of the write."""

    __slots__ = ()
    oid: int  # the array type
    element: int  # its element type


class _TimestamptzArray(_BinaryArray):
    __slots__ = ()
    oid, element = 1185, 1184


class _Int8Array(_BinaryArray):
    __slots__ = ()
    oid, element = 1016, 20


class _Float8Array(_BinaryArray):
    __slots__ = ()
    oid, element = 1022, 701


class _BinaryArrayDumper(Dumper):
    """Sends a :class:`_BinaryArray` as it is."""

    format = Format.BINARY

    def __init__(self, cls: type, context=None):
        super().__init__(cls, context)
        self.oid = cls.oid

    def dump(self, obj: _BinaryArray) -> bytes:
        return obj


@dataclass(slots=True)
class PreparedRows:
    """A batch of rows ready to send: :func:`prepare_rows`. Either ``arrays`` (a small batch) or
    ``copy_data`` and ``summary``."""

    count: int
    weeks: set[int]  # week starts (epoch s) the rows fall in
    copy_data: bytes | None = None  # the rows as binary COPY data (time, sensor_id, value, received_at)
    summary: Summary | None = None  # None if a value is NaN: the batch takes the safe path
    arrays: tuple[_BinaryArray, ...] | None = None  # (time, sensor_id, value, received_at) arrays


def _micros(t: datetime) -> int:
    """A timestamptz's binary value: microseconds since 2000-01-01 UTC (aware datetimes only)."""
    return (t - _PG_EPOCH) // _MICROSECOND


def _binary_rows(rows: Iterable[tuple], weeks: set[int]) -> Iterator[tuple[int, int, float, int]]:
    """(time, sensor_id, value, received_at) rows with both times as binary timestamptz values
    (µs since 2000-01-01 UTC), adding each time's week start to ``weeks``. A message's readings
    often share their time object and always their received_at: each is converted once."""
    last_t = last_r = None
    t_us = r_us = 0
    for t, sensor_id, value, received_at in rows:
        if t is not last_t:
            last_t, t_us = t, (t - _PG_EPOCH) // _MICROSECOND
            weeks.add(_week_start(t_us // 1_000_000 + _PG_EPOCH_S))
        if received_at is not last_r:
            last_r, r_us = received_at, (received_at - _PG_EPOCH) // _MICROSECOND
        yield t_us, sensor_id, value, r_us


def _encode_readings(rows: Iterable[tuple]) -> tuple[bytes, set[int]]:
    """(time, sensor_id, value, received_at) rows as binary COPY data, and their week starts."""
    pack = _READING_ROW.pack
    weeks: set[int] = set()
    data = b"".join([_COPY_HEADER, *[pack(4, 8, t, 8, s, 8, v, 8, r) for t, s, v, r in _binary_rows(rows, weeks)],
                     _COPY_TRAILER])
    return data, weeks


def _encode_arrays(rows: Iterable[tuple]) -> tuple[tuple[_BinaryArray, ...], set[int]]:
    """(time, sensor_id, value, received_at) rows as four binary arrays, and their week starts."""
    weeks: set[int] = set()
    columns = list(zip(*_binary_rows(rows, weeks))) or [()] * 4
    int8, float8 = _INT8_ITEM.pack, _FLOAT8_ITEM.pack
    return tuple(
        cls(_ARRAY_HEADER.pack(1, 0, cls.element, len(items), 1) + b"".join([pack(8, x) for x in items]))
        for cls, pack, items in zip((_TimestamptzArray, _Int8Array, _Float8Array, _TimestamptzArray),
                                    (int8, int8, float8, int8), columns)), weeks


def _encode_summary(latest: Iterable[tuple], rollups: Iterable[tuple[int, dict[tuple[int, tuple], list]]],
                    starts: dict[tuple, int]) -> bytes:
    """summary_stage rows as binary COPY data: ``latest`` (time, sensor_id, value, received_at)
    rows, then each ``(kind, groups)`` of rollups."""
    out = [_COPY_HEADER]
    append = out.append
    pack = _LATEST_ROW.pack
    for t, sensor_id, value, received_at in latest:
        append(pack(9, 2, 0, 8, sensor_id, 8, _micros(t), 8, value, 8, _micros(received_at),
                    _NULL, _NULL, _NULL, _NULL))
    pack = _ROLLUP_ROW.pack
    for kind, groups in rollups:
        for (sensor_id, bucket), (count, total, lo, hi) in groups.items():
            append(pack(9, 2, kind, 8, sensor_id, 8, starts[bucket], _NULL, _NULL, 8, count, 8, total, 8, lo, 8, hi))
    append(_COPY_TRAILER)
    return b"".join(out)


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise TypeError("naive datetime")  # psycopg's business: prepare_rows gives up on the batch
    return t.astimezone(_UTC)


def summarize(rows: Sequence[tuple[datetime, int, float, datetime]]) -> Summary | None:
    """The :class:`Summary` of rows ``(time, sensor_id, value, received_at)``; None if a value is NaN.

    Pure Python and no database. NaN (which SQL orders above every number) is left to SQL.
    """
    latest: dict[int, tuple] = {}
    minutes: dict[tuple, list] = {}  # (sensor_id, (y, m, d, h, minute)) -> [count, sum, min, max]
    last_t = minute = t_utc = None
    for t, sensor_id, value, received_at in rows:
        if value != value:
            return None
        if t is not last_t:  # the readings of one message often share one time object
            last_t = t
            t_utc = t if t.tzinfo is _UTC else _utc(t)
            minute = (t_utc.year, t_utc.month, t_utc.day, t_utc.hour, t_utc.minute)
        newest = latest.get(sensor_id)
        if newest is None or newest[0] < t_utc:
            latest[sensor_id] = (t_utc, sensor_id, value, received_at)
        key = (sensor_id, minute)
        agg = minutes.get(key)
        if agg is None:
            minutes[key] = [1, value, value, value]
        else:
            # Values are added in row order, as SQL's sum() over the batch does, so both write
            # paths give bit-identical sums; and like SQL's min()/max() on float8, a tie takes
            # the later value (0.0 vs -0.0).
            agg[0] += 1
            agg[1] += value
            if not agg[2] < value:
                agg[2] = value
            if not agg[3] > value:
                agg[3] = value
    # An hour's figures from its minutes': exact when the sensor's rows of that hour fall in one
    # minute (nearly always, in a batch). Otherwise sum, min and max are worked out again from
    # the rows, in row order (float addition is not associative, nor is a tie of 0.0 and -0.0).
    hours: dict[tuple, list] = {}
    spread: set[tuple] = set()
    for (sensor_id, (y, mo, d, h, _)), agg in minutes.items():
        key = (sensor_id, (y, mo, d, h))
        if key in hours:
            spread.add(key)
            hours[key][0] += agg[0]
        else:
            hours[key] = agg[:]
    if spread:
        exact: dict[tuple, list] = {}
        last_t = hour = None
        for t, sensor_id, value, _ in rows:
            if t is not last_t:
                last_t = t
                t_utc = t if t.tzinfo is _UTC else _utc(t)
                hour = (t_utc.year, t_utc.month, t_utc.day, t_utc.hour)
            key = (sensor_id, hour)
            if key in spread:
                agg = exact.get(key)
                if agg is None:
                    exact[key] = [value, value, value]
                else:
                    agg[0] += value
                    if not agg[1] < value:
                        agg[1] = value
                    if not agg[2] > value:
                        agg[2] = value
        for key, (total, lo, hi) in exact.items():
            hours[key][1:] = [total, lo, hi]
    hour_starts = {hour: datetime(*hour, tzinfo=_UTC) for _, hour in hours}
    starts = {hour: _micros(start) for hour, start in hour_starts.items()}
    starts.update({m: _micros(hour_starts[m[:4]].replace(minute=m[4])) for m in {m for _, m in minutes}})
    return Summary(stage=_encode_summary(latest.values(), ((1, minutes), (2, hours)), starts))


def prepare_rows(rows: Sequence[tuple[datetime, int, float, datetime]]) -> PreparedRows | None:
    """A small batch's arrays, or a bigger one's binary COPY data and summary; None if a row is
    not plain (aware datetimes, int sensor id, float value), in which case psycopg adapts the rows."""
    try:
        if len(rows) <= SMALL_BATCH_ROWS:
            arrays, weeks = _encode_arrays(rows)
            return PreparedRows(len(rows), weeks, arrays=arrays)
        copy_data, weeks = _encode_readings(rows)
        return PreparedRows(len(rows), weeks, copy_data=copy_data, summary=summarize(rows))
    except (TypeError, ValueError, OverflowError, struct.error):
        return None


def _lookup_devices(conn: psycopg.Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], DeviceRef]:
    found: dict[tuple[str, str], DeviceRef] = {}
    rows = conn.execute(_DEVICES, ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
    conn.rollback()
    for vendor, ext_id, device_id, profile_id, channel, sensor_id, lo, hi in rows:
        ref = found.setdefault((vendor, ext_id), DeviceRef(device_id, profile_id=profile_id))
        if channel is not None:
            ref.sensors[channel] = SensorRef(sensor_id, lo, hi)
    return found


class DeviceLookup:
    """Registered devices by ``(vendor_code, ext_id)``, on a connection of its own.

    An ingest worker resolves devices for the next batch while the writer's connection
    is busy with the previous one. Thread-safe; a psycopg.OperationalError means the
    database is unreachable (the next call reconnects).
    """

    def __init__(self, url: str, *, application_name: str = "cimtwin-ingest"):
        self._url = url
        self._application_name = application_name
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def __call__(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], DeviceRef]:
        if not keys:
            return {}
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._close()
                self._conn = connect(self._url, application_name=self._application_name)
            try:
                return _lookup_devices(self._conn, keys)
            except psycopg.OperationalError:
                self._close()
                raise

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()


class _HookFailed(Exception):
    """The ``on_inserted`` hook failed on a batch (counted and logged)."""


class InsertedHook(Protocol):
    """What :class:`ReadingWriter` calls with each batch's new readings (the alert engine)."""

    def touches(self, rows: Sequence[tuple[datetime, int, float, datetime]]) -> bool:
        """Whether the hook has anything to do with these rows (else it is not called)."""

    def __call__(self, conn: psycopg.Connection, rows: Sequence[tuple[datetime, int, float, datetime]]) -> None:
        ...


class ReadingWriter:
    """Owns one connection; any psycopg.OperationalError means reconnect and retry the batch.

    ``on_inserted`` (the alert engine) runs inside each batch's transaction with exactly the
    readings that were new, so what it writes commits, or not, together with them; batches
    none of whose sensors it ``touches`` skip it. If it fails, the transaction is rolled back
    and the batch written again without it: the readings are stored and the failure counted.
    """

    def __init__(self, url: str, *, application_name: str = "cimtwin-ingest",
                 on_inserted: InsertedHook | None = None):
        self._url = url
        self._on_inserted = on_inserted
        self.hook_failures = 0
        self.last_hook_error: str | None = None
        self._application_name = application_name
        self._conn: psycopg.Connection | None = None
        self._weeks_ready: set[int] = set()
        self._move: sql.Composable | None = None
        self._move_arrays: sql.Composable | None = None
        self._move_arrays_rows: sql.Composable | None = None
        self._summary_sql: sql.Composable | None = None
        self._safe_batches = 0  # batches to write on the safe path before trying the fast one again
        self.timescaledb = False
        self.fast_batches = 0
        self.safe_batches = 0
        self.small_batches = 0

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            conn = connect(self._url, application_name=self._application_name)
            conn.execute(_STAGE)
            conn.execute(_SUMMARY_STAGE)
            self.timescaledb = has_timescaledb(conn)
            conn.commit()
            for array_type in (_TimestamptzArray, _Int8Array, _Float8Array):
                conn.adapters.register_dumper(array_type, _BinaryArrayDumper)
            rollups = not self.timescaledb
            self._move = _move_statement(with_rollups=rollups, rows=self._on_inserted is not None)
            self._move_arrays = _move_statement(with_rollups=rollups, source=_FROM_ARRAYS)
            self._move_arrays_rows = _move_statement(with_rollups=rollups, rows=True, source=_FROM_ARRAYS)
            self._summary_sql = _summary_statement(with_rollups=rollups)
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
        return _lookup_devices(self._connection(), keys)

    def _ensure_partitions(self, conn: psycopg.Connection, rows: Sequence[tuple],
                           prepared: PreparedRows | None) -> None:
        weeks = prepared.weeks if prepared is not None else week_starts(r[0] for r in rows)
        missing = weeks - self._weeks_ready
        if not missing:
            return
        weeks = [datetime.fromtimestamp(w, tz=timezone.utc) for w in sorted(missing)]
        conn.execute("SELECT cimtwin_ensure_readings_partitions(%s::timestamptz[])", (weeks,))
        conn.commit()
        self._weeks_ready |= missing

    def write(self, rows: Sequence[tuple[datetime, int, float, datetime]], *,
              dead_letters: Sequence[DeadLetter] = (), pending: Sequence[PendingDevice] = (),
              prepared: PreparedRows | None = None, replays: Sequence[ReplayOutcome] = ()) -> int:
        """Store one batch in one transaction; returns how many readings were new.

        ``prepared`` is ``prepare_rows(rows)`` if the caller has already computed it;
        ``replays`` marks the dead letters this batch replayed, in the same transaction.
        """
        if rows and (prepared is None or prepared.count != len(rows)):
            prepared = prepare_rows(rows)
        try:
            return self._write_checked(rows, dead_letters, pending, prepared, replays, hook=True)
        except _HookFailed:
            # Its writes went with the rolled-back transaction; the readings must not.
            return self._write_checked(rows, dead_letters, pending, prepared, replays, hook=False)

    def _write_checked(self, rows, dead_letters, pending, prepared: PreparedRows | None,
                       replays: Sequence[ReplayOutcome], *, hook: bool) -> int:
        try:
            return self._write(rows, dead_letters, pending, prepared, replays, hook=hook)
        except psycopg.errors.CheckViolation:
            if self.timescaledb or not self._weeks_ready:
                raise
            # A partition we knew of was dropped (retention): look again.
            self._weeks_ready.clear()
            return self._write(rows, dead_letters, pending, prepared, replays, hook=hook)

    def _write(self, rows, dead_letters, pending, prepared: PreparedRows | None,
               replays: Sequence[ReplayOutcome], *, hook: bool) -> int:
        conn = self._connection()
        try:
            inserted = 0
            if rows and not self.timescaledb:
                self._ensure_partitions(conn, rows, prepared)
            hook = hook and bool(rows) and self._on_inserted is not None and self._on_inserted.touches(rows)
            if prepared is not None and prepared.arrays is not None:
                inserted = self._write_small(conn, prepared, dead_letters, pending, replays, hook=hook)
                self.small_batches += 1
                return inserted
            fast = bool(rows) and prepared is not None and prepared.summary is not None \
                and self._safe_batches == 0
            if fast:
                try:
                    inserted = self._insert_new(conn, prepared)
                except psycopg.errors.UniqueViolation:
                    # Some row is stored already (a redelivery) or twice in the batch.
                    conn.rollback()
                    self._safe_batches = SAFE_BATCHES_AFTER_CONFLICT
                    fast = False
            elif self._safe_batches:
                self._safe_batches -= 1
            with conn.cursor() as cur:
                new_rows = rows if fast else ()
                if rows and not fast:
                    new_rows = self._insert_missing(cur, rows, prepared)
                    inserted = new_rows if isinstance(new_rows, int) else len(new_rows)
                self._write_side(cur, dead_letters, pending, replays)
            self._commit_with_hook(conn, new_rows if hook else ())
            if rows:
                if fast:
                    self.fast_batches += 1
                else:
                    self.safe_batches += 1
            return inserted
        except BaseException:
            if not conn.closed and not conn.broken:
                try:
                    conn.rollback()
                except psycopg.Error:
                    self.close()
            raise

    def _write_small(self, conn: psycopg.Connection, prepared: PreparedRows, dead_letters, pending, replays, *,
                     hook: bool) -> int:
        """One statement stores a small batch: its new rows (ON CONFLICT DO NOTHING, so a redelivery
        needs no second try) and what they add to ``latest`` and the rollups. The side writes, and
        COMMIT unless the hook runs, are pipelined behind it: then the batch is one round trip."""
        with conn.cursor() as cur:
            with conn.pipeline():
                cur.execute(self._move_arrays_rows if hook else self._move_arrays, prepared.arrays)
                with conn.cursor() as side:
                    self._write_side(side, dead_letters, pending, replays)
                if not hook:
                    conn.commit()
            if not hook:
                return cur.fetchone()[0]
            new_rows = cur.fetchall()
        self._commit_with_hook(conn, new_rows)
        return len(new_rows)

    @staticmethod
    def _write_side(cur: psycopg.Cursor, dead_letters: Sequence[DeadLetter], pending: Sequence[PendingDevice],
                    replays: Sequence[ReplayOutcome]) -> None:
        """A batch's dead letters, pending devices and replay outcomes."""
        if dead_letters:
            cur.executemany(_DEAD_LETTER, [
                (d.digest, d.topic, d.vendor_code, d.device_ext_id, d.reason_code, d.reason,
                 d.payload, len(d.payload), d.received_at, d.received_at, d.occurrences)
                for d in dead_letters])
        if pending:
            cur.executemany(_PENDING, [
                (p.vendor_code, p.ext_id, p.first_seen, p.last_seen, p.messages, p.topic, p.payload, p.profile_id)
                for p in pending])
        if replays:
            cur.executemany(_REPLAYED, [(r.reason, r.stored, r.dead_letter_id) for r in replays])

    def _insert_new(self, conn: psycopg.Connection, prepared: PreparedRows) -> int:
        """Fast path: every row must be new; raises UniqueViolation (transaction aborted) otherwise."""
        summary = prepared.summary
        with conn.cursor() as cur:
            with cur.copy(_COPY_DIRECT) as copy:
                copy.write(prepared.copy_data)
            with cur.copy(_COPY_SUMMARY) as copy:
                copy.write(summary.stage)
            cur.execute(self._summary_sql)
        return prepared.count

    def _insert_missing(self, cur: psycopg.Cursor, rows, prepared: PreparedRows | None) -> int | list[tuple]:
        """Safe path: insert what is not stored yet; only that feeds latest and the rollups.
        Returns the count, or the new rows when a hook needs them."""
        with cur.copy(_COPY) as copy:
            if prepared is not None:
                copy.write(prepared.copy_data)
            else:
                copy.set_types(_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
        cur.execute(self._move)
        if self._on_inserted is None:
            return cur.fetchone()[0]
        return cur.fetchall()

    def _commit_with_hook(self, conn: psycopg.Connection, new_rows) -> None:
        """Runs the hook on the new rows, if any, and commits. The hook's writes that need no answer
        go out with COMMIT, in one round trip; a statement of the batch's own has had its answer
        by then, so an error here is the hook's (or the connection's)."""
        if not new_rows:
            conn.commit()
            return
        try:
            with conn.pipeline():
                self._on_inserted(conn, new_rows)
                conn.commit()
        except psycopg.OperationalError:
            raise
        except Exception as exc:  # noqa: BLE001 - a rule bug must not lose readings
            self.hook_failures += 1
            self.last_hook_error = f"{type(exc).__name__}: {exc}"
            log.exception("the alert engine failed on a batch; storing its readings without it")
            raise _HookFailed from exc
