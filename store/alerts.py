"""Alerts SQL: rules (versioned, audited), alerts and their trail, lifecycle transitions, alerts
raised from external events, and escalation.

The API's functions are async and take its pool; ``escalate_due`` is synchronous (the alerts
timer). Dispatch is the database's: ``cimtwin_place``, ``cimtwin_sensor_place`` and
``cimtwin_dispatch_chain`` (migration 0010_dispatch.sql). Every change of an alert writes the
alert first and then one ``alert_events`` row, in one transaction (the outbox trigger reads the
alert as it is then).

Row locks order the writers: a lifecycle action takes the alert's row (``FOR UPDATE``), and
escalation skips rows someone holds (``FOR UPDATE SKIP LOCKED``), so two timers never escalate
the same alert twice and an acknowledgement never races an escalation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import Conflict, NotFound, QueryTimeout

from . import audit
from .blocks import geometry_sql

ESCALATION_ACTOR = "escalation"
_UNFINISHED = ("open", "acknowledged", "dispatched")


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except psycopg.errors.QueryCanceled:
        raise QueryTimeout("the query ran past the statement timeout; narrow it (a shorter period, an area)") \
            from None


# ----------------------------------------------------------------------------- rules

_RULE_COLUMNS = ("id, name, version, enabled, kind, condition, scope, severity, auto_clear, ack_sla_s, close_sla_s, "
                 "created_at, updated_at, created_by, deleted_at")
_DEFINITION = ("name", "enabled", "kind", "condition", "scope", "severity", "auto_clear", "ack_sla_s", "close_sla_s")


def _rule_target(rule_id: int) -> str:
    return f"alert_rule:{rule_id}"


def _jsonb(values: dict[str, Any]) -> dict[str, Any]:
    return {k: Jsonb(v) if k in ("condition", "scope") else v for k, v in values.items()}


async def missing_scope_refs(pool: AsyncConnectionPool, scope: dict[str, Any]) -> list[str]:
    """The scope's references that do not exist, as ``key value`` strings."""
    checks = {"sensor_id": "SELECT 1 FROM sensors WHERE id = %s", "area_id": "SELECT 1 FROM areas WHERE id = %s",
              "component_kind": "SELECT 1 FROM component_kinds WHERE code = %s"}
    missing = []
    async with pool.connection() as conn:
        for key, query in checks.items():
            if scope.get(key) is not None and await (await conn.execute(query, (scope[key],))).fetchone() is None:
                missing.append(f"{key} {scope[key]!r}")
    return missing


async def create_rule(pool: AsyncConnectionPool, definition: dict[str, Any], *, actor: str) -> dict:
    """A new rule at version 1, audited."""
    columns = [c for c in _DEFINITION if c in definition]
    query = sql.SQL("INSERT INTO alert_rules ({cols}, created_by) VALUES ({vals}, %(created_by)s) "
                    "RETURNING " + _RULE_COLUMNS).format(
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        vals=sql.SQL(", ").join(sql.Placeholder(c) for c in columns))
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        row = await (await cur.execute(query, {**_jsonb(definition), "created_by": actor})).fetchone()
        await audit.record(conn, actor=actor, action="alert_rule.create", target=_rule_target(row["id"]),
                           detail={"version": 1, **{c: definition[c] for c in columns}})
    return row


async def list_rules(pool: AsyncConnectionPool, *, enabled: bool | None = None, kind: str | None = None,
                     include_deleted: bool = False, limit: int = 100, offset: int = 0) -> tuple[int, list[dict]]:
    where = """WHERE (%(enabled)s::boolean IS NULL OR enabled = %(enabled)s)
                 AND (%(kind)s::text IS NULL OR kind = %(kind)s)
                 AND (%(deleted)s OR deleted_at IS NULL)"""
    params = {"enabled": enabled, "kind": kind, "deleted": include_deleted, "limit": limit, "offset": offset}
    async with pool.connection() as conn:
        total = (await (await conn.execute("SELECT count(*) FROM alert_rules " + where, params)).fetchone())[0]
        cur = conn.cursor(row_factory=dict_row)
        rows = await (await cur.execute(f"SELECT {_RULE_COLUMNS} FROM alert_rules {where} "
                                        "ORDER BY id LIMIT %(limit)s OFFSET %(offset)s", params)).fetchall()
    return total, rows


