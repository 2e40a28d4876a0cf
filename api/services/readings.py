"""Reading queries with their limits."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import BadRequest, TooLarge
from cimtwin.schemas.api import Bucket, LatestReading, Reading, SensorReadings
from cimtwin.store import readings as store
from cimtwin.store import registry

MAX_BUCKETS = 100_000
_BUCKET = re.compile(r"^(\d{1,4})(m|h|d)$")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}


def parse_bucket(text: str) -> timedelta:
    match = _BUCKET.match(text)
    if not match or int(match[1]) == 0:
        raise BadRequest(f"bucket {text!r} is not a whole number of minutes, hours or days (e.g. 1m, 15m, 1h, 1d)",
                         code="invalid_bucket")
    return int(match[1]) * _UNITS[match[2]]


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


async def sensor_readings(pool: AsyncConnectionPool, *, sensor_id: int, start: datetime | None,
                          end: datetime | None, bucket: str | None, limit: int, max_limit: int,
                          order: str = "asc", base_url: str = "", vendor_id: int | None) -> SensorReadings:
    sensor = await registry.get_sensor(pool, sensor_id, vendor_id=vendor_id)
    end = _utc(end) if end else datetime.now(timezone.utc)
    start = _utc(start) if start else end - timedelta(days=1)
    if start >= end:
        raise BadRequest(f"start ({start.isoformat()}) must be before end ({end.isoformat()})", code="invalid_range")
    out = SensorReadings(sensor_id=sensor.id, channel=sensor.channel, quantity=sensor.quantity, unit=sensor.unit,
                         start=start, end=end, bucket=bucket)
    if bucket:
        width = parse_bucket(bucket)
        if (end - start) / width > MAX_BUCKETS:
            raise TooLarge(f"{bucket} buckets from {start.isoformat()} to {end.isoformat()} would be more than "
                           f"{MAX_BUCKETS}; use a wider bucket or a shorter range")
        rows = await store.bucketed_readings(pool, sensor_id=sensor_id, start=start, end=end, bucket=width,
                                             vendor_id=vendor_id)
        out.buckets = [Bucket(**r) for r in rows]
        return out
    if limit > max_limit:
        raise TooLarge(f"limit {limit} is above the maximum of {max_limit}; page with the next link or use bucket=",
                       code="limit_too_large")
    descending = order == "desc"
    rows = await store.raw_readings(pool, sensor_id=sensor_id, start=start, end=end, limit=limit + 1,
                                    descending=descending, vendor_id=vendor_id)
    if len(rows) > limit:
        rows = rows[:limit]
        edge = rows[-1]["time"]
        # The next page continues after the last row, in the same order.
        page = (f"start={(edge + timedelta(microseconds=1)).isoformat()}&end={end.isoformat()}" if not descending
                else f"start={start.isoformat()}&end={edge.isoformat()}")
        out.next = f"{base_url}?{page}&limit={limit}&order={order}".replace("+", "%2B")
    out.readings = [Reading(**r) for r in rows]
    return out


async def latest(pool: AsyncConnectionPool, *, vendor: str | None, device: str | None,
                 sensor_ids: list[int] | None, limit: int, offset: int, vendor_id: int | None) -> list[LatestReading]:
    rows = await store.latest_readings(pool, vendor=vendor, device=device, sensor_ids=sensor_ids,
                                       limit=limit, offset=offset, vendor_id=vendor_id)
    return [LatestReading(**r) for r in rows]
