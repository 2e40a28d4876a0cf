"""``GET /twin/states``: every building's live state, for the console's map and its start after (re)connecting.

Readers only (admin, operator, analyst), like the rest of /twin."""

# No `from __future__ import annotations`: FastAPI reads the annotations.
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from cimtwin.api.auth import READERS, require
from cimtwin.api.deps import get_pool
from cimtwin.api.services import live_state as service

router = APIRouter(tags=["twin"], dependencies=[Depends(require(*READERS))])


# The response's shape, for the OpenAPI document (the body is written without validation).
class StateCounts(BaseModel):
    ok: int
    warning: int
    alarm: int
    offline: int


class BuildingState(BaseModel):
    id: int
    state: str
    area_id: int | None
    counts: StateCounts


class BuildingStates(BaseModel):
    as_of: str
    buildings: list[BuildingState]


_DESCRIPTION = """\
Each building that has sensors, by id, with its `state` and the `counts` of its sensors by state.

A sensor's state: `alarm` (an unfinished — open, acknowledged or dispatched — major/critical alert
on it), `warning` (an unfinished info/warning alert), `offline` (no reading for longer than
CIMTWIN_SENSOR_OFFLINE_AFTER_S, or never), else `ok`: the tiles' and OGC's sensor `status`, with
`no_data` counted as `offline`. A building's sensors are those of the twin tree
(`GET /twin/buildings/{id}`): on its components, in its rooms, or placed on the building itself.
Its state is the worst of alarm > warning > ok among them; `offline` only when all are offline.
Buildings without sensors are left out.

`as_of` is when the states were read. Changes come on `GET /alerts/stream` as `building_state`
events: to miss none, connect to the stream first, then read this, and apply the events whose
`at` is after `as_of` (both are the database's clock)."""


@router.get("/twin/states", response_class=Response, summary="Every building's live state (for the map)",
            description=_DESCRIPTION,
            responses={200: {"model": BuildingStates, "description": "the states"},
                       404: {"description": "no such area (`area_not_found`)"}})
async def building_states(
    request: Request,
    area_id: Annotated[int | None, Query(ge=1, description="only buildings in this area or any area inside it")] = None,
    pool=Depends(get_pool),
):
    text = await service.building_states(pool=pool, area_id=area_id,
                                         offline_after_s=request.app.state.settings.sensor_offline_after_s)
    return Response(content=text, media_type="application/json")
