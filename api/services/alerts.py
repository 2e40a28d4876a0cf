"""Rules, alerts, their lifecycle and external events.

Rules are validated by their kind (schemas/alerts.py); a patch is merged into the current rule and
the result validated as a whole, then stored as the next version. Alerts come out with their
point as GeoJSON in the requested ``crs`` (default CRS84), like the block-data layers.
"""

from __future__ import annotations

import json
from typing import Any

import shapely
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from cimtwin.errors import InvalidDocument
from cimtwin.schemas.alerts import RULE_IN, EventIn, RulePatch
from cimtwin.settings import Settings
from cimtwin.store import alerts as store

from . import spatial

# ----------------------------------------------------------------------------- rules

def _invalid(errors: list[dict], prefix: tuple = ()) -> InvalidDocument:
    items = [{"loc": list(prefix) + list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
    detail = "; ".join(f"{'.'.join(str(p) for p in i['loc'])}: {i['msg']}" for i in items)
    return InvalidDocument(detail, code="invalid_rule", errors=items)


async def _check_refs(pool: AsyncConnectionPool, definition: dict[str, Any]) -> None:
    missing = await store.missing_scope_refs(pool, definition.get("scope") or {})
    if missing:
        raise InvalidDocument("scope: " + "; ".join(f"{m} does not exist" for m in missing), code="invalid_rule",
                              errors=[{"loc": ["scope", m.split(" ")[0]], "msg": f"{m} does not exist",
                                       "type": "not_found"} for m in missing])


async def create_rule(*, pool: AsyncConnectionPool, body, actor: str) -> dict:
    definition = body.definition()
    await _check_refs(pool, definition)
    return await store.create_rule(pool, definition, actor=actor)


async def list_rules(*, pool: AsyncConnectionPool, settings: Settings, enabled: bool | None, kind: str | None,
                     include_deleted: bool, limit: int, offset: int, url: str) -> dict:
    spatial.check_limit(limit, settings)
    total, rows = await store.list_rules(pool, enabled=enabled, kind=kind, include_deleted=include_deleted,
                                         limit=limit, offset=offset)
    return _page(rows, total, url=url, limit=limit, offset=offset)


async def get_rule(*, pool: AsyncConnectionPool, rule_id: int) -> dict:
    return await store.get_rule(pool, rule_id)


async def update_rule(*, pool: AsyncConnectionPool, rule_id: int, patch: RulePatch, actor: str) -> dict:
    current = await store.get_rule(pool, rule_id)
    changes = patch.model_dump(exclude_unset=True)
    merged = {k: current[k] for k in ("name", "kind", "condition", "scope", "severity", "auto_clear", "ack_sla_s",
                                      "close_sla_s", "enabled")}
    merged.update(changes)
    try:
        rule = RULE_IN.validate_python(merged)
    except ValidationError as exc:
        raise _invalid(exc.errors(include_url=False)) from None
    definition = rule.definition()
    if "scope" in changes:
        await _check_refs(pool, definition)
    return await store.update_rule(pool, rule_id, definition, expected_version=current["version"], actor=actor)


async def delete_rule(*, pool: AsyncConnectionPool, rule_id: int, actor: str) -> None:
    await store.delete_rule(pool, rule_id, actor=actor)


async def rule_versions(*, pool: AsyncConnectionPool, rule_id: int) -> list[dict]:
    return await store.rule_versions(pool, rule_id)


# ----------------------------------------------------------------------------- alerts

def _page(items: list, total: int, *, url: str, limit: int, offset: int) -> dict:
    links = spatial.page_links(url, offset=offset, limit=limit, returned=len(items), matched=total)
    for link in links:
        link["type"] = "application/json"
    return {"items": items, "numberMatched": total, "numberReturned": len(items), "links": links}


def _with_geometry(rows: list[dict], out: spatial.OutputCrs) -> list[dict]:
    texts = spatial.geometry_texts([r["geometry"] for r in rows], out)
    for row, text in zip(rows, texts):
        row["geometry"] = json.loads(text)
    return rows


async def list_alerts(*, pool: AsyncConnectionPool, settings: Settings, filters: store.AlertFilter,
                      crs: str | None, limit: int, offset: int, url: str) -> tuple[dict, dict]:
    """A page of alerts (newest first) and the response headers (Content-Crs)."""
    spatial.check_limit(limit, settings)
    out = await spatial.output_crs(pool, spatial.crs_param(crs))
    total, rows = await store.list_alerts(pool, filters, limit=limit, offset=offset, srid=out.srid,
                                          digits=out.digits)
    return _page(_with_geometry(rows, out), total, url=url, limit=limit, offset=offset), out.header


async def get_alert(*, pool: AsyncConnectionPool, alert_id: int, crs: str | None,
                    events: bool = True) -> tuple[dict, dict]:
    out = await spatial.output_crs(pool, spatial.crs_param(crs))
    row = await store.get_alert(pool, alert_id, srid=out.srid, digits=out.digits, events=events)
    return _with_geometry([row], out)[0], out.header


async def act(*, pool: AsyncConnectionPool, settings: Settings, alert_id: int, action: str, actor: str,
              note: str | None = None, party_id: int | None = None, crs: str | None = None) -> tuple[dict, dict]:
    """One lifecycle step (store.TRANSITIONS); returns the alert with its trail."""
    await store.transition(pool, alert_id, action, actor=actor, note=note, party_id=party_id,
                           default_ack_sla_s=settings.alerts_event_ack_sla_s)
    return await get_alert(pool=pool, alert_id=alert_id, crs=crs)


async def raise_event(*, pool: AsyncConnectionPool, settings: Settings, body: EventIn, geom_crs: str | None,
                      crs: str | None, actor: str) -> tuple[dict, dict]:
    """An external event as a new alert, placed and dispatched; returns it with its trail."""
    point = None
    if body.location is not None:
        geom = spatial.input_geometry(json.dumps(body.location), ref=spatial.crs_param(geom_crs, name="geom-crs"),
                                      name="location", allowed=("Point",), max_vertices=1)
        point = shapely.to_wkb(shapely.force_2d(geom))
    alert_id = await store.raise_event_alert(
        pool, source=body.source, kind=body.kind, severity=body.severity, title=body.title,
        description=body.description, media=body.media_links(), external_ref=body.external_ref,
        observed_at=body.observed_at, point=point, area_id=body.area_id, building_id=body.building_id,
        room_id=body.room_id, component_id=body.component_id,
        ack_sla_s=body.ack_sla_s or settings.alerts_event_ack_sla_s,
        close_sla_s=body.close_sla_s or settings.alerts_event_close_sla_s, actor=actor)
    return await get_alert(pool=pool, alert_id=alert_id, crs=crs)
