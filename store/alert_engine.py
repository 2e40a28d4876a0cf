"""The alert engine's SQL (synchronous): rules and their sensors, the engine's per-(rule, sensor)
state, and raising, folding and clearing alerts; for late readings, a sensor's stored readings
by time and the corrections of alerts (withdraw, correct, reopen). Everything here runs inside
the ingest batch's transaction (or the timer's), so alerts commit together with the readings."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from .alerts import ESCALATION_ACTOR

ENGINE_ACTOR = "engine"


@dataclass(frozen=True, slots=True)
class RuleRow:
    id: int
    version: int
    name: str
    kind: str
    condition: dict
    severity: str
    auto_clear: bool
    ack_sla_s: int
    close_sla_s: int


def rules_generation(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT generation FROM alert_rules_state").fetchone()[0]


def load_rules(conn: psycopg.Connection) -> tuple[list[RuleRow], list[tuple[int, int]], dict[int, dict[str, int]]]:
    """Enabled rules, their (rule_id, sensor_id) matches, and for composite rules each matched
    sensor's device channels by quantity (``{sensor_id: {quantity: sensor_id}}``)."""
    rules = [RuleRow(*r) for r in conn.execute(
        """SELECT id, version, name, kind, condition, severity, auto_clear, ack_sla_s, close_sla_s
           FROM alert_rules WHERE enabled AND deleted_at IS NULL ORDER BY id""")]
    matches = conn.execute(
        """SELECT r.id, s.sensor_id
           FROM alert_rules r
           JOIN sensor_scope s
             ON (r.scope->>'sensor_id' IS NULL OR s.sensor_id = (r.scope->>'sensor_id')::bigint)
            AND (r.scope->>'quantity' IS NULL OR s.quantity = r.scope->>'quantity')
            AND (r.scope->>'component_kind' IS NULL OR s.component_kind = r.scope->>'component_kind')
            AND (r.scope->>'floor_min' IS NULL OR s.floor_level >= (r.scope->>'floor_min')::int)
            AND (r.scope->>'floor_max' IS NULL OR s.floor_level <= (r.scope->>'floor_max')::int)
           LEFT JOIN areas a ON a.id = (r.scope->>'area_id')::bigint
           WHERE r.enabled AND r.deleted_at IS NULL
             AND (r.scope->>'area_id' IS NULL OR ST_Covers(a.geom, s.geom))
             -- a composite rule's sensor is the one its first condition names
             AND (r.kind <> 'composite' OR s.quantity = r.condition->'conditions'->0->>'quantity')
           ORDER BY 1, 2""").fetchall()
    composite_sensors = [sid for rid, sid in matches
                         if any(r.id == rid and r.kind == "composite" for r in rules)]
    siblings: dict[int, dict[str, int]] = {}
    if composite_sensors:
        for anchor, quantity, sensor_id in conn.execute(
                """SELECT a.id, s.quantity, s.id FROM sensors a JOIN sensors s ON s.device_id = a.device_id
                   WHERE a.id = ANY(%s) ORDER BY s.id DESC""", (composite_sensors,)):
            siblings.setdefault(anchor, {})[quantity] = sensor_id
    return rules, matches, siblings


@dataclass(slots=True)
class PairState:
    phase: str = "clear"
    since: datetime | None = None
    last_time: datetime | None = None
    last_value: float | None = None
    memory: dict | None = None


def lock_states(conn: psycopg.Connection, sensor_ids: Sequence[int]) -> dict[tuple[int, int], PairState]:
    """The stored states of these sensors' rules, locked for this transaction (two workers
    serialize). Quiet pairs (clear, no memory) usually have no row at all."""
    if not sensor_ids:
        return {}
    rows = conn.execute(
        """SELECT rule_id, sensor_id, phase, since, last_time, last_value, memory FROM alert_rule_state
           WHERE sensor_id = ANY(%s) ORDER BY rule_id, sensor_id FOR UPDATE""", (list(sensor_ids),)).fetchall()
    return {(r[0], r[1]): PairState(r[2], r[3], r[4], r[5], r[6]) for r in rows}


