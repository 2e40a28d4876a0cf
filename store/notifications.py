"""The notification outbox and the alert event feed (async).

Rows are written by the ``alert_events_outbox`` trigger (migration 0011) in the transaction that
wrote the event. ``cimtwin notify`` claims and delivers them (cimtwin.twin.notify); the API's SSE
stream reads each event's document from its MQTT row (cimtwin.api.services.alert_stream).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from .db import _LIBPQ_OPTIONS

#: The channel the alert_events trigger of migration 0008 notifies, with the new event's id.
EVENTS_CHANNEL = "cimtwin_alert_events"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    alert_event_id: int
    channel: str          # 'webhook' | 'mqtt'
    party_id: int | None
    target: str           # webhook URL or MQTT topic
    payload: dict
    attempts: int
    secret: str | None    # the party's webhook secret now (never stored in the outbox)


# The head of each target's queue: its oldest undelivered row. Only heads are delivered, so one
# target gets its events in order. A skip scan over the (channel, target, id) index of undelivered
# rows: one probe per target, however many rows wait behind a target that is down.
_HEADS = """
    WITH RECURSIVE heads AS (
        (SELECT channel, target, id FROM notification_outbox
          WHERE delivered_at IS NULL ORDER BY channel, target, id LIMIT 1)
        UNION ALL
        SELECT nxt.channel, nxt.target, nxt.id FROM heads h
          CROSS JOIN LATERAL (SELECT channel, target, id FROM notification_outbox
                               WHERE delivered_at IS NULL AND (channel, target) > (h.channel, h.target)
                               ORDER BY channel, target, id LIMIT 1) nxt)"""

# Due heads, oldest first; rows another worker holds are skipped (and so is everything queued behind
# them, which is not a head). The conditions on ``o`` are checked again on the locked row, so a head
# another worker delivered meanwhile is not sent twice.
_CLAIM = _HEADS + """
    SELECT o.id, o.alert_event_id, o.channel, o.party_id, o.target, o.payload, o.attempts,
           CASE WHEN o.channel = 'webhook' THEN
               (SELECT CASE WHEN jsonb_typeof(p.channels -> 'webhook') = 'object'
                            THEN p.channels -> 'webhook' ->> 'secret' END
                  FROM parties p WHERE p.id = o.party_id)
           END AS secret
      FROM notification_outbox o
      JOIN heads ON heads.id = o.id
     WHERE o.delivered_at IS NULL AND o.next_attempt_at <= now()
     ORDER BY o.id
     LIMIT %(limit)s
       FOR UPDATE OF o SKIP LOCKED"""


async def claim_due(conn: psycopg.AsyncConnection, *, limit: int) -> list[OutboxRow]:
    """Locks up to ``limit`` due rows, each the head of its target's queue, oldest first.

    Call inside a transaction; the locks last until it ends, so deliver, mark and commit in it."""
    cur = await conn.execute(_CLAIM, {"limit": limit})
    return [OutboxRow(*row) for row in await cur.fetchall()]


async def mark_delivered(conn: psycopg.AsyncConnection, ids: list[int]) -> None:
    if ids:
        await conn.execute(
            "UPDATE notification_outbox SET delivered_at = now(), attempts = attempts + 1, last_error = NULL "
            "WHERE id = ANY(%s)", (ids,))


async def mark_failed(conn: psycopg.AsyncConnection, failures: list[tuple[int, str, float]]) -> None:
    """``(id, error, retry_in_s)`` each: count the attempt, keep the error, and set the next attempt.
    The rows queued behind a failed one wait for it (they are not heads)."""
    if not failures:
        return
    await conn.execute(
        """UPDATE notification_outbox o
              SET attempts = o.attempts + 1, last_error = f.error,
                  next_attempt_at = now() + make_interval(secs => f.delay)
             FROM unnest(%s::bigint[], %s::text[], %s::float8[]) AS f(id, error, delay)
            WHERE o.id = f.id""",
        ([f[0] for f in failures], [f[1][:1000] for f in failures], [float(f[2]) for f in failures]))


async def seconds_until_due(conn: psycopg.AsyncConnection) -> float | None:
    """How long until the first head of a target's queue is due (0 when one is already); None when
    nothing waits. Rows queued behind another are not counted: they cannot go first."""
    cur = await conn.execute(
        _HEADS + """
        SELECT greatest(0, extract(epoch FROM min(o.next_attempt_at) - now()))::float8
          FROM heads JOIN notification_outbox o ON o.id = heads.id""")
    row = await cur.fetchone()
    return row[0]


async def outbox_stats(conn: psycopg.AsyncConnection) -> dict:
    """What is waiting, per channel, and the targets that are failing now."""
    cur = await conn.cursor(row_factory=dict_row).execute(
        """SELECT channel, count(*) FILTER (WHERE delivered_at IS NULL) AS pending,
                  count(*) FILTER (WHERE delivered_at IS NULL AND attempts > 0) AS retrying,
                  extract(epoch FROM now() - min(created_at) FILTER (WHERE delivered_at IS NULL))::float8
                      AS oldest_pending_s,
                  count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered
             FROM notification_outbox GROUP BY channel ORDER BY channel""")
    channels = await cur.fetchall()
    cur = await conn.cursor(row_factory=dict_row).execute(
        """SELECT DISTINCT ON (channel, target) channel, party_id, target, attempts, last_error,
                  next_attempt_at
             FROM notification_outbox
            WHERE delivered_at IS NULL AND attempts > 0
            ORDER BY channel, target, id LIMIT 100""")
    failing = await cur.fetchall()
    return {"channels": channels, "failing_targets": failing}


# ----------------------------------------------------------------------------- the event feed

# Each event's document: its MQTT outbox row's payload (written with the event), or, for events
# from before migration 0011, the document built now.
_FEED = """
    SELECT e.id, coalesce((SELECT o.payload FROM notification_outbox o
                            WHERE o.alert_event_id = e.id AND o.channel = 'mqtt'),
                          cimtwin_alert_event_doc(e)) AS doc
      FROM alert_events e"""

_FILTERED = f"""
    SELECT id, doc::text AS doc, (doc -> 'alert' ->> 'area_id')::bigint AS area_id,
           doc -> 'alert' ->> 'severity' AS severity, (doc -> 'alert' ->> 'sensor_id')::bigint AS sensor_id,
           (doc -> 'alert' ->> 'building_id')::bigint AS building_id
      FROM ({_FEED} {{where}}) f
     WHERE (%(areas)s::bigint[] IS NULL OR (doc -> 'alert' ->> 'area_id')::bigint = ANY(%(areas)s))
       AND (%(severities)s::text[] IS NULL OR doc -> 'alert' ->> 'severity' = ANY(%(severities)s))"""


@dataclass(frozen=True, slots=True)
class FeedEvent:
    id: int
    doc: str              # the JSON document, one line
    area_id: int | None
    severity: str | None
    sensor_id: int | None = None     # the alert's sensor and building: their buildings' live state may change
    building_id: int | None = None


@dataclass(frozen=True, slots=True)
class FeedPage:
    events: list[FeedEvent]
    # The snapshot the page was read in: every transaction with an id below ``xmin`` had ended,
    # and every one from ``xmax`` on had not begun.
    snapshot_xmin: int
    snapshot_xmax: int


_FEED_AFTER = f"""
    SELECT p.id, p.doc, p.area_id, p.severity, p.sensor_id, p.building_id,
           pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
           pg_snapshot_xmax(pg_current_snapshot())::text::bigint
      FROM (SELECT 1) one
      LEFT JOIN LATERAL ({_FILTERED.format(where="WHERE e.id > %(after)s")}
                         ORDER BY id LIMIT %(limit)s) p ON true
     ORDER BY p.id"""


def noted_event(payload: str) -> tuple[int, FeedEvent | None] | None:
    """A notification's event id and, when it carries the document ('<id> <document>', see
    migration 0015), the event; None if it is not one of ours."""
    head, _, doc = payload.partition(" ")
    try:
        event_id = int(head)
    except ValueError:
        return None
    try:
        alert = json.loads(doc).get("alert") or {} if doc else None
    except (ValueError, AttributeError):  # not a document of ours: read the event instead
        alert = None
    if alert is None:
        return event_id, None
    return event_id, FeedEvent(event_id, doc, alert.get("area_id"), alert.get("severity"), alert.get("sensor_id"),
                               alert.get("building_id"))


async def feed_after(conn: psycopg.AsyncConnection, *, after_id: int, limit: int) -> FeedPage:
    """Committed events with ids above ``after_id``, oldest first, and the snapshot they were read in.
    ``conn`` is in autocommit; it is the stream's own (its LISTEN connection), so the statement is
    prepared once and each read is one round trip."""
    # One statement = one snapshot (READ COMMITTED): the rows and the snapshot bounds together.
    cur = await conn.execute(_FEED_AFTER, {"after": after_id, "limit": limit, "areas": None, "severities": None},
                             prepare=True)
    rows = await cur.fetchall()
    events = [FeedEvent(*r[:6]) for r in rows if r[0] is not None]
    return FeedPage(events, rows[0][6], rows[0][7])


async def feed_ids(conn: psycopg.AsyncConnection, ids: list[int]) -> list[FeedEvent]:
    """The given events (those committed), oldest first."""
    cur = await conn.execute(
        _FILTERED.format(where="WHERE e.id = ANY(%(ids)s)") + " ORDER BY id",
        {"ids": ids, "areas": None, "severities": None})
    return [FeedEvent(*r) for r in await cur.fetchall()]


async def replay(pool: AsyncConnectionPool, *, after_id: int, upto_id: int, area_ids: list[int] | None,
                 severities: list[str] | None, limit: int) -> tuple[list[FeedEvent], bool]:
    """Events in (after_id, upto_id] that pass the filters, oldest first: the newest ``limit`` of
    them, and whether older ones may have been left out. With filters, at most the newest
    ``10 × limit`` events are looked at, so an old cursor costs no more than a bounded scan."""
    floor = max(after_id, upto_id - 10 * limit) if (area_ids is not None or severities) else after_id
    async with pool.connection() as conn:
        cur = await conn.execute(
            _FILTERED.format(where="WHERE e.id > %(after)s AND e.id <= %(upto)s") + " ORDER BY id DESC LIMIT %(limit)s",
            {"after": floor, "upto": upto_id, "areas": area_ids, "severities": severities, "limit": limit + 1})
        rows = await cur.fetchall()
        truncated = len(rows) > limit
        if not truncated and floor > after_id:  # did the bound leave events out?
            cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM alert_events WHERE id > %s AND id <= %s)",
                                     (after_id, floor))
            truncated = (await cur.fetchone())[0]
    return [FeedEvent(*r) for r in reversed(rows[:limit])], truncated


async def latest_event_id(conn: psycopg.AsyncConnection) -> int:
    cur = await conn.execute("SELECT coalesce(max(id), 0) FROM alert_events")
    return (await cur.fetchone())[0]


async def area_subtree(pool: AsyncConnectionPool, area_id: int) -> list[int]:
    """The area and every area inside it; empty when it does not exist."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """WITH RECURSIVE sub(id) AS (SELECT id FROM areas WHERE id = %s
                                          UNION SELECT a.id FROM areas a JOIN sub ON a.parent_id = sub.id)
               SELECT id FROM sub""", (area_id,))
        return [r[0] for r in await cur.fetchall()]


async def connect(url: str, *, application_name: str, autocommit: bool = True) -> psycopg.AsyncConnection:
    """One async connection in UTC, with the keepalives that notice a dead server within seconds
    (a LISTEN connection is otherwise idle, and would wait on a dead one for hours)."""
    return await psycopg.AsyncConnection.connect(url, autocommit=autocommit, application_name=application_name,
                                                 options="-c TimeZone=UTC", **_LIBPQ_OPTIONS)


async def listen(conn: psycopg.AsyncConnection) -> None:
    """Subscribes an autocommit connection to the alert event channel."""
    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
