"""The report's SQL (cimtwin.twin.reports builds the document; cimtwin.schemas.reports defines it).

One report is a handful of queries over ``alerts`` (raised in ``[start, end)``, optionally in an
area and everything inside it), ``devices``/``sensors``/``latest``/``readings`` (offline devices)
and ``areas`` (grouping), run in one REPEATABLE READ, READ ONLY transaction so that every table of
the report describes the same snapshot, and ``now()`` (``generated_at``) is that snapshot's time.

The queries are written once, as a generator that yields ``(query, params)`` and receives the rows
(:func:`_report_steps`); :func:`fetch_report` (psycopg sync, the CLI) and
:func:`fetch_report_async` (the API's async pool) drive it.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from cimtwin.errors import BadRequest, NotFound


@dataclass(frozen=True)
class ReportQuery:
    start: datetime                 # inclusive, aware
    end: datetime                   # exclusive, aware
    timezone: str                   # IANA name: series buckets are local hours/days
    bucket: str                     # 'hour' | 'day'
    area_id: int | None = None      # the area and everything inside it; None with area_code None: the city
    area_code: str | None = None
    offline_after_s: float = 900.0
    target_s: float = 3600.0
    top_n: int = 10


_SUBTREE = """(WITH RECURSIVE sub(id) AS (
        SELECT id FROM areas WHERE id = %(area_id)s
        UNION ALL SELECT a.id FROM areas a JOIN sub ON a.parent_id = sub.id)
    SELECT id FROM sub)"""

# The period's alerts in scope. Every query below starts WITH this (as `scoped`).
_SCOPED = f"""scoped AS (
    SELECT a.* FROM alerts a
    WHERE a.raised_at >= %(start)s AND a.raised_at < %(end)s AND a.withdrawn_at IS NULL
      AND (%(area_id)s::bigint IS NULL OR a.area_id IN {_SUBTREE}))"""

_AREA = "SELECT id, code, name, level FROM areas WHERE {by} = %(key)s"

# Two roots at most: with exactly one (one district), the city-wide report groups by its children.
_ROOTS = "SELECT id, code, name, level FROM areas WHERE parent_id IS NULL ORDER BY code LIMIT 2"

_GROUPS = """SELECT id, code, name, level FROM areas
    WHERE (%(parent)s::bigint IS NULL AND parent_id IS NULL) OR parent_id = %(parent)s ORDER BY code, id"""

_SUMMARY = f"""WITH {_SCOPED}
SELECT now() AS generated_at,
       count(*) AS alerts,
       coalesce(sum(count), 0)::bigint AS occurrences,
       count(*) FILTER (WHERE status IN ('open', 'acknowledged', 'dispatched')) AS unfinished,
       -- time to acknowledge
       count(acknowledged_at) AS ack_count,
       count(*) FILTER (WHERE acknowledged_at IS NULL) AS ack_missing,
       count(*) FILTER (WHERE acknowledged_at IS NULL AND status IN ('open', 'acknowledged', 'dispatched'))
           AS ack_awaiting,
       count(*) FILTER (WHERE acknowledged_at IS NULL AND status IN ('resolved', 'closed')) AS ack_finished,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM acknowledged_at - created_at)) AS ack_median,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM acknowledged_at - created_at)) AS ack_p90,
       avg(extract(epoch FROM acknowledged_at - created_at)) AS ack_mean,
       max(extract(epoch FROM acknowledged_at - created_at)) AS ack_max,
       -- time to close
       count(closed_at) AS close_count,
       count(*) FILTER (WHERE closed_at IS NULL) AS close_missing,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM closed_at - created_at)) AS close_median,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM closed_at - created_at)) AS close_p90,
       avg(extract(epoch FROM closed_at - created_at)) AS close_mean,
       max(extract(epoch FROM closed_at - created_at)) AS close_max,
       -- the target (handled = closed within target_s of created_at)
       count(*) FILTER (WHERE closed_at IS NULL AND created_at + make_interval(secs => %(target_s)s) > now())
           AS not_yet_due,
       count(*) FILTER (WHERE closed_at <= created_at + make_interval(secs => %(target_s)s)) AS handled,
       count(*) FILTER (WHERE coalesce(resolved_at, closed_at) <= created_at + make_interval(secs => %(target_s)s))
           AS resolved