def save_states(conn: psycopg.Connection, states: Iterable[tuple[tuple[int, int], PairState]]) -> None:
    rows = [(rid, sid, st.phase, st.since, st.last_time, st.last_value, Jsonb(st.memory or {}))
            for (rid, sid), st in states]
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO alert_rule_state AS st (rule_id, sensor_id, phase, since, last_time, last_value, memory)
               VALUES (%s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (rule_id, sensor_id) DO UPDATE
                   SET phase = excluded.phase, since = excluded.since, last_time = excluded.last_time,
                       last_value = excluded.last_value, memory = excluded.memory""", rows)


_RAISE = """
    WITH place AS (SELECT * FROM cimtwin_sensor_place(%(sensor)s) LIMIT 1),
    chain AS (SELECT c.party_id, c.level FROM place p,
                     cimtwin_dispatch_chain(p.geom, p.area_id, p.building_id, p.room_id, p.component_id) c
              WHERE c.rank = 0)
    INSERT INTO alerts AS a (rule_id, rule_version, source, kind, severity, title, sensor_id, geom, area_id,
                             building_id, floor_id, room_id, component_id, party_id, dispatch_level,
                             first_value, last_value, count, raised_at, last_at, ack_due_at, close_due_at,
                             status, cleared_at, resolved_at)
    SELECT %(rule)s, %(version)s, 'rule', %(kind)s, %(severity)s, %(title)s, %(sensor)s, place.geom,
           place.area_id, place.building_id, place.floor_id, place.room_id, place.component_id,
           chain.party_id, coalesce(chain.level, 'none'), %(value)s, %(last_value)s::float8, %(count)s::int,
           %(time)s, %(last_at)s::timestamptz, now() + make_interval(secs => %(ack_sla)s),
           now() + make_interval(secs => %(close_sla)s), %(status)s::text, %(cleared_at)s::timestamptz,
           CASE WHEN %(status)s::text = 'resolved' THEN now() END
    FROM (SELECT 1) one LEFT JOIN place ON true LEFT JOIN chain ON true
    ON CONFLICT (rule_id, sensor_id) WHERE status IN ('open', 'acknowledged', 'dispatched') AND rule_id IS NOT NULL
    DO UPDATE SET count = a.count + 1, last_value = excluded.last_value,
                  last_at = greatest(a.last_at, excluded.last_at)
    RETURNING a.id, (a.xmax = 0) AS created, a.status"""

_EVENT = """INSERT INTO alert_events (alert_id, actor, action, from_status, to_status, detail)
            VALUES (%s, %s, %s, %s, %s, %s)"""

# _RAISE and its event in one statement (one round trip). The event's triggers run after the
# statement, so its document shows the alert as raised or folded.
_RAISE_WITH_EVENT = "WITH raised AS (" + _RAISE + """),
    event AS (
        INSERT INTO alert_events (alert_id, actor, action, from_status, to_status, detail)
        SELECT id, %(actor)s, CASE WHEN created THEN 'raised' ELSE 'repeated' END,
               CASE WHEN NOT created THEN status END, status, %(detail)s FROM raised)
    SELECT 1 FROM raised"""


def _raise_params(rule: RuleRow, sensor_id: int, title: str, time: datetime, value: float | None,
                  **finished) -> dict:
    """A raise's parameters; ``finished`` (last_at, last_value, count, status, cleared_at) for an
    alert stored with its whole episode."""
    return {"rule": rule.id, "version": rule.version, "kind": rule.kind, "severity": rule.severity, "title": title,
            "sensor": sensor_id, "value": value, "time": time, "ack_sla": rule.ack_sla_s,
            "close_sla": rule.close_sla_s, "last_value": value, "last_at": time, "count": 1, "status": "open",
            "cleared_at": None, **finished}


def raise_alert(conn: psycopg.Connection, rule: RuleRow, *, sensor_id: int, time: datetime,
                value: float | None, title: str, detail: dict | None = None) -> None:
    """Open an alert for (rule, sensor), or fold into the unfinished one. ``detail`` is added to
    the event's detail. Nothing is read back: in the writer's pipeline it costs no round trip."""
    params = _raise_params(rule, sensor_id, title, time, value)
    params.update(actor=ENGINE_ACTOR, detail=Jsonb({"value": value, "time": time.isoformat(), **(detail or {})}))
    conn.execute(_RAISE_WITH_EVENT, params)


def fold_repeats(conn: psycopg.Connection, rule: RuleRow, *, sensor_id: int, repeats: int, last_time: datetime,
                 last_value: float) -> None:
    """Readings that keep an active condition true: counted into the unfinished alert. No event:
    the count, last value and last time are on the alert; its trail keeps the state changes."""
    conn.execute(
        """UPDATE alerts SET count = count + %s, last_value = %s, last_at = greatest(last_at, %s)
           WHERE rule_id = %s AND sensor_id = %s AND status IN ('open', 'acknowledged', 'dispatched')""",
        (repeats, last_value, last_time, rule.id, sensor_id))


def count_repeats(conn: psycopg.Connection, rule: RuleRow, *, sensor_id: int, repeats: int) -> None:
    """Readings that kept an active condition true, older than its alert's last one: counted only."""
    conn.execute("""UPDATE alerts SET count = count + %s
                    WHERE rule_id = %s AND sensor_id = %s AND status IN ('open', 'acknowledged', 'dispatched')""",
                 (repeats, rule.id, sensor_id))


