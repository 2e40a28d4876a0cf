"""The live alert stream (SSE): one LISTEN connection per API process, fanned out to clients.

``AlertHub`` LISTENs on ``cimtwin_alert_events`` (the alert_events trigger notifies each new
event's id at commit). A notification only wakes it: it reads the committed events above its
*horizon*, the highest id it has passed on, and emits them **in id order**, so a client's
``Last-Event-ID`` is a complete cursor: every event up to it has been sent or never existed.

Ids are taken when a transaction inserts an event, and transactions commit in any order: event
11 can be visible while 10 is not yet. The hub then holds 11 until 10 appears, or until every
transaction that was running when the gap was seen has ended (then 10 was rolled back and will
never come). A gap still open after ``GAP_WAIT_S`` (a long writer elsewhere holds the snapshot
back) is passed over; if its event commits after all, it is sent late, out of order, to the
clients connected then.

Each client has a bounded queue. The hub never waits for a client: one whose queue is full is
cut off (its stream ends after what it has queued) and reconnects with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import NotFound, Unavailable
from cimtwin.settings import Settings
from cimtwin.store import notifications as store

log = logging.getLogger("cimtwin.api.alert_stream")

#: How long a gap in the event ids may hold the stream back at most.
GAP_WAIT_S = 5.0
_PAGE = 1000
_SKIPPED_MAX = 10_000


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue
    area_ids: frozenset[int] | None
    severities: frozenset[str] | None
    closed: bool = False

    def wants(self, event: store.FeedEvent) -> bool:
        if self.area_ids is not None and event.area_id not in self.area_ids:
            return False
        return self.severities is None or event.severity in self.severities


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

    # --- lifecycle (the API's lifespan) ---

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
                        self.horizon = await store.latest_event_id(self.pool)
                        self._ready.set()
                    self.connected, failures = True, 0
                    await self._catch_up([])  # what was committed while not listening
                    while True:
                        ids: list[int] = []
                        timeout = 0.05 if self._gap is not None else 5.0
                        async for note in conn.notifies(timeout=timeout, stop_after=1):
                            with contextlib.suppress(ValueError):
                                ids.append(int(note.payload))
                        await self._catch_up(ids)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: reconnect and catch up
                self.connected = False
                failures += 1
                delay = min(10.0, 0.2 * 2 ** min(failures, 6))
                log.warning("alert stream lost its database connection (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    # --- reading and emitting ---

    async def _catch_up(self, notified: list[int]) -> None:
        while True:
            page = await store.feed_after(self.pool, after_id=self.horizon, limit=_PAGE)
            progressed = self._advance(page)
            if not (progressed and len(page.events) == _PAGE):
                break
        late = [i for i in notified if i in self._skipped]
        if late:
            self._skipped.difference_update(late)
            for event in await store.feed_ids(self.pool, late):
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
        item = (event.id, event.doc)
        for sub in list(self.subscribers):
            if sub.wants(event):
                try:
                    sub.queue.put_nowait(item)
                except asyncio.QueueFull:
                    log.info("an alert stream client fell %d events behind; cutting it off", sub.queue.maxsize)
                    self._close(sub)

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
            if event_id in replayed:  # sent late by the hub, already in the replay
                continue
            yield _frame(event_id, doc)
    finally:
        hub.unsubscribe(sub)