FROM scoped"""

# by severity, kind, source and status in one pass
_FACETS = f"""WITH {_SCOPED}
SELECT CASE WHEN grouping(severity) = 0 THEN 'severity' WHEN grouping(kind) = 0 THEN 'kind'
            WHEN grouping(source) = 0 THEN 'source' ELSE 'status' END AS facet,
       coalesce(severity, kind, source, status) AS key,
       count(*) AS alerts, sum(count)::bigint AS occurrences
FROM scoped
GROUP BY GROUPING SETS ((severity), (kind), (source), (status))
ORDER BY facet, alerts DESC, key"""

# Each alert counted under the area of the grouping level that holds its area (group_id), or
# under the grouping parent itself, or under no area.
_BY_AREA = f"""WITH RECURSIVE {_SCOPED},
groups AS (
    SELECT id FROM areas
    WHERE (%(parent)s::bigint IS NULL AND parent_id IS NULL) OR parent_id = %(parent)s),
tree(id, group_id) AS (
    SELECT id, id FROM groups
    UNION ALL SELECT a.id, t.group_id FROM areas a JOIN tree t ON a.parent_id = t.id)
SELECT CASE WHEN t.group_id IS NOT NULL THEN 'child' WHEN s.area_id IS NULL THEN 'no_area' ELSE 'itself' END
           AS part,
       t.group_id,
       count(*) AS alerts,
       count(*) FILTER (WHERE s.severity = 'critical') AS critical,
       count(*) FILTER (WHERE s.severity = 'major') AS major,
       count(*) FILTER (WHERE s.severity = 'warning') AS warning,
       count(*) FILTER (WHERE s.severity = 'info') AS info
FROM scoped s LEFT JOIN tree t ON t.id = s.area_id
GROUP BY 1, 2"""

# Devices in scope and when each last reported before %(at)s: the `latest` row when it is older
# than `at` (the usual case for a recent period), else the newest reading before `at` (an index
# probe on readings' (sensor_id, time) key). A device offline = no sensor heard from since
# at - offline_after_s.
_OFFLINE = """WITH dev AS (
    SELECT d.id FROM devices d
    WHERE d.created_at < %(at)s
      AND (%(area_id)s::bigint IS NULL OR d.id IN (
          SELECT sp.device_id FROM sensor_places sp
          WHERE ST_Intersects(sp.geom, (SELECT geom FROM areas WHERE id = %(area_id)s))))),
seen AS (
    SELECT dev.id, max(CASE WHEN l.time IS NULL THEN NULL
                            WHEN l.time < %(at)s THEN l.time
                            ELSE (SELECT r.time FROM readings r WHERE r.sensor_id = s.id AND r.time < %(at)s
                                  ORDER BY r.time DESC LIMIT 1) END) AS last_time
    FROM dev LEFT JOIN sensors s ON s.device_id = dev.id LEFT JOIN latest l ON l.sensor_id = s.id
    GROUP BY dev.id)
SELECT count(*) AS devices,
       count(*) FILTER (WHERE last_time >= %(at)s - make_interval(secs => %(offline_after_s)s)) AS online,
       count(*) FILTER (WHERE last_time < %(at)s - make_interval(secs => %(offline_after_s)s)) AS stale,
       count(*) FILTER (WHERE last_time IS NULL) AS no_data
FROM seen"""

_TOP_DEVICES = f"""WITH {_SCOPED}
SELECT d.id AS device_id, v.code AS vendor, d.ext_id, d.name,
       count(*) AS alerts, sum(s.count)::bigint AS occurrences, max(s.raised_at) AS last_raised_at