def clear_alert(conn: psycopg.Connection, rule: RuleRow, *, sensor_id: int, time: datetime,
                value: float | None, alert_id: int | None = None, detail: dict | None = None) -> None:
    """The condition cleared: note it; a rule with auto_clear also resolves the alert. The alert
    is the (rule, sensor)'s unfinished one, or ``alert_id`` if it is unfinished."""
    status = "resolved" if rule.auto_clear else None
    conn.execute(
        """WITH cleared AS (
               UPDATE alerts a SET cleared_at = %(time)s,
                      status = coalesce(%(status)s, a.status),
                      resolved_at = CASE WHEN %(status)s IS NULL THEN a.resolved_at ELSE now() END
               FROM (SELECT id, status FROM alerts WHERE rule_id = %(rule)s AND sensor_id = %(sensor)s
                       AND status IN ('open', 'acknowledged', 'dispatched')
                       AND (%(id)s::bigint IS NULL OR id = %(id)s) FOR UPDATE) old
               WHERE a.id = old.id
               RETURNING a.id, old.status AS from_status, a.status AS to_status)
           INSERT INTO alert_events (alert_id, actor, action, from_status, to_status, detail)
           SELECT id, %(actor)s, %(action)s, from_status, to_status, %(detail)s FROM cleared""",
        {"time": time, "status": status, "rule": rule.id, "sensor": sensor_id, "id": alert_id, "actor": ENGINE_ACTOR,
         "action": "resolved" if status else "cleared",
         "detail": Jsonb({"value": value, "time": time.isoformat(), "cleared": True, **(detail or {})})})


def watch_pairs(conn: psycopg.Connection, pairs: Sequence[tuple[int, int]]) -> None:
    """A clear state for each (offline rule, sensor) pair that has none yet."""
    conn.execute(
        """INSERT INTO alert_rule_state (rule_id, sensor_id, phase, last_time)
           SELECT r, s, 'clear', 'epoch'::timestamptz FROM unnest(%s::bigint[], %s::bigint[]) AS k(r, s)
           ON CONFLICT DO NOTHING""", ([p[0] for p in pairs], [p[1] for p in pairs]))


def silent_sensors(conn: psycopg.Connection, *, rule_id: int, silent_s: float,
                   now: datetime) -> list[tuple[int, datetime | None]]:
    """Sensors matched to an offline rule, silent for ``silent_s`` and not yet alerted:
    ``(sensor_id, time of its last reading or None)``."""
    return conn.execute(
        """SELECT st.sensor_id, l.time FROM alert_rule_state st
           LEFT JOIN latest l ON l.sensor_id = st.sensor_id
           JOIN sensors s ON s.id = st.sensor_id
           WHERE st.rule_id = %(rule)s AND st.phase <> 'active'
             AND coalesce(l.time, s.created_at) < %(now)s - make_interval(secs => %(silent)s)
           FOR UPDATE OF st SKIP LOCKED""", {"rule": rule_id, "silent": silent_s, "now": now}).fetchall()


# ----------------------------------------------------------------------------- late readings

def newest_readings(conn: psycopg.Connection, batch: dict[int, Sequence[datetime]]) -> dict[int, datetime | None]:
    """For each sensor, the time of its newest stored reading that is not one of ``batch[sensor]``
    (this batch's own readings, inserted already in this transaction); None if there is none."""
    sensors = list(batch)
    rows = conn.execute(
        """SELECT k.s,
                  (SELECT max(r.time) FROM readings r WHERE r.sensor_id = k.s AND r.time < k.t0),
                  (SELECT count(*) FROM readings r WHERE r.sensor_id = k.s AND r.time >= k.t0) - k.n
           FROM (SELECT s, coalesce(t0, 'infinity') AS t0, n
                   FROM unnest(%s::bigint[], %s::timestamptz[], %s::int[]) AS u(s, t0, n)) k""",
        (sensors, [min(batch[s], default=None) for s in sensors], [len(batch[s]) for s in sensors])).fetchall()
    newest = {}
    for sensor_id, before, others in rows:
        if others > 0:  # readings stored earlier at or after the batch's first one
            own = set(batch[sensor_id])
            before = max(t for (t,) in conn.execute(
                "SELECT time FROM readings WHERE sensor_id = %s AND time >= %s",
                (sensor_id, min(batch[sensor_id]))) if t not in own)
        newest[sensor_id] = before
    return newest


