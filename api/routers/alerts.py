"""Rules, alerts and their lifecycle, and events from external sources.

Who may do what:

- rules: read admin, operator, analyst; create, change, delete admin and operator;
- alerts: read admin, operator, analyst; lifecycle actions (acknowledge, dispatch, resolve,
  close, reopen, notes) admin and operator (a responsible party's staff use operator keys);
- events (hotline, video AI, manual reports): admin and operator.

The lifecycle (schemas/alerts.py): open → acknowledged → dispatched → resolved → closed.
Dispatching an open alert also acknowledges it; any unfinished alert can be resolved; a
resolved one can be closed or reopened; closed is final; notes go on any alert. A step not
allowed from the alert's status is a 409 whose ``status`` names it.

Alerts carry their point as GeoJSON ``geometry`` in ``crs`` (default CRS84); events give their
``location`` in ``geom-crs`` (default CRS84).
"""

# No `from __future__ import annotations`: FastAPI reads the annotations.
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request, Response, status

from cimtwin.api.auth import READERS, STAFF, Principal, require
from cimtwin.api.deps import get_pool
from cimtwin.api.services import alerts as service
from cimtwin.schemas.alerts import (
    AckIn,
    AlertPage,
    AlertWithTrail,
    CloseIn,
    DispatchIn,
    EventIn,
    NoteIn,
    ReopenIn,
    ResolveIn,
    Rule,
    RuleIn,
    RuleKind,
    RulePage,
    RulePatch,
    RuleVersion,
    Severity,
    Source,
    Status,
)
from cimtwin.settings import get_settings
from cimtwin.store.alerts import AlertFilter

router = APIRouter()

_READ = require(*READERS)
_WRITE = require(*STAFF)

CrsParam = Annotated[str | None, Query(description="Output CRS of `geometry`: CRS84 (default), EPSG:4326, "
                                                   "EPSG:4490 (CGCS2000), EPSG:3857, EPSG:4513-4554, GCJ02, …")]
GeomCrsParam = Annotated[str | None, Query(alias="geom-crs", description="CRS of `location` (default CRS84)")]
Limit = Annotated[int, Query(ge=1, description="page size; above CIMTWIN_API_MAX_PAGE_SIZE is a 400")]
Offset = Annotated[int, Query(ge=0)]


def _body(result: tuple[dict, dict], response: Response) -> dict:
    """The body, validated by the route's response_model; its headers (Content-Crs) go on ``response``."""
    body, headers = result
    response.headers.update(headers)
    return body


# ----------------------------------------------------------------------------- rules

@router.post("/rules", response_model=Rule, status_code=status.HTTP_201_CREATED, tags=["rules"],
             summary="Create a rule (version 1)")
async def create_rule(body: Annotated[RuleIn, Body()], principal: Principal = Depends(_WRITE),
                      pool=Depends(get_pool)):
    return await service.create_rule(pool=pool, body=body, actor=principal.actor)


@router.get("/rules", response_model=RulePage, tags=["rules"], summary="Rules")
async def list_rules(request: Request, enabled: bool | None = None, kind: RuleKind | None = None,
                     include_deleted: bool = False, limit: Limit = 100, offset: Offset = 0,
                     principal: Principal = Depends(_READ), pool=Depends(get_pool)):
    return await service.list_rules(pool=pool, settings=get_settings(), enabled=enabled, kind=kind,
                                    include_deleted=include_deleted, limit=limit, offset=offset,
                                    url=str(request.url))


@router.get("/rules/{rule_id}", response_model=Rule, tags=["rules"], summary="A rule (deleted ones too)")
async def get_rule(rule_id: int, principal: Principal = Depends(_READ), pool=Depends(get_pool)):
    return await service.get_rule(pool=pool, rule_id=rule_id)


@router.patch("/rules/{rule_id}", response_model=Rule, tags=["rules"],
              summary="Change a rule (the next version; the old one is kept)")
async def patch_rule(rule_id: int, body: RulePatch, principal: Principal = Depends(_WRITE),
                     pool=Depends(get_pool)):
    return await service.update_rule(pool=pool, rule_id=rule_id, patch=body, actor=principal.actor)


@router.delete("/rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, tags=["rules"],
               summary="Delete a rule (disabled and marked deleted; its alerts stay)")
async def delete_rule(rule_id: int, principal: Principal = Depends(_WRITE), pool=Depends(get_pool)):
    await service.delete_rule(pool=pool, rule_id=rule_id, actor=principal.actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/rules/{rule_id}/versions", response_model=list[RuleVersion], tags=["rules"],
            summary="Every version of a rule, oldest first")
async def rule_versions(rule_id: int, principal: Principal = Depends(_READ), pool=Depends(get_pool)):
    return await service.rule_versions(pool=pool, rule_id=rule_id)


# ----------------------------------------------------------------------------- alerts

# `{alert_id:int}`: only numbers match, so /alerts/stream and the like stay free.