def _rule_not_found(rule_id: int) -> NotFound:
    return NotFound(f"alert rule {rule_id} does not exist", code="rule_not_found")


async def get_rule(pool: AsyncConnectionPool, rule_id: int) -> dict:
    """A rule, deleted ones too (their alerts still name them)."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        row = await (await cur.execute(f"SELECT {_RULE_COLUMNS} FROM alert_rules WHERE id = %s",
                                       (rule_id,))).fetchone()
    if row is None:
        raise _rule_not_found(rule_id)
    return row


async def _lock_rule(conn: psycopg.AsyncConnection, rule_id: int, expected_version: int | None) -> dict:
    cur = conn.cursor(row_factory=dict_row)
    row = await (await cur.execute(f"SELECT {_RULE_COLUMNS} FROM alert_rules WHERE id = %s FOR UPDATE",
                                   (rule_id,))).fetchone()
    if row is None:
        raise _rule_not_found(rule_id)
    if row["deleted_at"] is not None:
        raise Conflict(f"alert rule {rule_id} was deleted at {row['deleted_at'].isoformat()}", code="rule_deleted")
    if expected_version is not None and row["version"] != expected_version:
        raise Conflict(f"alert rule {rule_id} changed meanwhile (now version {row['version']}); read it and try "
                       "again", code="version_conflict", version=row["version"])
    return row


_SNAPSHOT = """INSERT INTO alert_rule_versions (rule_id, version, snapshot, changed_at, changed_by)
               SELECT r.id, r.version, to_jsonb(r), now(), %(actor)s FROM alert_rules r WHERE r.id = %(id)s"""


async def update_rule(pool: AsyncConnectionPool, rule_id: int, changes: dict[str, Any], *, expected_version: int,
                      actor: str) -> dict:
    """Applies ``changes`` as version+1, the old version kept in alert_rule_versions; audited.
    ``expected_version``: the version the changes were validated against (else 409)."""
    async with pool.connection() as conn, conn.transaction():
        old = await _lock_rule(conn, rule_id, expected_version)
        changes = {k: v for k, v in changes.items() if k in _DEFINITION and old[k] != v}
        if not changes:
            return old
        await conn.execute(_SNAPSHOT, {"actor": actor, "id": rule_id})
        query = sql.SQL("UPDATE alert_rules SET {sets}, version = version + 1, updated_at = now() "
                        "WHERE id = %(id)s RETURNING " + _RULE_COLUMNS).format(
            sets=sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(c))
                                    for c in changes))
        cur = conn.cursor(row_factory=dict_row)
        row = await (await cur.execute(query, {**_jsonb(changes), "id": rule_id})).fetchone()
        await audit.record(conn, actor=actor, action="alert_rule.update", target=_rule_target(rule_id),
                           detail={"version": row["version"],
                                   "changes": {k: {"from": old[k], "to": v} for k, v in changes.items()}})
    return row


async def delete_rule(pool: AsyncConnectionPool, rule_id: int, *, actor: str) -> dict:
    """Soft delete: disabled and marked deleted as a new version (its alerts keep their rule); audited."""
    async with pool.connection() as conn, conn.transaction():
        await _lock_rule(conn, rule_id, None)
        await conn.execute(_SNAPSHOT, {"actor": actor, "id": rule_id})
        cur = conn.cursor(row_factory=dict_row)
        row = await (await cur.execute(
            "UPDATE alert_rules SET enabled = false, deleted_at = now(), updated_at = now(), version = version + 1 "
            f"WHERE id = %s RETURNING {_RULE_COLUMNS}", (rule_id,))).fetchone()
        await audit.record(conn, actor=actor, action="alert_rule.delete", target=_rule_target(rule_id),
                           detail={"version": row["version"]})
    return row


async def rule_versions(pool: AsyncConnectionPool, rule_id: int) -> list[dict]:
    """Every version, oldest first; the last is the current one."""
    await get_rule(pool, rule_id)
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        return await (await cur.execute(
            """SELECT rule_id, version, false AS current, snapshot, changed_at AS superseded_at,
                      changed_by AS superseded_by
                 FROM alert_rule_versions WHERE rule_id = %(id)s
               UNION ALL
               SELECT r.id, r.version, true, to_jsonb(r), NULL, NULL FROM alert_rules r WHERE r.id = %(id)s
               ORDER BY version""", {"id": rule_id})).fetchall()


# ----------------------------------------------------------------------------- alerts: reading

#: The output columns of an alert, over ``alerts a`` joined by _ALERT_FROM; {geometry} per output CRS.
ALERT_COLUMNS = """a.id, a.rule_id, a.rule_version, r.name AS rule_name, a.source, a.kind, a.severity, a.status,
    a.title, a.description, a.media, a.external_ref, a.sensor_id, {geometry} AS geometry,
    a.area_id, ar.code AS area_code, ar.name AS area_name, ar.level AS area_level,
    a.building_id, a.floor_id, a.room_id, a.component_id,
    a.party_id, p.code AS party_code, p.name AS party_name, coalesce(a.dispatch_level, 'none') AS dispatch_level,
    a.escalation_level, a.escalation_ended_at, a.first_value, a.last_value, a.count, a.raised_at, a.last_at,
    a.cleared_at, a.created_at, a.acknowledged_at, a.dispatched_at, a.resolved_at, a.closed_at,
    a.ack_due_at, a.close_due_at, a.withdrawn_at"""
_ALERT_FROM = """alerts a
    LEFT JOIN alert_rules r ON r.id = a.rule_id
    LEFT JOIN areas ar ON ar.id = a.area_id
    LEFT JOIN parties p ON p.id = a.party_id"""
_SUBTREE = """(WITH RECURSIVE sub(id, depth) AS (
                   SELECT id, 0 FROM areas WHERE id = %(area_id)s
                   UNION ALL SELECT c.id, sub.depth + 1 FROM areas c JOIN sub ON c.parent_id = sub.id
                   WHERE sub.depth < 10)
               SELECT id FROM sub)"""


@dataclass
class AlertFilter:
    status: list[str] | None = None
    severity: list[str] | None = None
    source: list[str] | None = None
    area_id: int | None = None          # the area and every area inside it
    building_id: int | None = None
    rule_id: int | None = None
    sensor_id: int | None = None
    party_id: int | None = None
    since: datetime | None = None       # raised_at >= since
    until: datetime | None = None       # raised_at < until


def _alert_where(f: AlertFilter) -> tuple[sql.Composable, dict]:
    parts, params = [], {}
    for name in ("status", "severity", "source"):
        values = getattr(f, name)
        if values:
            parts.append(sql.SQL("a.{} = ANY({})").format(sql.Identifier(name), sql.Placeholder(name)))
            params[name] = list(values)
    for name in ("building_id", "rule_id", "sensor_id", "party_id"):
        value = getattr(f, name)
        if value is not None:
            parts.append(sql.SQL("a.{} = {}").format(sql.Identifier(name), sql.Placeholder(name)))
            params[name] = value
    if f.area_id is not None:
        parts.append(sql.SQL("a.area_id IN " + _SUBTREE))
        params["area_id"] = f.area_id
    if f.since is not None:
        parts.append(sql.SQL("a.raised_at >= %(since)s"))
        params["since"] = f.since
    if f.until is not None:
        parts.append(sql.SQL("a.raised_at < %(until)s"))
        params["until"] = f.until
    if not parts:
        return sql.SQL(""), params
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(parts), params


async def list_alerts(pool: AsyncConnectionPool, f: AlertFilter, *, limit: int, offset: int, srid: int | None,
                      digits: int) -> tuple[int, list[dict]]:
    """A page of alerts, newest (raised_at) first, and how many match."""
    where, params = _alert_where(f)
    count = sql.SQL("SELECT count(*) FROM alerts a {}").format(where)
    page = sql.SQL("SELECT " + ALERT_COLUMNS + " FROM " + _ALERT_FROM +
                   " {where} ORDER BY a.raised_at DESC, a.id DESC LIMIT %(limit)s OFFSET %(offset)s").format(
        geometry=geometry_sql(srid, digits, "a.geom"), where=where)
    with _translated():
        async with pool.connection() as conn:
            total = (await (await conn.execute(count, params)).fetchone())[0]
            cur = conn.cursor(row_factory=dict_row)
            rows = await (await cur.execute(page, {**params, "limit": limit, "offset": offset})).fetchall()
    return total, rows


def _alert_not_found(alert_id: int) -> NotFound:
    return NotFound(f"alert {alert_id} does not exist", code="alert_not_found")


async def get_alert(pool: AsyncConnectionPool, alert_id: int, *, srid: int | None = 4326, digits: int = 9,
                    events: bool = False) -> dict:
    """One alert; with ``events``, its trail (oldest first) under ``events``."""
    query = sql.SQL("SELECT " + ALERT_COLUMNS + " FROM " + _ALERT_FROM + " WHERE a.id = %s").format(
        geometry=geometry_sql(srid, digits, "a.geom"))
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        row = await (await cur.execute(query, (alert_id,))).fetchone()
        if row is None:
            raise _alert_not_found(alert_id)
        if events:
            row["events"] = await (await cur.execute(
                "SELECT id, alert_id, at, actor, action, from_status, to_status, note, detail FROM alert_events "
                "WHERE alert_id = %s ORDER BY id", (alert_id,))).fetchall()
    return row


# ----------------------------------------------------------------------------- alerts: lifecycle

@dataclass(frozen=True)
class Transition:
    allowed_from: tuple[str, ...]
    to: str | None          # None: the status stays (a note)
    event: str              # the alert_events action


#: The lifecycle (README "Alerts"; schemas/alerts.py has the table).
TRANSITIONS: dict[str, Transition] = {
    "acknowledge": Transition(("open",), "acknowledged", "acknowledged"),
    "dispatch": Transition(("open", "acknowledged", "dispatched"), "dispatched", "dispatched"),
    "resolve": Transition(_UNFINISHED, "resolved", "resolved"),
    "close": Transition(("resolved",), "closed", "closed"),
    "reopen": Transition(("resolved",), "open", "reopened"),
    "note": Transition(("open", "acknowledged", "dispatched", "resolved", "closed"), None, "note"),
}

_SETS = {
    # The first acknowledgement counts (time to acknowledge); a reopened alert keeps it.
    "acknowledge": "acknowledged_at = coalesce(acknowledged_at, now())",
    # Dispatching an open alert acknowledges it too.
    "dispatch": """acknowledged_at = coalesce(acknowledged_at, now()), dispatched_at = now(),
                   party_id = coalesce(%(party)s, party_id),
                   dispatch_level = CASE WHEN %(party)s::bigint IS NULL THEN dispatch_level ELSE 'manual' END""",
    "resolve": "resolved_at = now()",
    "close": "closed_at = now()",
    # Back to open with a fresh acknowledge SLA; escalation may run again.
    "reopen": """resolved_at = NULL, escalation_ended_at = NULL,
                 ack_due_at = now() + make_interval(secs => coalesce(
                     (SELECT ack_sla_s FROM alert_rules WHERE id = alerts.rule_id), %(default_sla)s))""",
}


async def transition(pool: AsyncConnectionPool, alert_id: int, action: str, *, actor: str, note: str | None = None,
                     party_id: int | None = None, default_ack_sla_s: int = 900) -> None:
    """One lifecycle step: checks it is allowed from the alert's status (else 409 naming it),
    updates the status and its timestamp, and appends one alert_events row, in one transaction."""
    step = TRANSITIONS[action]
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        row = await (await cur.execute(
            "SELECT id, status, party_id, dispatch_level FROM alerts WHERE id = %s FOR UPDATE",
            (alert_id,))).fetchone()
        if row is None:
            raise _alert_not_found(alert_id)
        status = row["status"]
        if status not in step.allowed_from:
            raise Conflict(f"alert {alert_id} is {status}; {action} is allowed only from "
                           f"{' or '.join(step.allowed_from)}", code="invalid_transition", status=status)
        detail: dict[str, Any] = {}
        if action == "dispatch":
            if party_id is not None:
                if await (await cur.execute("SELECT 1 FROM parties WHERE id = %s", (party_id,))).fetchone() is None:
                    raise NotFound(f"party {party_id} does not exist", code="party_not_found")
            elif row["party_id"] is None:
                raise Conflict(f"alert {alert_id} has no responsible party (nobody is assigned at any level of "
                               "its place); give party_id", code="no_party")
            detail = {"party_id": party_id if party_id is not None else row["party_id"],
                      "dispatch_level": "manual" if party_id is not None else row["dispatch_level"],
                      "previous_party_id": row["party_id"]}
            if status == "open":
                detail["acknowledged"] = True
        to = step.to or status
        if action in _SETS:
            try:
                await conn.execute(sql.SQL("UPDATE alerts SET status = %(to)s, " + _SETS[action] +
                                           " WHERE id = %(id)s"),
                                   {"to": to, "id": alert_id, "party": party_id, "default_sla": default_ack_sla_s})
            except psycopg.errors.UniqueViolation:
                raise Conflict(f"alert {alert_id} cannot be reopened: its rule has raised a newer unfinished alert "
                               "for the same sensor", code="newer_alert") from None
        await conn.execute(
            "INSERT INTO alert_events (alert_id, actor, action, from_status, to_status, note, detail) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)", (alert_id, actor, step.event, status, to, note, Jsonb(detail)))


# ----------------------------------------------------------------------------- alerts from external events

_RAISE_EVENT = """
    WITH place AS (SELECT * FROM cimtwin_place(ST_GeomFromWKB(%(geom)s, 4326), %(building)s::bigint,
                                               %(room)s::bigint, %(component)s::bigint)),
    chain AS (SELECT c.party_id, c.level
                FROM place p, cimtwin_dispatch_chain(p.geom, coalesce(%(area)s::bigint, p.area_id), p.building_id,
                                                     p.room_id, p.component_id) c
               WHERE c.rank = 0)
    INSERT INTO alerts (source, kind, severity, title, description, media, external_ref, geom, area_id, building_id,
                        floor_id, room_id, component_id, party_id, dispatch_level, raised_at, last_at, ack_due_at,
                        close_due_at)
    SELECT %(source)s, %(kind)s, %(severity)s, %(title)s, %(description)s, %(media)s, %(external_ref)s,
           place.geom, coalesce(%(area)s::bigint, place.area_id), place.building_id, place.floor_id, place.room_id,
           place.component_id, chain.party_id, coalesce(chain.level, 'none'),
           coalesce(%(at)s, now()), coalesce(%(at)s, now()),
           now() + make_interval(secs => %(ack_sla)s), now() + make_interval(secs => %(close_sla)s)
      FROM place LEFT JOIN chain ON true
    RETURNING id, party_id, dispatch_level, area_id, building_id, room_id, component_id"""

_EXISTS = {"area_id": ("areas", "area"), "building_id": ("buildings", "building"), "room_id": ("rooms", "room"),
           "component_id": ("components", "component")}


async def raise_event_alert(pool: AsyncConnectionPool, *, source: str, kind: str, severity: str, title: str,
                            description: str | None, media: list[dict], external_ref: str | None,
                            observed_at: datetime | None, point: bytes | None, area_id: int | None,
                            building_id: int | None, room_id: int | None, component_id: int | None,
                            ack_sla_s: int, close_sla_s: int, actor: str) -> int:
    """A new alert from an external event (never folded into another), placed and dispatched from
    its place's chain (rank 0), with its 'raised' event. Returns its id."""
    refs = {"area_id": area_id, "building_id": building_id, "room_id": room_id, "component_id": component_id}
    async with pool.connection() as conn, conn.transaction():
        for key, value in refs.items():
            if value is not None:
                table, noun = _EXISTS[key]
                found = await (await conn.execute(sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(
                    sql.Identifier(table)), (value,))).fetchone()
                if found is None:
                    raise NotFound(f"{noun} {value} does not exist", code=f"{noun}_not_found")
        cur = conn.cursor(row_factory=dict_row)
        row = await (await cur.execute(_RAISE_EVENT, {
            "geom": point, "area": area_id, "building": building_id, "room": room_id, "component": component_id,
            "source": source, "kind": kind, "severity": severity, "title": title, "description": description,
            "media": Jsonb(media), "external_ref": external_ref, "at": observed_at, "ack_sla": ack_sla_s,
            "close_sla": close_sla_s})).fetchone()
        await conn.execute(
            "INSERT INTO alert_events (alert_id, actor, action, from_status, to_status, detail) "
            "VALUES (%s, %s, 'raised', NULL, 'open', %s)",
            (row["id"], actor, Jsonb({"source": source, "external_ref": external_ref,
                                      "dispatch": {"party_id": row["party_id"], "level": row["dispatch_level"],
                                                   "rank": 0}})))
    return row["id"]


