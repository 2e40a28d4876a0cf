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

import asyncio
import copy
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable
from operator import itemgetter

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


# ----------------------------------------------------------------------------- the tree
#
# A building's tree is its structure (cached per process, see TreeCache) with the live part filled
# in on every request. The structure is kept as the JSON document cut at its live places ("slots"):
# static[0] slot[0] static[1] … slot[n-1] static[n]. A sensor's slot is its value, time and state,
# as store.tree_live writes them; every other node's its "state" and "counts". Sensors are numbered
# in document order, so the sensors beneath any node are one range of them, and its counts are the
# counts of each state's letter in that range of the live part's state letters.

_COUNTS_TEXT = '"state":%s,"counts":{"ok":%d,"warning":%d,"alarm":%d,"offline":%d}'
_LETTERS = [next(c for c, name in store.STATE_LETTERS.items() if name == state)
            for state in ("ok", "warning", "alarm", "offline")]
_counts_texts: dict[str, str] = {}  # a short run of state letters → its text (pure, so shared)


def _counts_text(letters: str) -> str:
    """A node's "state" and "counts" from its sensors' state letters (store.STATE_LETTERS)."""
    text = _counts_texts.get(letters)
    if text is None:
        ok, warning, alarm, offline = (letters.count(c) for c in _LETTERS)
        state = rolled_up({"ok": ok, "warning": warning, "alarm": alarm, "offline": offline})
        text = _COUNTS_TEXT % ("null" if state is None else f'"{state}"', ok, warning, alarm, offline)
        if len(letters) <= 32:
            if len(_counts_texts) >= 100_000:
                _counts_texts.clear()
            _counts_texts[letters] = text
    return text


class BuildingTree:
    """One building's structure (store.tree_structure's rows), ready to take live values."""

    def __init__(self, generation: int, rows: list[tuple]):
        self.generation = generation
        self.rows = rows  # to tell an unchanged structure at the next generation (changed elsewhere)
        # rows: (kind, id, floor_id, room_id, component_id, head)
        floors, rooms, components, sensors = [], defaultdict(list), defaultdict(list), defaultdict(list)
        for r in rows[1:]:
            kind = r[0]
            if kind == store.NODE_SENSOR:  # under its component, else its room, else the building
                sensors[("component", r[4]) if r[4] is not None else ("room", r[3])].append(r)
            elif kind == store.NODE_COMPONENT:  # under its room, else its floor, else the building
                components[("room", r[3]) if r[3] is not None else ("floor", r[2])].append(r)
            elif kind == store.NODE_ROOM:
                rooms[r[2]].append(r)
            else:
                floors.append(r)
        n_sensors = sum(map(len, sensors.values()))

        # Slot numbers index the list a request builds: a state letter and the slot text of each
        # sensor (so sensor i's slot is 2i + 1), then the nodes' counts texts.
        static: list[str] = []
        slots: list[int] = []
        nodes: list[list[int]] = []  # per node: [first sensor, end]
        sensor_ids: list[int] = []
        pending: list[str] = []

        def add_sensors(key: tuple, comma: bool) -> None:
            for r in sensors.get(key, ()):
                if comma:
                    pending.append(",")
                comma = True
                pending.append(r[5])  # ends with "value":
                static.append("".join(pending))
                slots.append(2 * len(sensor_ids) + 1)
                sensor_ids.append(r[1])
                pending[:] = ["}"]

        def open_node(r: tuple, comma: bool) -> list[int]:
            if comma:
                pending.append(",")
            pending.append(r[5])
            static.append("".join(pending))
            pending.clear()
            slots.append(2 * n_sensors + len(nodes))
            node = [len(sensor_ids), 0]
            nodes.append(node)
            return node

        def add_components(key: tuple) -> None:
            for i, r in enumerate(components.get(key, ())):
                node = open_node(r, i > 0)
                pending.append(',"sensors":[')
                add_sensors(("component", r[1]), False)
                pending.append("]}")
                node[1] = len(sensor_ids)

        node = open_node(rows[0], False)
        pending.append(',"floors":[')
        for i, f in enumerate(floors):
            floor = open_node(f, i > 0)
            pending.append(',"rooms":[')
            for j, r in enumerate(rooms.get(f[1], ())):
                room = open_node(r, j > 0)
                pending.append(',"components":[')
                add_components(("room", r[1]))
                pending.append('],"sensors":[')
                add_sensors(("room", r[1]), False)
                pending.append("]}")
                room[1] = len(sensor_ids)
            pending.append('],"components":[')
            add_components(("floor", f[1]))
            pending.append("]}")
            floor[1] = len(sensor_ids)
        pending.append('],"components":[')
        add_components(("floor", None))
        pending.append('],"sensors":[')
        add_sensors(("room", None), False)
        pending.append("]}")
        node[1] = len(sensor_ids)
        static.append("".join(pending))
        if len(sensor_ids) != n_sensors:
            raise RuntimeError("a sensor of the structure hangs under no node")

        self.static = static
        self.n_sensors = n_sensors
        self.nodes = [tuple(n) for n in nodes]
        self.sensor_ids = "{" + ",".join(map(str, sensor_ids)) + "}"  # an int8[] literal for the live query
        # slots → their texts at C speed (an itemgetter of one index returns the item, not a tuple)
        self._pick = itemgetter(*slots) if len(slots) > 1 else (lambda texts: (texts[slots[0]],))
        self.size = 2 * sum(map(len, static))  # the rows' heads about as much again

    def at(self, generation: int) -> BuildingTree:
        """This same structure, seen unchanged at a later generation."""
        tree = copy.copy(self)
        tree.generation = generation
        return tree

    def render(self, live: str) -> str:
        """The document with store.tree_live's live part filled in."""
        texts = live.split("|") if self.n_sensors else []
        if len(texts) != 2 * self.n_sensors:
            raise ValueError("the live part does not match the structure")
        letters = "".join(texts[0::2])
        texts += [_counts_text(letters[start:end]) for start, end in self.nodes]
        parts = [""] * (2 * len(self.static) - 1)
        parts[0::2] = self.static
        parts[1::2] = self._pick(texts)
        return "".join(parts)


