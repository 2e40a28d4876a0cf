"""The live alert stream (SSE): one LISTEN connection per API process, fanned out to clients.

``AlertHub`` LISTENs on ``cimtwin_alert_events`` (the alert_events trigger notifies each new
event's id and document at commit). It passes events on **in id order**, so a client's
``Last-Event-ID`` is a complete cursor: every event up to it has been sent or never existed.
A notification of the event right after its *horizon* (the highest id it has passed on) that
carries its document is passed on as it is. Any other (an event after a gap, a document too long
for a notification) only wakes it: it reads, on the same connection (psycopg keeps notifications
that arrive meanwhile), the committed events above its horizon.

Ids are taken when a transaction inserts an event, and transactions commit in any order: event
11 can be visible while 10 is not yet. The hub then holds 11 until 10 appears, or until every
transaction that was running when the gap was seen has ended (then 10 was rolled back and will
never come). A gap still open after ``GAP_WAIT_S`` (a long writer elsewhere holds the snapshot
back) is passed over; if its event commits after all, it is sent late, out of order, to the
clients connected then.

Each client has a bounded queue. The hub never waits for a client: one whose queue is full is
cut off (its stream ends after what it has queued) and reconnects with ``Last-Event-ID``.

The hub also keeps every building's live state (store/live_state.py) and sends each change as an
``event: building_state`` frame **without an id** (it never moves a client's cursor, and is not
replayed: a client that connects reads the current states from ``GET /twin/states``). The states
are read once at start (the baseline, not sent), again for the buildings of the alerts' sensors
and of the alerts themselves as soon as their events are passed on, and for every building each
``STATE_SWEEP_S`` (sensors going offline or coming back: changes no alert event announces; half
the offline threshold when that is shorter). One task does all these reads, one after another, so
a newer read is never overtaken by an older one. A change is a new state or new counts; the area
filter applies to it, the severity filter does not. Frames without an id go into the same client
queues as alert events, so a client cut off for falling behind reconnects and reads the states again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timezone

import psycopg
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import NotFound, Unavailable
from cimtwin.settings import Settings
from cimtwin.store import live_state
from cimtwin.store import notifications as store

log = logging.getLogger("cimtwin.api.alert_stream")

#: How long a gap in the event ids may hold the stream back at most.
GAP_WAIT_S = 5.0
_PAGE = 1000
_SKIPPED_MAX = 10_000
#: How often every building's live state is read again (to catch sensors going offline); more
#: often when the offline threshold is shorter (half of it, at most once a second).
STATE_SWEEP_S = 10.0
_NO_COUNTS = {"ok": 0, "warning": 0, "alarm": 0, "offline": 0}


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue
    area_ids: frozenset[int] | None
    severities: frozenset[str] | None
    closed: bool = False

    def wants(self, event: store.FeedEvent) -> bool:
        return self.wants_area(event.area_id) and (self.severities is None or event.severity in self.severities)

    def wants_area(self, area_id: int | None) -> bool:
        return self.area_ids is None or area_id in self.area_ids


@dataclass
class _Gap:
    after: int          # the horizon when it was seen: ids after it are missing
    xmax: int           # the snapshot's xmax then: it is settled once every xid below has ended
    since: float


@dataclass
class AlertHub:
    settings: Settings
    pool: AsyncConnectionPool
    horizon: int = 0
    connected: bool = False
    subscribers: set[Subscription] = field(default_factory=set)
    _gap: _Gap | None = None
    _skipped: set[int] = field(default_factory=set)
    _task: asyncio.Task | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    # buildings' live state: the last read (None before the first), and what alert events touched since
    building_states: dict[int, live_state.BuildingState] | None = None
    _touched_sensors: set[int] = field(default_factory=set)
    _touched_buildings: set[int] = field(default_factory=set)
    _touched: asyncio.Event = field(default_factory=asyncio.Event)
    _states_task: asyncio.Task | None = None

    # --- lifecycle (the API's lifespan) ---

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-hub")
        self._states_task = asyncio.create_task(self._track_states(), name="alert-hub-states")

    async def stop(self) -> None:
        for task in (self._task, self._states_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for sub in list(self.subscribers):
            self._close(sub)

    async def ready(self, timeout: float = 5.0) -> None:
        """Waits until the hub knows where the stream stands (its horizon)."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise Unavailable("the alert stream is not connected to the database yet; retry",
                              code="stream_unavailable") from None

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with await store.connect(self.settings.database_url,
                                               application_name="cimtwin-api-stream") as conn:
                    await store.listen(conn)
                    if not self._ready.is_set():
                        self.horizon = await store.latest_event_id(conn)
                        self._ready.set()
                    self.connected, failures = True, 0
                    await self._catch_up(conn, [])  # what was committed while not listening
                    while True:
                        noted: tuple[int, store.FeedEvent | None] | None = None
                        timeout = 0.05 if self._gap is not None else 5.0
                        async for note in conn.notifies(timeout=timeout, stop_after=1):
                            noted = store.noted_event(note.payload)
                        if noted and noted[1] is not None and self._gap is None and noted[0] == self.horizon + 1:
                            self._emit(noted[1])  # the next event, its document attached: nothing to read
                        else:
                            await self._catch_up(conn, [noted[0]] if noted else [])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: reconnect and catch up
                self.connected = False
                failures += 1
                delay = min(10.0, 0.2 * 2 ** min(failures, 6))
                log.warning("alert stream lost its database connection (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    # --- reading and emitting ---

    async def _catch_up(self, conn: psycopg.AsyncConnection, notified: list[int]) -> None:
        while True:
            page = await store.feed_after(conn, after_id=self.horizon, limit=_PAGE)
            progressed = self._advance(page)
            if not (progressed and len(page.events) == _PAGE):
                break
        late = [i for i in notified if i in self._skipped]
        if late:
            self._skipped.difference_update(late)
            for event in await store.feed_ids(conn, late):
                self._emit(event, advance=False)

    def _advance(self, page: store.FeedPage) -> bool:
        """Emits the page's events that follow the horizon without a gap; True when it moved."""
        start = self.horizon
        for event in page.events:
            if event.id > self.horizon + 1:  # ids are missing before this one
                gap = self._gap
                if gap is None or gap.after != self.horizon:
                    self._gap = _Gap(self.horizon, page.snapshot_xmax, time.monotonic())
                    break
                if page.snapshot_xmin < gap.xmax:  # a transaction that may hold them is still running
                    if time.monotonic() - gap.since < GAP_WAIT_S:
                        break
                    missing = range(self.horizon + 1, event.id)
                    log.warning("alert events %d-%d still missing after %.0f s; passing over them",
                                missing.start, missing.stop - 1, GAP_WAIT_S)
                    if len(self._skipped) + len(missing) <= _SKIPPED_MAX:
                        self._skipped.update(missing)
                # else: every transaction that could hold them has ended, so they were rolled back
                self._gap = None
            self._emit(event)
        if self._gap is not None and self._gap.after != self.horizon:
            self._gap = None  # the missing events came
        return self.horizon != start

    def _emit(self, event: store.FeedEvent, *, advance: bool = True) -> None:
        if advance:
            self.horizon = event.id
        if event.sensor_id is not None or event.building_id is not None:
            if event.sensor_id is not None:
                self._touched_sensors.add(event.sensor_id)
            if event.building_id is not None:
                self._touched_buildings.add(event.building_id)
            self._touched.set()
        item = (event.id, event.doc)
        for sub in list(self.subscribers):
            if sub.wants(event):
                self._put(sub, item)

    def _put(self, sub: Subscription, item: tuple[int | None, str]) -> None:
        try:
            sub.queue.put_nowait(item)
        except asyncio.QueueFull:
            log.info("an alert stream client fell %d events behind; cutting it off", sub.queue.maxsize)
            self._close(sub)

    # --- buildings' live state ---

    async def _track_states(self) -> None:
        failures = 0
        next_sweep = 0.0
        offline_after_s = self.settings.sensor_offline_after_s
        sweep_s = max(1.0, min(STATE_SWEEP_S, offline_after_s / 2))
        while True:
            sensors: set[int] = set()
            buildings: set[int] = set()
            try:
                if self.building_states is None:  # the baseline
                    self.building_states = (await live_state.building_states(
                        self.pool, offline_after_s=offline_after_s)).states
                    next_sweep = time.monotonic() + sweep_s
                wait = next_sweep - time.monotonic()
                if wait > 0 and not self._touched.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._touched.wait(), wait)
                self._touched.clear()
                sensors, self._touched_sensors = self._touched_sensors, set()
                buildings, self._touched_buildings = self._touched_buildings, set()
                if time.monotonic() >= next_sweep:  # every building (covers the touched ones too)
                    read = await live_state.building_states(self.pool, offline_after_s=offline_after_s)
                    next_sweep = time.monotonic() + sweep_s
                elif sensors or buildings:
                    read = await live_state.building_states(
                        self.pool, offline_after_s=offline_after_s, sensor_ids=sorted(sensors),
                        building_ids=sorted(buildings))
                else:
                    continue
                sensors, buildings = set(), set()
                self._apply_states(read)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: read again later
                if sensors or buildings:
                    self._touched_sensors |= sensors
                    self._touched_buildings |= buildings
                    self._touched.set()
                failures += 1
                delay = min(10.0, 0.2 * 2 ** min(failures, 6))
                log.warning("could not read the buildings' live state (%s); again in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    def _apply_states(self, read: live_state.StatesRead) -> None:
        """Sends a frame for every building in the read's scope whose state or counts changed."""
        known = self.building_states
        scope = known.keys() | read.states.keys() if read.scope is None else read.scope
        at = read.as_of.astimezone(timezone.utc).isoformat()
        for building_id in sorted(scope):
            old, new = known.get(building_id), read.states.get(building_id)
            if old == new:
                continue
            if new is None:
                del known[building_id]  # it has no sensors any more
            else:
                known[building_id] = new
            self._emit_state(old, new, at)

    def _emit_state(self, old: live_state.BuildingState | None, new: live_state.BuildingState | None,
                    at: str) -> None:
        now = new or old
        doc = json.dumps({"version": 1, "building_id": now.id, "area_id": now.area_id,
                          "state": new.state if new else None, "previous": old.state if old else None,
                          "counts": new.counts if new else _NO_COUNTS, "at": at}, separators=(",", ":"))
        item = (None, f"event: building_state\ndata: {doc}\n\n")
        areas = {b.area_id for b in (old, new) if b is not None}
        for sub in list(self.subscribers):
            if any(sub.wants_area(area_id) for area_id in areas):
                self._put(sub, item)

    # --- clients ---

    def subscribe(self, *, area_ids: frozenset[int] | None, severities: frozenset[str] | None
                  ) -> tuple[Subscription, int]:
        """A new subscription and the horizon at that moment: it gets every event after it."""
        sub = Subscription(asyncio.Queue(self.settings.stream_queue_size), area_ids, severities)
        self.subscribers.add(sub)
        return sub, self.horizon

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    def _close(self, sub: Subscription) -> None:
        sub.closed = True
        self.subscribers.discard(sub)


def _frame(event_id: int, doc: str) -> str:
    return f"id: {event_id}\nevent: alert\ndata: {doc}\n\n"


async def open_stream(*, hub: AlertHub, pool: AsyncConnectionPool, settings: Settings, area_id: int | None,
                      severities: list[str] | None, last_event_id: int | None) -> AsyncIterator[str]:
    """Checks the request and subscribes at once (so nothing is missed while the response starts);
    returns the generator of SSE frames: the replay after ``last_event_id``, then live events."""
    area_ids = None
    if area_id is not None:
        area_ids = await store.area_subtree(pool, area_id)
        if not area_ids:
            raise NotFound(f"area {area_id} does not exist", code="area_not_found")
    await hub.ready()
    sub, horizon = hub.subscribe(area_ids=frozenset(area_ids) if area_ids is not None else None,
                                 severities=frozenset(severities) if severities else None)
    return _frames(hub=hub, pool=pool, settings=settings, sub=sub, horizon=horizon, area_ids=area_ids,
                   severities=severities, last_event_id=last_event_id)


async def _frames(*, hub: AlertHub, pool: AsyncConnectionPool, settings: Settings, sub: Subscription, horizon: int,
                  area_ids: list[int] | None, severities: list[str] | None,
                  last_event_id: int | None) -> AsyncIterator[str]:
    try:
        yield f"retry: 3000\n: cimtwin alert stream from event {horizon}\n\n"
        replayed: set[int] = set()
        if last_event_id is not None and last_event_id < horizon:
            events, truncated = await store.replay(pool, after_id=last_event_id, upto_id=horizon, area_ids=area_ids,
                                                   severities=severities, limit=settings.stream_replay_max)
            if truncated:
                first = events[0].id if events else horizon
                yield (f'event: truncated\ndata: {{"after": {last_event_id}, "resumed_at": {first}, '
                       f'"replay_max": {settings.stream_replay_max}}}\n\n')
            for event in events:
                replayed.add(event.id)
                yield _frame(event.id, event.doc)
        while True:
            if sub.closed and sub.queue.empty():
                return
            try:
                event_id, doc = await asyncio.wait_for(sub.queue.get(), settings.stream_keepalive_s)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if event_id is None:  # a building_state frame, as the hub wrote it
                yield doc
                continue
            if event_id in replayed:  # sent late by the hub, already in the replay
                continue
            yield _frame(event_id, doc)
    finally:
        hub.unsubscribe(sub)