# ----------------------------------------------------------------------------- escalation (sync)

_DUE = """
    SELECT a.id, a.party_id, a.dispatch_level, a.escalation_level, a.ack_due_at, r.ack_sla_s,
           a.escalation_level + CASE WHEN a.party_id IS NULL THEN 0 ELSE 1 END AS next_rank,
           nxt.level AS next_level, nxt.party_id AS next_party_id
      FROM (SELECT id FROM alerts
             WHERE status = 'open' AND escalation_ended_at IS NULL AND ack_due_at <= %(now)s
             ORDER BY ack_due_at, id LIMIT %(limit)s
             FOR UPDATE SKIP LOCKED) due
      JOIN alerts a ON a.id = due.id
      LEFT JOIN alert_rules r ON r.id = a.rule_id
      LEFT JOIN LATERAL (
          SELECT c.level, c.party_id
            FROM cimtwin_dispatch_chain(a.geom, a.area_id, a.building_id, a.room_id, a.component_id) c
           WHERE c.rank = a.escalation_level + CASE WHEN a.party_id IS NULL THEN 0 ELSE 1 END) nxt ON true
     ORDER BY a.ack_due_at, a.id"""

_ESCALATE = """UPDATE alerts SET party_id = %s, dispatch_level = %s, escalation_level = %s, ack_due_at = %s
               WHERE id = %s"""