_PAGES = {(lower, upper): f"""SELECT time, value FROM readings
                             WHERE sensor_id = %s AND time {lower} %s AND time {upper} %s
                             ORDER BY time LIMIT %s"""
          for lower in (">=", ">") for upper in ("<", "<=")}


def readings_page(conn: psycopg.Connection, sensor_id: int, *, start: datetime, end: datetime, end_inclusive: bool,
                  after: datetime | None = None, limit: int) -> list[tuple[datetime, float]]:
    """A sensor's stored readings from ``start`` (or just after ``after``) to ``end``, oldest first."""
    query = _PAGES[(">" if after is not None else ">=", "<=" if end_inclusive else "<")]
    return conn.execute(query, (sensor_id, after if after is not None else start, end, limit)).fetchall()


def latest_before(conn: psycopg.Connection, keys: Iterable[tuple[int, datetime]], *,
                  inclusive: Collection[tuple[int, datetime]] = (),
                  ) -> dict[tuple[int, datetime], tuple[datetime, float]]:
    """For each ``(sensor, time)``: the sensor's newest stored reading before that time (at or
    before it for the keys in ``inclusive``), if any."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return {}
    rows = conn.execute(
        """SELECT k.s, k.before, r.time, r.value
             FROM unnest(%s::bigint[], %s::timestamptz[], %s::boolean[]) AS k(s, before, inclusive)
            CROSS JOIN LATERAL (SELECT time, value FROM readings
                                WHERE sensor_id = k.s AND time <= k.before AND (k.inclusive OR time < k.before)
                                ORDER BY time DESC LIMIT 1) r""",
        ([k[0] for k in keys], [k[1] for k in keys], [k in inclusive for k in keys])).fetchall()
    return {(s, b): (t, v) for s, b, t, v in rows}


@dataclass(frozen=True, slots=True)
class EngineAlert:
    id: int
    status: str
    raised_at: datetime
    cleared_at: datetime | None
    first_value: float | None
    last_at: datetime
    handled: bool  # a person has acted on it (an event by someone other than the engine or escalation)


def alerts_since(conn: psycopg.Connection, firsts: dict[int, datetime]) -> set[tuple[int, int]]:
    """The (rule, sensor)s of these sensors with an alert (withdrawn ones aside) not cleared
    before the sensor's time in ``firsts`` (or never cleared)."""
    rows = conn.execute(
        """SELECT DISTINCT a.rule_id, a.sensor_id FROM unnest(%s::bigint[], %s::timestamptz[]) AS k(s, t)
           JOIN alerts a ON a.sensor_id = k.s AND a.rule_id IS NOT NULL
           WHERE a.withdrawn_at IS NULL AND coalesce(a.cleared_at, 'infinity') > k.t""",
        (list(firsts), list(firsts.values()))).fetchall()
    return {(r, s) for r, s in rows}


_ENGINE_ALERT = """
    SELECT a.id, a.status, a.raised_at, a.cleared_at, a.first_value, a.last_at,
           EXISTS (SELECT FROM alert_events e WHERE e.alert_id = a.id AND e.actor <> ALL(%(automatic)s))
      FROM alerts a
     WHERE a.rule_id = %(rule)s AND a.sensor_id = %(sensor)s AND a.withdrawn_at IS NULL AND {time}
     ORDER BY a.raised_at DESC, a.id DESC LIMIT 1"""
_AUTOMATIC_ACTORS = [ENGINE_ACTOR, ESCALATION_ACTOR]


def engine_alert_before(conn: psycopg.Connection, rule_id: int, sensor_id: int, time: datetime) -> EngineAlert | None:
    """The (rule, sensor)'s latest alert raised before ``time``, withdrawn ones aside."""
    row = conn.execute(_ENGINE_ALERT.format(time="a.raised_at < %(time)s"), {
        "rule": rule_id, "sensor": sensor_id, "time": time, "automatic": _AUTOMATIC_ACTORS}).fetchone()
    return EngineAlert(*row) if row else None


