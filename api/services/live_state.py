"""The live state of buildings (store/live_state.py) for ``GET /twin/states``.

The same states reach SSE clients as ``building_state`` events when they change (the AlertHub in
api/services/alert_stream.py); this read is where a client starts from, and where it starts again
after reconnecting.
"""

from __future__ import annotations

import json
from datetime import timezone

from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import NotFound
from cimtwin.store import live_state as store
from cimtwin.store import notifications


async def building_states(*, pool: AsyncConnectionPool, offline_after_s: float, area_id: int | None) -> str:
    """``{"as_of": ..., "buildings": [{"id", "state", "area_id", "counts"}, ...]}`` as JSON text, by id;
    with ``area_id``, only the buildings in that area or any area inside it."""
    area_ids = None
    if area_id is not None:
        area_ids = await notifications.area_subtree(pool, area_id)
        if not area_ids:
            raise NotFound(f"area {area_id} does not exist", code="area_not_found")
    read = await store.building_states(pool, offline_after_s=offline_after_s, area_ids=area_ids)
    return json.dumps({
        "as_of": read.as_of.astimezone(timezone.utc).isoformat(),
        "buildings": [{"id": b.id, "state": b.state, "area_id": b.area_id, "counts": b.counts}
                      for b in read.states.values()],
    }, separators=(",", ":"))
