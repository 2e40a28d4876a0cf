"""Reading queries (async, for the API)."""

from __future__ import annotations

from datetime import datetime, timedelta

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

# Functions that read vendor-owned rows take ``vendor_id``: None reads every vendor's, a
# vendor's id confines the query to that vendor's sensors, dead letters and pending devices.
_OWNS_SENSOR = """(%(vendor_id)s::bigint IS NULL OR EXISTS (
    SELECT 1 FROM sensors s JOIN devices d ON d.id = s.device_id
    WHERE s.id = %(sensor)s AND d.vendor_id = %(vendor_id)s))"""

# Buckets are aligned to this origin (a Monday, UTC), so 1d is UTC days and 7d is ISO weeks.
_BUCKET_ORIGIN = datetime.fromisoformat("2000-01-03T00:00:00+00:00")


async def raw_readings(pool: AsyncConnectionPool, *, sensor_id: int, start: datetime, end: datetime,
                       limit: int, descending: bool = False, vendor_id: int | None) -> list[dict]:
    """Up to ``limit`` readings in [start, end), oldest (or newest) first."""
    order = sql.SQL("DESC" if descending else "ASC")
    query = sql.SQL("""SELECT time, value, received_at FROM readings
                       WHERE sensor_id = %(sensor)s AND time >= %(start)s AND time < %(end)s AND {owns}
                       ORDER BY time {order} LIMIT %(limit)s""").format(order=order, owns=sql.SQL(_OWNS_SENSOR))
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(query, {
            "sensor": sensor_id, "start": start, "end": end, "limit": limit, "vendor_id": vendor_id})
        return await cur.fetchall()


async def bucketed_readings(pool: AsyncConnectionPool, *, sensor_id: int, start: datetime, end: datetime,
                            bucket: timedelta, vendor_id: int | None) -> list[dict]:
    """avg/min/max/count per bucket, from readings_1h when the bucket is whole hours, else readings_1m."""
    table = "readings_1h" if bucket % timedelta(hours=1) == timedelta(0) else "readings_1m"
    query = sql.SQL("""
        SELECT date_bin(%(bucket)s, bucket, %(origin)s) AS bucket,
               sum(sum) / sum(count) AS avg, min(min) AS min, max(max) AS max, sum(count)::bigint AS count
        FROM {table}
        WHERE sensor_id = %(sensor)s AND bucket >= %(start)s AND bucket < %(end)s AND {owns}
        GROUP BY 1 ORDER BY 1""").format(table=sql.Identifier(table), owns=sql.SQL(_OWNS_SENSOR))
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(query, {
            "bucket": bucket, "origin": _BUCKET_ORIGIN, "sensor": sensor_id, "start": start, "end": end,
            "vendor_id": vendor_id})
        return await cur.fetchall()


async def latest_readings(pool: AsyncConnectionPool, *, vendor: str | None, device: str | None,
                          sensor_ids: list[int] | None, limit: int, offset: int, vendor_id: int | None) -> list[dict]:
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute("""
            SELECT s.id AS sensor_id, v.code AS vendor, d.ext_id AS device, s.channel, s.quantity, s.unit,
                   l.time, l.value, l.received_at
            FROM sensors s
            JOIN devices d ON d.id = s.device_id
            JOIN vendors v ON v.id = d.vendor_id
            JOIN latest l ON l.sensor_id = s.id
            WHERE (%(vendor)s::text IS NULL OR v.code = %(vendor)s)
              AND (%(device)s::text IS NULL OR d.ext_id = %(device)s)
              AND (%(sensors)s::bigint[] IS NULL OR s.id = ANY(%(sensors)s))
              AND (%(vendor_id)s::bigint IS NULL OR d.vendor_id = %(vendor_id)s)
            ORDER BY s.id LIMIT %(limit)s OFFSET %(offset)s""",
            {"vendor": vendor, "device": device, "sensors": sensor_ids, "limit": limit, "offset": offset,
             "vendor_id": vendor_id})
        return await cur.fetchall()


async def dead_letters(pool: AsyncConnectionPool, *, vendor: str | None, reason_code: str | None,
                       since: datetime | None, limit: int, offset: int, vendor_id: int | None) -> list[dict]:
    """Newest first. Scoped to a vendor, only the dead letters of its topics (never those without a vendor)."""
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute("""
            SELECT id, topic, vendor_code AS vendor, device_ext_id AS device, reason_code, reason,
                   payload, payload_size, first_received_at, last_received_at, occurrences, replayed_at
            FROM dead_letters
            WHERE (%(vendor)s::text IS NULL OR vendor_code = %(vendor)s)
              AND (%(reason)s::text IS NULL OR reason_code = %(reason)s)
              AND (%(since)s::timestamptz IS NULL OR last_received_at >= %(since)s)
              AND (%(vendor_id)s::bigint IS NULL OR vendor_code = (SELECT code FROM vendors WHERE id = %(vendor_id)s))
            ORDER BY last_received_at DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s""",
            {"vendor": vendor, "reason": reason_code, "since": since, "limit": limit, "offset": offset,
             "vendor_id": vendor_id})
        return await cur.fetchall()


async def pending_devices(pool: AsyncConnectionPool, *, vendor: str | None, limit: int, offset: int,
                          vendor_id: int | None) -> list[dict]:
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute("""
            SELECT vendor_code AS vendor, ext_id, first_seen, last_seen, messages, last_topic, last_payload
            FROM pending_devices
            WHERE (%(vendor)s::text IS NULL OR vendor_code = %(vendor)s)
              AND (%(vendor_id)s::bigint IS NULL OR vendor_code = (SELECT code FROM vendors WHERE id = %(vendor_id)s))
            ORDER BY last_seen DESC LIMIT %(limit)s OFFSET %(offset)s""",
            {"vendor": vendor, "limit": limit, "offset": offset, "vendor_id": vendor_id})
        return await cur.fetchall()


async def ping(pool: AsyncConnectionPool) -> None:
    async with pool.connection(timeout=2) as conn:
        await conn.execute("SELECT 1")