class TreeCache:
    """Building structures of this API process; the least recently used go first when their text
    passes ``max_chars``.

    Entries are checked against the structure generation on every request (store.tree_live), so a
    change committed before a request is always in its tree. Concurrent requests that miss on the
    same building share one load."""

    def __init__(self, max_chars: int = 64_000_000):
        self.max_chars = max_chars
        self._trees: OrderedDict[int, BuildingTree] = OrderedDict()
        self._chars = 0
        self._loading: dict[int, asyncio.Future] = {}

    def get(self, building_id: int) -> BuildingTree | None:
        tree = self._trees.get(building_id)
        if tree is not None:
            self._trees.move_to_end(building_id)
        return tree

    def clear(self) -> None:
        self._trees.clear()
        self._chars = 0
        self._loading.clear()  # loads under way go on, but nobody joins them

    def _put(self, building_id: int, tree: BuildingTree) -> None:
        old = self._trees.pop(building_id, None)
        if old is not None:
            self._chars -= old.size
            if old.generation > tree.generation:
                tree = old
        self._trees[building_id] = tree
        self._chars += tree.size
        while self._chars > self.max_chars and len(self._trees) > 1:
            self._chars -= self._trees.popitem(last=False)[1].size

    def _loaded(self, building_id: int, task: asyncio.Future) -> None:
        if self._loading.get(building_id) is task:
            del self._loading[building_id]
        if not task.cancelled() and task.exception() is None:
            self._put(building_id, task.result())

    async def load(self, building_id: int, *, at_least: int | None,
                   loader: Callable[[], Awaitable[BuildingTree]]) -> BuildingTree:
        """The building's structure of generation ``at_least`` or newer (any, when None), loaded anew
        unless another request has just done so."""
        while True:
            tree = self._trees.get(building_id)
            if tree is not None and at_least is not None and tree.generation >= at_least:
                return tree
            task = self._loading.get(building_id)
            if task is None:
                task = asyncio.ensure_future(loader())
                self._loading[building_id] = task
                task.add_done_callback(lambda t: self._loaded(building_id, t))
            tree = await asyncio.shield(task)
            if at_least is None or tree.generation >= at_least:
                return tree
            # that load began before the change this request saw: load again


async def building_tree(*, pool: AsyncConnectionPool, cache: TreeCache, building_id: int,
                        offline_after_s: float) -> str:
    """The tree as JSON text: the cached structure (loaded anew when its generation moved) with
    every sensor's live value, time and state, and every node's roll-up, as of this request."""
    async def loader() -> BuildingTree:
        generation, rows = await store.tree_structure(pool, building_id=building_id)
        known = cache.get(building_id)
        if known is not None and known.rows == rows:  # the change was elsewhere: no need to build it again
            return known.at(generation) if generation > known.generation else known
        return BuildingTree(generation, rows)

    tree = cache.get(building_id)
    if tree is None:
        tree = await cache.load(building_id, at_least=None, loader=loader)
    generation, live = await store.tree_live(pool, ids=tree.sensor_ids, offline_after_s=offline_after_s)
    if generation != tree.generation:
        # the structure changed since it was read (or a shared load began before it did): read it at
        # this generation or later, which holds every change committed before this request began
        if generation < tree.generation:  # a database made anew: nothing cached holds
            cache.clear()
        ids = tree.sensor_ids
        tree = await cache.load(building_id, at_least=generation, loader=loader)
        if tree.sensor_ids != ids:  # else the live part just read fits it
            _, live = await store.tree_live(pool, ids=tree.sensor_ids, offline_after_s=offline_after_s)
    return tree.render(live)


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
