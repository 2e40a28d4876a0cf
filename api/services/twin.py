"""The twin of one building: its tree (floors → rooms → components → sensors) with live state rolled up,
and a floor plan as GeoJSON.

Roll-up: every node carries ``counts`` of the sensors beneath it by state (ok, warning, alarm,
offline) and a ``state``: the worst of alarm > warning > ok among those sensors, leaving offline
ones aside; ``offline`` when every sensor beneath is offline; null when there is no sensor beneath.
Offline sensors therefore never hide a warning or an alarm, and never count as ok.

3D: the building has ``height`` (its stored height, else the top of its highest floor) and
``min_height`` (the lowest floor's elevation when that is below ground, else the stored base, 0 by
default); each floor has ``elevation``, ``min_height`` (= elevation), ``height`` (the storey's own
height) and ``top`` (elevation + height, when both are known). Extrude a floor from ``min_height``
to ``top``.
"""

from __future__ import annotations

from cimtwin.store import twin as store
from psycopg_pool import AsyncConnectionPool

from .spatial import collection_text, crs_param, dumps, geometry_texts, output_crs


def _counts() -> dict[str, int]:
    return {"ok": 0, "warning": 0, "alarm": 0, "offline": 0}


def rolled_up(counts: dict[str, int]) -> str | None:
    """The state of a node whose sensors are counted in ``counts``."""
    if counts["alarm"]:
        return "alarm"
    if counts["warning"]:
        return "warning"
    if counts["ok"]:
        return "ok"
    if counts["offline"]:
        return "offline"
    return None


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for k, v in counts.items():
        into[k] += v


def _top(elevation: float | None, height: float | None) -> float | None:
    return elevation + height if elevation is not None and height is not None else None


def _floor_3d(f: dict) -> dict:
    return {"elevation": f["elevation"], "height": f["height"], "min_height": f["elevation"],
            "top": _top(f["elevation"], f["height"])}


async def building_tree(*, pool: AsyncConnectionPool, building_id: int, offline_after_s: float) -> str:
    """The tree as JSON text. PostgreSQL builds it, roll-ups included (see store.twin): a large building
    has tens of thousands of nodes, and building them in Python cost more than the queries."""
    return await store.building_tree(pool, building_id=building_id, offline_after_s=offline_after_s)


_FEATURE = '{"type":"Feature","id":"%s","geometry":%s,"properties":%s}'


async def floor_plan(*, pool: AsyncConnectionPool, building_id: int, level: int, crs: str | None,
                     offline_after_s: float) -> tuple[str, dict]:
    """The floor's rooms, components and sensors as one FeatureCollection in ``crs``; (text, headers)."""
    out = await output_crs(pool, crs_param(crs))
    rows = await store.floor_plan(pool, building_id=building_id, level=level, offline_after_s=offline_after_s,
                                  srid=out.srid, digits=out.digits)
    f = rows["floor"]
    counts = {("room", r["id"]): _counts() for r in rows["rooms"]}
    counts.update({("component", c["id"]): _counts() for c in rows["components"]})
    for s in rows["sensors"]:
        if s["component_id"] is not None and ("component", s["component_id"]) in counts:
            counts[("component", s["component_id"])][s["state"]] += 1
        elif ("room", s["room_id"]) in counts:
            counts[("room", s["room_id"])][s["state"]] += 1
    for c in rows["components"]:
        if ("room", c["room_id"]) in counts:
            _add(counts[("room", c["room_id"])], counts[("component", c["id"])])
    floor_counts = _counts()
    for r in rows["rooms"]:
        _add(floor_counts, counts[("room", r["id"])])
    for c in rows["components"]:
        if c["room_id"] is None:
            _add(floor_counts, counts[("component", c["id"])])

    common = {"building_id": building_id, "floor_id": f["id"], "level": f["level"]}
    props: list[tuple[str, dict]] = []
    for r in rows["rooms"]:
        c = counts[("room", r["id"])]
        props.append((f"room.{r['id']}", {"kind": "room", "id": r["id"], **common, "room_id": r["id"],
                                          "ext_id": r["ext_id"], "name": r["name"], "use": r["use"],
                                          "occupants": r["occupants"], "state": rolled_up(c), "counts": c}))
    for cp in rows["components"]:
        c = counts[("component", cp["id"])]
        props.append((f"component.{cp['id']}", {
            "kind": "component", "id": cp["id"], **common, "room_id": cp["room_id"], "component_id": cp["id"],
            "component_kind": cp["kind"], "ext_id": cp["ext_id"], "name": cp["name"], "state": rolled_up(c),
            "counts": c}))
    for s in rows["sensors"]:
        props.append((f"sensor.{s['id']}", {
            "kind": "sensor", "id": s["id"], **common, "room_id": s["room_id"], "component_id": s["component_id"],
            "sensor_id": s["id"], "vendor": s["vendor"], "device": s["device"], "channel": s["channel"],
            "name": f"{s['device']}/{s['channel']}", "quantity": s["quantity"], "unit": s["unit"],
            "value": s["value"], "time": s["time"], "state": s["state"], "placed_by": s["placed_by"]}))
    geoms = geometry_texts([r["geometry"] for key in ("rooms", "components", "sensors") for r in rows[key]], out)
    features = [_FEATURE % (fid, geom, dumps(p)) for (fid, p), geom in zip(props, geoms)]
    floor = {"id": f["id"], "building_id": building_id, "level": f["level"], "name": f["name"], **_floor_3d(f),
             "state": rolled_up(floor_counts), "counts": floor_counts}
    text = collection_text(features, matched=len(features), out=out, links=[], extra={"floor": floor})
    return text, out.header