_TOP = "UPDATE alerts SET escalation_ended_at = %s WHERE id = %s"
_ESCALATED = """INSERT INTO alert_events (alert_id, actor, action, from_status, to_status, detail)
                VALUES (%s, %s, 'escalated', 'open', 'open', %s)"""


def escalate_due(conn: psycopg.Connection, *, now: datetime, default_ack_sla_s: int | None = None,
                 batch: int = 500) -> int:
    """Moves every open (unacknowledged) alert whose ack_due_at has passed to the next rank of its
    dispatch chain: party, dispatch_level, escalation_level + 1, and a new ack_due_at = now + the
    rule's ack_sla_s (``default_ack_sla_s``, default CIMTWIN_ALERTS_EVENT_ACK_SLA_S, for events),
    with an 'escalated' event. An alert at the top of its chain gets one 'escalated' event saying
    so (detail.top) and escalation_ended_at, and is not escalated again unless reopened. An alert
    with nobody assigned tries rank 0 again (someone may have been assigned since).

    Runs in transactions of its own (savepoints inside a caller's); rows locked by someone else
    (another timer, an acknowledgement under way) are skipped and seen next time. Returns how many
    alerts it changed."""
    if default_ack_sla_s is None:
        from cimtwin.settings import get_settings

        default_ack_sla_s = get_settings().alerts_event_ack_sla_s
    changed = 0
    while True:
        with conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            due = cur.execute(_DUE, {"now": now, "limit": batch}).fetchall()
            for a in due:
                if a["next_party_id"] is not None:
                    sla = a["ack_sla_s"] or default_ack_sla_s
                    conn.execute(_ESCALATE, (a["next_party_id"], a["next_level"], a["next_rank"],
                                             now + timedelta(seconds=sla), a["id"]))
                    detail = {"from_party_id": a["party_id"], "from_level": a["dispatch_level"],
                              "to_party_id": a["next_party_id"], "to_level": a["next_level"],
                              "escalation_level": a["next_rank"], "ack_due_was": a["ack_due_at"].isoformat(),
                              "ack_sla_s": sla}
                else:
                    conn.execute(_TOP, (now, a["id"]))
                    reason = ("nobody is assigned at any level of this alert's place" if a["party_id"] is None
                              else "no higher level in the dispatch chain")
                    detail = {"top": True, "reason": reason, "party_id": a["party_id"],
                              "level": a["dispatch_level"], "escalation_level": a["escalation_level"],
                              "ack_due_was": a["ack_due_at"].isoformat()}
                conn.execute(_ESCALATED, (a["id"], ESCALATION_ACTOR, Jsonb(detail)))
            changed += len(due)
        if len(due) < batch:
            return changed