def engine_alert_at(conn: psycopg.Connection, rule_id: int, sensor_id: int, raised_at: datetime) -> EngineAlert | None:
    """The (rule, sensor)'s alert raised at ``raised_at``, withdrawn ones aside, locked."""
    row = conn.execute(_ENGINE_ALERT.format(time="a.raised_at = %(time)s") + " FOR UPDATE OF a", {
        "rule": rule_id, "sensor": sensor_id, "time": raised_at, "automatic": _AUTOMATIC_ACTORS}).fetchone()
    return EngineAlert(*row) if row else None


_EVENT_NOTE = """INSERT INTO alert_events (alert_id, actor, action, from_status, to_status, note, detail)
                 VALUES (%s, %s, %s, %s, %s, %s, %s)"""


def raise_finished_alert(conn: psycopg.Connection, rule: RuleRow, *, sensor_id: int, title: str,
                         raised: tuple[datetime, float], last: tuple[datetime, float], count: int,
                         cleared: tuple[datetime, float], detail: dict) -> int:
    """An auto-clearing rule's alert found afterwards with its whole episode: stored resolved, with
    its 'raised' and 'resolved' events."""
    alert_id, _, _ = conn.execute(_RAISE, _raise_params(
        rule, sensor_id, title, raised[0], raised[1], last_at=last[0], last_value=last[1], count=count,
        status="resolved", cleared_at=cleared[0])).fetchone()
    conn.execute(_EVENT, (alert_id, ENGINE_ACTOR, "raised", None, "open",
                          Jsonb({"value": raised[1], "time": raised[0].isoformat(), **detail})))
    conn.execute(_EVENT, (alert_id, ENGINE_ACTOR, "resolved", "open", "resolved",
                          Jsonb({"value": cleared[1], "time": cleared[0].isoformat(), "cleared": True, **detail})))
    return alert_id


def withdraw_alert(conn: psycopg.Connection, alert: EngineAlert, *, note: str, detail: dict) -> None:
    """Closed and marked withdrawn, with a 'withdrawn' event."""
    conn.execute("UPDATE alerts SET status = 'closed', closed_at = now(), withdrawn_at = now() WHERE id = %s",
                 (alert.id,))
    conn.execute(_EVENT_NOTE, (alert.id, ENGINE_ACTOR, "withdrawn", alert.status, "closed", note, Jsonb(detail)))


def note_alert(conn: psycopg.Connection, alert: EngineAlert, *, note: str, detail: dict) -> None:
    conn.execute(_EVENT_NOTE, (alert.id, ENGINE_ACTOR, "note", alert.status, alert.status, note, Jsonb(detail)))


KEEP = object()


def correct_alert(conn: psycopg.Connection, alert_id: int, *, count_delta: int = 0, first_value=KEEP,
                  last: tuple[datetime, float] | None = None, cleared_at=KEEP) -> None:
    """Puts right what the engine records on an alert: its count, first value, last reading, clear time."""
    conn.execute(
        """UPDATE alerts SET count = greatest(1, count + %(delta)s),
                  first_value = CASE WHEN %(set_first)s THEN %(first_value)s::float8 ELSE first_value END,
                  last_at = coalesce(%(last_at)s, last_at),
                  last_value = CASE WHEN %(last_at)s::timestamptz IS NULL THEN last_value ELSE %(last_value)s END,
                  cleared_at = CASE WHEN %(set_cleared)s THEN %(cleared_at)s::timestamptz ELSE cleared_at END
           WHERE id = %(id)s""",
        {"id": alert_id, "delta": count_delta, "set_first": first_value is not KEEP,
         "first_value": None if first_value is KEEP else first_value, "last_at": last[0] if last else None,
         "last_value": last[1] if last else None, "set_cleared": cleared_at is not KEEP,
         "cleared_at": None if cleared_at is KEEP else cleared_at})


def reopen_alert(conn: psycopg.Connection, rule: RuleRow, alert: EngineAlert, *, note: str, detail: dict) -> bool:
    """An alert the engine resolved whose condition, evaluated again, has not cleared: open again
    (a fresh acknowledge SLA). False if the (rule, sensor) has another unfinished alert."""
    try:
        with conn.transaction():
            conn.execute(
                """UPDATE alerts SET status = 'open', resolved_at = NULL, cleared_at = NULL, escalation_ended_at = NULL,
                          ack_due_at = now() + make_interval(secs => %s) WHERE id = %s""",
                (rule.ack_sla_s, alert.id))
    except psycopg.errors.UniqueViolation:
        return False
    conn.execute(_EVENT_NOTE, (alert.id, ENGINE_ACTOR, "reopened", alert.status, "open", note, Jsonb(detail)))
    return True
