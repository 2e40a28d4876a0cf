"""``GET /alerts/stream``: alert events as Server-Sent Events, filtered by area and severity, and
the buildings' live state changes (``building_state``, without ids).

The router brings its own lifespan (merged into the app's by ``include_router``): it starts the
process's one ``AlertHub`` after the app's pool is open, and stops it before the pool closes.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import StreamingResponse

from cimtwin.api.auth import READERS, require
from cimtwin.api.deps import get_pool
from cimtwin.api.services import alert_stream as service
from cimtwin.errors import BadRequest

SEVERITIES = ("info", "warning", "major", "critical")


@asynccontextmanager
async def lifespan(app: FastAPI):
    hub = service.AlertHub(app.state.settings, app.state.pool)
    await hub.start()
    app.state.alert_hub = hub
    try:
        yield
    finally:
        await hub.stop()


router = APIRouter(tags=["alerts"], lifespan=lifespan)

_DESCRIPTION = """\
A `text/event-stream` of every change of every alert (raised, repeated, acknowledged, dispatched,
escalated, cleared, resolved, closed, reopened, note, withdrawn), in event-id order:

```
id: 1234
event: alert
data: {"version": 1, "event": {"id": 1234, "alert_id": 56, "action": "raised", "from_status": null,
       "to_status": "open", "actor": "engine", "at": "2024-05-01T08:00:00.000000Z", "note": null,
       "detail": {"value": 27.5, "time": "..."}},
       "alert": {"id": 56, "title": "...", "kind": "threshold", "severity": "major", "status": "open",
                 "area_id": 7, "area_code": "440303001", "party_id": 3, "dispatch_level": "building", ...}}
```

(`data` is one line; it is the same document that webhooks and MQTT `cim/v1/alerts/{area}/{severity}`
receive.) Reconnect with the `Last-Event-ID` header (browsers' `EventSource` does this by itself) or
`?last_event_id=` to get the events after it first (at most the newest `CIMTWIN_STREAM_REPLAY_MAX`;
an `event: truncated` says when older ones were left out), then live ones, without gaps or repeats.
A comment line keeps the connection alive every 15 s. A client that falls too far behind is cut
off and should reconnect. `EventSource` cannot send headers: pass the key as `?api_key=`.

The stream also carries the buildings' live state (the states of `GET /twin/states`), as a second
event type **without an `id:` line** (it never moves `Last-Event-ID`, and is never replayed):

```
event: building_state
data: {"version": 1, "building_id": 12, "area_id": 5, "state": "alarm", "previous": "ok",
       "counts": {"ok": 3, "warning": 0, "alarm": 1, "offline": 0}, "at": "2024-05-01T08:00:00.123456+00:00"}
```

sent when a building's state or its counts change: soon after an alert on one of its sensors is
raised, cleared, resolved or closed, and within about 10 s when its sensors go offline or come
back (every building is read again that often). `previous` is the state before (null when the
building had no sensors); `state` is null when it has none any more. `area_id` filters these
events too (by the building's area), `severity` does not. On (re)connecting, read
`GET /twin/states` for the current states."""


@router.get("/alerts/stream", summary="Live alert events and building states (Server-Sent Events), resumable",
            description=_DESCRIPTION, response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "the event stream"}},
            dependencies=[Depends(require(*READERS))])
async def alert_stream(
    request: Request,
    area_id: Annotated[int | None, Query(description="only alerts in this area or any area inside it")] = None,
    severity: Annotated[list[str] | None, Query(
        description="only these severities (repeat or comma-separate): info, warning, major, critical")] = None,
    last_event_id: Annotated[int | None, Query(ge=0, description="resume after this event id")] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", include_in_schema=False)] = None,
    pool=Depends(get_pool),
) -> StreamingResponse:
    severities = sorted({s.strip() for item in severity or [] for s in item.split(",") if s.strip()}) or None
    unknown = [s for s in severities or [] if s not in SEVERITIES]
    if unknown:
        raise BadRequest(f"unknown severity {', '.join(unknown)}; use {', '.join(SEVERITIES)}",
                         code="invalid_severity")
    if last_event_id_header is not None and last_event_id_header.strip():
        try:
            last_event_id = int(last_event_id_header.strip())
        except ValueError:
            raise BadRequest("Last-Event-ID must be an event id (an integer)", code="invalid_last_event_id") from None
    frames = await service.open_stream(hub=request.app.state.alert_hub, pool=pool,
                                       settings=request.app.state.settings, area_id=area_id,
                                       severities=severities, last_event_id=last_event_id)
    return StreamingResponse(frames, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