FROM scoped s
JOIN sensors se ON se.id = s.sensor_id
JOIN devices d ON d.id = se.device_id
JOIN vendors v ON v.id = d.vendor_id
GROUP BY d.id, v.code
ORDER BY alerts DESC, occurrences DESC, d.id
LIMIT %(top_n)s"""

# Local hours or days (date_trunc in the report time zone); empty buckets are filled by the caller.
_SERIES = f"""WITH {_SCOPED}
SELECT date_trunc(%(bucket)s, raised_at, %(tz)s) AS start,
       count(*) AS alerts,
       count(*) FILTER (WHERE severity = 'critical') AS critical,
       count(*) FILTER (WHERE severity = 'major') AS major,
       count(*) FILTER (WHERE severity = 'warning') AS warning,
       count(*) FILTER (WHERE severity = 'info') AS info
FROM scoped GROUP BY 1 ORDER BY 1"""

Step = tuple[str | sql.Composable, dict]


def _report_steps(q: ReportQuery) -> Generator[Step, list[dict], dict]:
    """Yields each query with its parameters, receives its rows, returns the report's raw data."""
    if q.bucket not in ("hour", "day"):
        raise BadRequest(f"unknown series bucket {q.bucket!r}", code="invalid_bucket")
    if q.start >= q.end:
        raise BadRequest("the report period is empty", code="invalid_range")
    out: dict = {"area": None, "grouping": None}
    area_id = q.area_id
    if area_id is not None or q.area_code is not None:
        by, key = ("id", area_id) if area_id is not None else ("code", q.area_code)
        rows = yield sql.SQL(_AREA).format(by=sql.Identifier(by)), {"key": key}
        if not rows:
            raise NotFound(f"area {key!r} does not exist", code="area_not_found")
        out["area"] = out["grouping"] = rows[0]
        area_id = rows[0]["id"]
    else:
        roots = yield _ROOTS, {}
        if len(roots) == 1:
            out["grouping"] = roots[0]
    parent = out["grouping"]["id"] if out["grouping"] else None
    params = {"start": q.start, "end": q.end, "area_id": area_id, "target_s": float(q.target_s),
              "parent": parent, "top_n": q.top_n, "bucket": q.bucket, "tz": q.timezone,
              "offline_after_s": float(q.offline_after_s)}
    summary = (yield _SUMMARY, params)[0]
    out["summary"] = summary
    out["generated_at"] = summary["generated_at"]
    out["facets"] = yield _FACETS, params
    out["groups"] = yield _GROUPS, params
    out["by_area"] = yield _BY_AREA, params
    out["offline_at"] = at = min(q.end, summary["generated_at"])
    out["offline_after_s"] = float(q.offline_after_s)
    out["offline"] = (yield _OFFLINE, {**params, "at": at})[0]
    out["top_devices"] = yield _TOP_DEVICES, params
    out["series"] = yield _SERIES, params
    return out


_BEGIN = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"


def fetch_report(conn: psycopg.Connection, query: ReportQuery) -> dict:
    """Runs the report's queries on an idle sync connection, in a transaction of their own."""
    steps = _report_steps(query)
    with conn.transaction():
        conn.execute(_BEGIN)
        cur = conn.cursor(row_factory=dict_row)
        try:
            step = next(steps)
            while True:
                step = steps.send(cur.execute(*step).fetchall())
        except StopIteration as done:
            return done.value


async def fetch_report_async(conn: psycopg.AsyncConnection, query: ReportQuery) -> dict:
    """The same on an async connection (the API's pool)."""
    steps = _report_steps(query)
    async with conn.transaction():
        await conn.execute(_BEGIN)
        cur = conn.cursor(row_factory=dict_row)
        try:
            step = next(steps)
            while True:
                step = steps.send(await (await cur.execute(*step)).fetchall())
        except StopIteration as done:
            return done.value