@router.get("/alerts", response_model=AlertPage, tags=["alerts"], summary="Alerts, newest first")
async def list_alerts(
        request: Request, response: Response,
        status_: Annotated[list[Status] | None, Query(alias="status", description="one or more")] = None,
        severity: Annotated[list[Severity] | None, Query(description="one or more")] = None,
        source: Annotated[list[Source] | None, Query(description="one or more")] = None,
        area_id: Annotated[int | None, Query(description="in this area or any area inside it")] = None,
        building_id: int | None = None, rule_id: int | None = None, sensor_id: int | None = None,
        party_id: int | None = None,
        since: Annotated[datetime | None, Query(description="raised at or after")] = None,
        until: Annotated[datetime | None, Query(description="raised before")] = None,
        crs: CrsParam = None, limit: Limit = 100, offset: Offset = 0,
        principal: Principal = Depends(_READ), pool=Depends(get_pool)):
    filters = AlertFilter(status=status_, severity=severity, source=source, area_id=area_id,
                          building_id=building_id, rule_id=rule_id, sensor_id=sensor_id, party_id=party_id,
                          since=since, until=until)
    return _body(await service.list_alerts(pool=pool, settings=get_settings(), filters=filters, crs=crs,
                                           limit=limit, offset=offset, url=str(request.url)), response)


@router.get("/alerts/{alert_id:int}", response_model=AlertWithTrail, tags=["alerts"],
            summary="An alert with its trail (every step, oldest first)")
async def get_alert(alert_id: int, response: Response, crs: CrsParam = None, principal: Principal = Depends(_READ),
                    pool=Depends(get_pool)):
    return _body(await service.get_alert(pool=pool, alert_id=alert_id, crs=crs), response)


async def _act(pool, response: Response, principal: Principal, alert_id: int, action: str, crs: str | None,
               note: str | None, party_id: int | None = None) -> dict:
    return _body(await service.act(pool=pool, settings=get_settings(), alert_id=alert_id, action=action,
                                   actor=principal.actor, note=note, party_id=party_id, crs=crs), response)


@router.post("/alerts/{alert_id:int}/acknowledge", response_model=AlertWithTrail, tags=["alerts"],
             summary="open → acknowledged (stops escalation)")
async def acknowledge(alert_id: int, response: Response, body: AckIn | None = None, crs: CrsParam = None,
                      principal: Principal = Depends(_WRITE), pool=Depends(get_pool)):
    return await _act(pool, response, principal, alert_id, "acknowledge", crs, body.note if body else None)


@router.post("/alerts/{alert_id:int}/dispatch", response_model=AlertWithTrail, tags=["alerts"],
             summary="open or acknowledged → dispatched, to its party or to party_id")
async def dispatch(alert_id: int, response: Response, body: DispatchIn | None = None, crs: CrsParam = None,
                   principal: Principal = Depends(_WRITE), pool=Depends(get_pool)):
    body = body or DispatchIn()
    return await _act(pool, response, principal, alert_id, "dispatch", crs, body.note, body.party_id)


@router.post("/alerts/{alert_id:int}/resolve", response_model=AlertWithTrail, tags=["alerts"],
             summary="open, acknowledged or dispatched → resolved")
async def resolve(alert_id: int, response: Response, body: ResolveIn | None = None, crs: CrsParam = None,
                  principal: Principal = Depends(_WRITE), pool=Depends(get_pool)):
    return await _act(pool, response, principal, alert_id, "resolve", crs, body.note if body else None)


@router.post("/alerts/{alert_id:int}/close", response_model=AlertWithTrail, tags=["alerts"],
             summary="resolved → closed (final)")
async def close(alert_id: int, response: Response, body: CloseIn | None = None, crs: CrsParam = None,
                principal: Principal = Depends(_WRITE), pool=Depends(get_pool)):
    return await _act(pool, response, principal, alert_id, "close", crs, body.note if body else None)


@router.post("/alerts/{alert_id:int}/reopen", response_model=AlertWithTrail, tags=["alerts"],
             summary="resolved → open (a fresh acknowledge SLA; escalation resumes)")
async def reopen(alert_id: int, response: Response, body: ReopenIn, crs: CrsParam = None,
                 principal: Principal = Depends(_WRITE), pool=Depends(get_pool)):
    return await _act(pool, response, principal, alert_id, "reopen", crs, body.note)


@router.post("/alerts/{alert_id:int}/notes", response_model=AlertWithTrail, tags=["alerts"],
             summary="Add a note to the trail (any status)")
async def add_note(alert_id: int, response: Response, body: NoteIn, crs: CrsParam = None,
                   principal: Principal = Depends(_WRITE), pool=Depends(get_pool)):
    return await _act(pool, response, principal, alert_id, "note", crs, body.note)


# ----------------------------------------------------------------------------- external events

@router.post("/events", response_model=AlertWithTrail, status_code=status.HTTP_201_CREATED, tags=["alerts"],
             summary="Report an event from outside (hotline, video AI, a person): a new alert, dispatched")
async def post_event(body: EventIn, response: Response, geom_crs: GeomCrsParam = None, crs: CrsParam = None,
                     principal: Principal = Depends(_WRITE), pool=Depends(get_pool)):
    return _body(await service.raise_event(pool=pool, settings=get_settings(), body=body, geom_crs=geom_crs,
                                           crs=crs, actor=principal.actor), response)
