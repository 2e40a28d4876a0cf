"""The alert engine's SQL (synchronous): rules and their sensors, the engine's per-(rule, sensor)
state, and raising, folding and clearing alerts. Everything here runs inside the ingest
batch's transaction (or the timer's), so alerts commit together with the readings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

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
                             first_value, last_value, count, raised_at, last_at, ack_due_at, close_due_at)
    SELECT %(rule)s, %(version)s, 'rule', %(kind)s, %(severity)s, %(title)s, %(sensor)s, place.geom,
           place.area_id, place.building_id, place.floor_id, place.room_id, place.component_id,
           chain.party_id, coalesce(chain.level, 'none'), %(value)s, %(value)s, 1, %(time)s, %(time)s,
           now() + make_interval(secs => %(ack_sla)s), now() + make_interval(secs => %(close_sla)s)
    FROM (SELECT 1) one LEFT JOIN place ON true LEFT JOIN chain ON true
    ON CONFLICT (rule_id, sensor_id) WHERE status IN ('open', 'acknowledged', 'dispatched') AND rule_id IS NOT NULL
    DO UPDATE SET count = a.count + 1, last_value = excluded.last_value,
                  last_at = greatest(a.last_at, excluded.last_at)
    RETURNING a.id, (a.xmax = 0) AS created, a.status"""

_EVENT = """INSERT INTO alert_events (alert_id, actor, action, from_status, to_status, detail)
            VALUES (%s, %s, %s, %s, %s, %s)"""


def raise_alert(conn: psycopg.Connection, rule: RuleRow, *, sensor_id: int, time: datetime,
                value: float | None, title: str) -> int:
    """Open an alert for (rule, sensor), or fold into the unfinished one. Returns its id."""
    alert_id, created, status = conn.execute(_RAISE, {
        "rule": rule.id, "version": rule.version, "kind": rule.kind, "severity": rule.severity, "title": title,
        "sensor": sensor_id, "value": value, "time": time, "ack_sla": rule.ack_sla_s,
        "close_sla": rule.close_sla_s}).fetchone()
    conn.execute(_EVENT, (alert_id, ENGINE_ACTOR, "raised" if created else "repeated", None if created else status,
                          status, Jsonb({"value": value, "time": time.isoformat()})))
    return alert_id


def fold_repeats(conn: psycopg.Connection, rule: RuleRow, *, sensor_id: int, repeats: int, last_time: datetime,
                 last_value: float) -> None:
    """Readings that keep an active condition true: counted into the unfinished alert. No event:
    the count, last value and last time are on the alert; its trail keeps the state changes."""
    conn.execute(
        """UPDATE alerts SET count = count + %s, last_value = %s, last_at = greatest(last_at, %s)
           WHERE rule_id = %s AND sensor_id = %s AND status IN ('open', 'acknowledged', 'dispatched')""",
        (repeats, last_value, last_time, rule.id, sensor_id))


def clear_alert(conn: psycopg.Connection, rule: RuleRow, *, sensor_id: int, time: datetime,
                value: float | None) -> None:
    """The condition cleared: note it; a rule with auto_clear also resolves the alert."""
    status = "resolved" if rule.auto_clear else None
    row = conn.execute(
        """UPDATE alerts a SET cleared_at = %(time)s,
                  status = coalesce(%(status)s, a.status),
                  resolved_at = CASE WHEN %(status)s IS NULL THEN a.resolved_at ELSE now() END
           FROM (SELECT id, status FROM alerts WHERE rule_id = %(rule)s AND sensor_id = %(sensor)s
                   AND status IN ('open', 'acknowledged', 'dispatched') FOR UPDATE) old
           WHERE a.id = old.id
           RETURNING a.id, old.status, a.status""",
        {"time": time, "status": status, "rule": rule.id, "sensor": sensor_id}).fetchone()
    if row is not None:
        conn.execute(_EVENT, (row[0], ENGINE_ACTOR, "resolved" if status else "cleared", row[1], row[2],
                              Jsonb({"value": value, "time": time.isoformat(), "cleared": True})))


def latest_values(conn: psycopg.Connection, sensor_ids: Sequence[int]) -> dict[int, tuple[datetime, float]]:
    rows = conn.execute("SELECT sensor_id, time, value FROM latest WHERE sensor_id = ANY(%s)",
                        (list(sensor_ids),)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


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
