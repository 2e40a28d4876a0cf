"""The rule engine: evaluates each batch's new readings inside the batch's transaction.

* Only readings the batch really inserted are evaluated, so a QoS 1 redelivery (a
  duplicate) never fires twice.
* The per-(rule, sensor) state is read (locked) and written in the same transaction as the
  readings, so a restart resumes exactly where the last commit left off: hold timers and
  hysteresis are not reset.
* Readings are evaluated in time order, within a batch and across batches (below).

Rule kinds (conditions in cimtwin.schemas.alerts): threshold (with hysteresis and hold),
rate of change over a window, offline (no data for N s; raised by the timer, cleared here
when fresh data returns), composite (all/any conditions over one device's channels, with hold).

Late readings
-------------
A reading is late when it is not newer than the newest reading already evaluated for its (rule,
sensor) (for a composite rule: of any of the channels it reads; channels read at the same time
are evaluated in quantity order). The newest time is this process's memory per sensor, read
from the stored readings on a sensor's first batch after the worker starts (so a restart hides
no late reading), or the state row's ``last_time``.

A (rule, sensor) with late readings in a batch is evaluated again, in time order, from a
checkpoint before its first late reading over the stored readings (the batch's are stored
already), twice in step: *new* with this batch's readings and *old* without them (what was
evaluated before). It stops as soon as both are in the same state after the last late reading
(or at the newest evaluated reading); the state becomes new's. Where new raises, clears or
repeats differently from old, the alerts are put right:

- an alert old raised and new does not: **withdrawn** (closed, ``withdrawn_at`` set, a
  'withdrawn' event by the engine with a note naming the late reading). An alert a person has
  acted on (any event by someone other than the engine or escalation) is kept as it is and
  gets a 'note' event saying so;
- an alert new raises and old did not: raised with its true times (an auto-clearing rule's
  episode that has ended too is stored resolved at once); its events' detail says ``late``;
- the same alert (same raise time) in both: its count, last value and clear time are put
  right; a clear that moved gets a note, and a clear undone reopens an alert the engine had
  resolved.

Two cases of threshold rules (most rules) are settled without re-evaluating: late readings
that cannot leave a clear state (none past the value) change nothing unless an alert of that
(rule, sensor) was under way at the first of them or raised after it (one query per batch for
all such pairs); late readings that keep an episode active since before them are, in time
order, repeats of its alert: they only add to its count.

A checkpoint is a point where the rule's state is known without its history:

- for an auto-clearing rule whose latest alert before the late reading was still under way at
  that time: active since that alert's raise, just before the late reading;
- else the latest reading after which the state is clear whatever it was: threshold, a value
  past neither the value nor the clear value (after the rule's last cleared alert, any value
  not past the value); rate, a window of two readings or more that does not breach;
  composite, an event where the conditions do not hold;
- or the start of the sensor's readings.

Bound: ``LATE_LOOKBACK_S``. A reading older than the newest evaluated one by more than that,
or a late reading with no checkpoint within that look-back, is **too late**: counted
(``too_late``), not evaluated. A replay never reads before the look-back, so a too-late
reading never enters a later replay either.

Offline rules are the timer's: a reading clears an offline alert only if it is fresh (newer
than now - silent_s), so an old reading that arrives late does not bring a sensor back online.

Limit: with several workers sharing one subscription, lateness is judged against what this
worker evaluated and the state rows.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import operator
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import psycopg

from cimtwin.store import alert_engine as store
from cimtwin.store.alert_engine import PairState, RuleRow
from cimtwin.store.watch import GenerationWatch

log = logging.getLogger("cimtwin.alerts")

#: How far (reading time) behind the newest evaluated reading a late reading is still evaluated
#: in time order; a replay reads no further back than this either.
LATE_LOOKBACK_S = 24 * 3600
#: A checkpoint is looked for this far (or twice the rule's hold or window) before the late
#: reading first, and in the whole look-back only if there is none.
NEAR_S = 3600
_PAGE = 1000

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
Row = tuple[datetime, int, float, datetime]
#: (time, quantity ('' for one-sensor rules), value, sensor_id); this order is evaluation order.
Event = tuple[datetime, str, float, int]
_UNFINISHED = ("open", "acknowledged", "dispatched")


class _Outcome:
    """What evaluating one (rule, sensor) asks the store to do, in reading order."""

    __slots__ = ("now", "steps")

    def __init__(self, now: datetime | None = None):
        self.steps: list[tuple[str, datetime, float | None]] = []
        self.now = now

    def raised(self, t: datetime, v: float | None) -> None:
        self.steps.append(("raise", t, v))

    def cleared(self, t: datetime, v: float | None) -> None:
        self.steps.append(("clear", t, v))

    def repeated(self, t: datetime, v: float | None) -> None:
        self.steps.append(("repeat", t, v))


def _threshold(rule: RuleRow, state: PairState, t: datetime, v: float, out: _Outcome) -> None:
    c = rule.condition
    op = OPS[c["op"]]
    breached = op(v, c["value"])
    if state.phase == "active":
        clear_at = c.get("clear_value")
        _while_active(state, op(v, clear_at) if clear_at is not None else breached, t, v, out)
    else:
        _while_inactive(state, breached, float(c.get("hold_s") or 0), t, v, out)


def _while_active(state: PairState, holds: bool, t: datetime, v: float | None, out: _Outcome) -> None:
    """An active condition: still holding repeats its alert, else it clears."""
    if holds:
        out.repeated(t, v)
    else:
        state.phase, state.since = "clear", None
        out.cleared(t, v)


def _while_inactive(state: PairState, holds: bool, hold_s: float, t: datetime, v: float | None,
                    out: _Outcome) -> None:
    """A clear or pending condition: raises once it has held ``hold_s``."""
    if not holds:
        state.phase, state.since = "clear", None
        return
    if state.phase == "clear":
        state.phase, state.since = "pending", t
    if (t - state.since).total_seconds() >= hold_s:
        state.phase, state.since = "active", t
        out.raised(t, v)


def _rate(rule: RuleRow, state: PairState, t: datetime, v: float, out: _Outcome) -> None:
    c = rule.condition
    window = float(c["window_s"])
    points = [p for p in (state.memory or {}).get("points", []) if t.timestamp() - p[0] <= window]
    points.append((t.timestamp(), v))
    state.memory = {"points": points}
    t0, v0 = points[0]
    if t.timestamp() - t0 <= 0:
        return
    rate = (v - v0) / (t.timestamp() - t0)
    breached = OPS[c["op"]](rate, c["per_s"])
    if state.phase == "active":
        _while_active(state, breached, t, v, out)
    elif breached:
        state.phase, state.since = "active", t
        out.raised(t, v)


def _offline(rule: RuleRow, state: PairState, t: datetime, v: float, out: _Outcome) -> None:
    # Data is back only if it is fresh: an old reading arriving late leaves the sensor offline.
    if state.phase == "active" and t >= out.now - timedelta(seconds=float(rule.condition["silent_s"])):
        state.phase, state.since = "clear", None
        out.cleared(t, v)


EVALUATORS = {"threshold": _threshold, "rate": _rate, "offline": _offline}


def _composite_holds(c: dict, values: dict[str, float]) -> bool:
    results = [q["quantity"] in values and OPS[q["op"]](values[q["quantity"]], q["value"])
               for q in c["conditions"]]
    return all(results) if c.get("mode", "all") == "all" else any(results)


def _composite(rule: RuleRow, state: PairState, values: dict[str, float], t: datetime, quantity: str, v: float,
               out: _Outcome) -> None:
    """One event of a composite rule: ``values`` holds each channel's latest value."""
    c = rule.condition
    values[quantity] = v
    holds = _composite_holds(c, values)
    first = values.get(c["conditions"][0]["quantity"])
    if state.phase == "active":
        _while_active(state, holds, t, first, out)
    else:
        _while_inactive(state, holds, float(c.get("hold_s") or 0), t, first, out)


def _clears_any(rule: RuleRow, v: float) -> bool:
    """A threshold rule's state is clear after this value, whatever it was before."""
    c = rule.condition
    op, clear_at = OPS[c["op"]], c.get("clear_value")
    return not op(v, c["value"]) and (clear_at is None or not op(v, clear_at))


_CLEAR = ("clear", None, None)


def _stays_quiet(rule: RuleRow, low: float, high: float) -> bool:
    """True if a clear (rule, sensor) stays clear, with nothing to do, for values in [low, high]."""
    if rule.kind == "offline":
        return True  # readings only matter to an offline rule that is active
    if rule.kind != "threshold":
        return False
    c = rule.condition
    return _never(c["op"], c["value"], low, high)


def _stays_active(rule: RuleRow, low: float, high: float) -> bool:
    """True if an active threshold rule stays active for values in [low, high] (all past the clear value)."""
    c = rule.condition
    clear_at = c["value"] if c.get("clear_value") is None else c["clear_value"]
    return not _sometimes_not(c["op"], clear_at, low, high)


def _never(op: str, value: float, low: float, high: float) -> bool:
    """No value in [low, high] is ``op value``."""
    if op == ">":
        return high <= value
    if op == ">=":
        return high < value
    if op == "<":
        return low >= value
    return low > value


def _sometimes_not(op: str, value: float, low: float, high: float) -> bool:
    """Some value of [low, high] (its ends) is not ``op value``."""
    return not (OPS[op](low, value) and OPS[op](high, value))


class _Split:
    """A sensor's batch readings: those not newer than ``last`` (late: how many are too late) and
    the others (the tail), with their ranges of values."""

    __slots__ = ("last", "late", "late_high", "late_low", "tail", "tail_high", "tail_low", "too_late")

    def __init__(self, points: list[tuple[datetime, float]], last: datetime):
        self.last = last
        cut = bisect.bisect_right(points, last, key=lambda p: p[0])
        self.late, self.tail = points[:cut], points[cut:]
        values = [v for _, v in self.late]
        self.late_low, self.late_high = min(values), max(values)
        values = [v for _, v in self.tail]
        self.tail_low, self.tail_high = (min(values), max(values)) if values else (0.0, 0.0)
        self.too_late = bisect.bisect_left(self.late, last - timedelta(seconds=LATE_LOOKBACK_S), key=lambda p: p[0])


def _persisted(state: PairState) -> tuple:
    return state.phase, state.since, state.memory or None


def _later(*times: datetime | None) -> datetime | None:
    return max((t for t in times if t is not None), default=None)


# late readings ---------------------------------------------------------------

class _Machine:
    """One (rule, sensor) evaluated over time-ordered events (a re-evaluation)."""

    __slots__ = ("out", "rule", "state", "values")

    def __init__(self, rule: RuleRow, state: PairState, values: dict[str, float] | None):
        self.rule = rule
        self.state = PairState(state.phase, state.since, state.last_time, state.last_value,
                               dict(state.memory) if state.memory else None)
        self.values = dict(values) if values is not None else None
        self.out = _Outcome()

    def feed(self, t: datetime, quantity: str, v: float) -> None:
        if self.values is None:
            EVALUATORS[self.rule.kind](self.rule, self.state, t, v, self.out)
        else:
            _composite(self.rule, self.state, self.values, t, quantity, v, self.out)
        self.state.last_time, self.state.last_value = t, v

    def key(self) -> tuple:
        st = self.state
        points = tuple(tuple(p) for p in (st.memory or {}).get("points", ()))
        return st.phase, st.since, points, tuple(sorted(self.values.items())) if self.values is not None else None


@dataclass(slots=True)
class _Checkpoint:
    state: PairState                   # the state there
    values: dict[str, float] | None    # composite: each channel's value there
    events: list[Event] = field(default_factory=list)  # stored events after it, before the late reading
    carried: datetime | None = None    # active: the raise time of the alert under way


class _Episode:
    """From a raise (or an alert under way) to its clear, as an evaluation steps through it."""

    __slots__ = ("cleared", "raised", "repeats", "since")

    def __init__(self, since: datetime, raised: tuple[datetime, float] | None):
        self.since, self.raised = since, raised
        self.repeats: list[tuple[datetime, float]] = []
        self.cleared: tuple[datetime, float] | None = None

    @property
    def last(self) -> tuple[datetime, float] | None:
        return self.repeats[-1] if self.repeats else self.raised


def _episodes(steps: list[tuple[str, datetime, float | None]], carried: datetime | None) -> list[_Episode]:
    episodes, current = [], None
    if carried is not None:
        current = _Episode(carried, None)
        episodes.append(current)
    for step, t, v in steps:
        if step == "raise":
            current = _Episode(t, (t, v))
            episodes.append(current)
        elif current is not None and current.cleared is None:
            if step == "repeat":
                current.repeats.append((t, v))
            else:
                current.cleared = (t, v)
    return episodes


def _stream(conn: psycopg.Connection, members: dict[int, str], start: datetime, end: datetime, *,
            end_inclusive: bool) -> Iterator[Event]:
    """The members' stored readings from ``start`` to ``end`` as events, in time order, page by page."""

    def one(sensor_id: int, quantity: str) -> Iterator[Event]:
        after = None
        while True:
            page = store.readings_page(conn, sensor_id, start=start, end=end, end_inclusive=end_inclusive,
                                       after=after, limit=_PAGE)
            for t, v in page:
                yield t, quantity, v, sensor_id
            if len(page) < _PAGE:
                return
            after = page[-1][0]

    if len(members) == 1:
        return one(*next(iter(members.items())))
    return heapq.merge(*(one(s, q) for s, q in members.items()))


class _Rules(NamedTuple):
    rules: dict[int, RuleRow]
    by_sensor: dict[int, list[int]]            # sensor → its (non-composite) rules
    composite_watch: dict[int, list[tuple[int, int]]]  # a device channel → the composite (rule, anchor)s it feeds
    siblings: dict[int, dict[str, int]]        # a composite anchor → its device's sensors by quantity


class AlertEngine:
    """Rules and their sensor matches, reloaded when the rules (or sensors) change."""

    def __init__(self, url: str, *, application_name: str):
        self._rules = _Rules({}, {}, {}, {})
        self._watch = GenerationWatch(url, application_name=application_name, what="alert rules",
                                      generation=store.rules_generation,
                                      load=lambda conn: self._load(*store.load_rules(conn)))
        self._seen: dict[int, datetime | None] = {}  # sensor → the newest reading time evaluated
        self.evaluated = 0
        self.late = 0        # readings older than the newest evaluated (re-evaluated unless too late)
        self.too_late = 0    # late readings not evaluated (beyond LATE_LOOKBACK_S, or no checkpoint)
        self.replays = 0     # (rule, sensor) re-evaluations
        self.raised = 0
        self.withdrawn = 0

    # rules -----------------------------------------------------------------

    def maybe_refresh(self) -> None:
        self._watch.maybe_refresh()

    def _load(self, rules: list[RuleRow], matches: list[tuple[int, int]], siblings: dict[int, dict[str, int]]):
        rules_by_id = {r.id: r for r in rules}
        by_sensor: dict[int, list[int]] = defaultdict(list)
        watch: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for rule_id, sensor_id in matches:
            rule = rules_by_id[rule_id]
            if rule.kind == "composite":
                for quantity in {q["quantity"] for q in rule.condition["conditions"]}:
                    member = siblings.get(sensor_id, {}).get(quantity)
                    if member is not None:
                        watch[member].append((rule_id, sensor_id))
            else:
                by_sensor[sensor_id].append(rule_id)
        self._rules = _Rules(rules_by_id, dict(by_sensor), dict(watch), siblings)  # one swap: thread-safe
        log.info("alert engine: %d rule(s), %d sensor match(es)", len(rules), len(matches))

    def close(self) -> None:
        self._watch.close()

    @property
    def active(self) -> bool:
        return bool(self._rules.by_sensor or self._rules.composite_watch)

    # evaluation (inside the writer's transaction) -------------------------

    def touches(self, rows: Sequence[Row]) -> bool:
        """Whether a rule watches any of these rows' sensors (else the batch needs no evaluation)."""
        snapshot = self._rules
        by_sensor, watch = snapshot.by_sensor, snapshot.composite_watch
        return bool(by_sensor or watch) and any(
            sensor_id in by_sensor or sensor_id in watch for _, sensor_id, _, _ in rows)

    def __call__(self, conn: psycopg.Connection, rows: Sequence[Row]) -> None:
        snapshot = self._rules
        by_sensor, watch = snapshot.by_sensor, snapshot.composite_watch
        if not by_sensor and not watch:
            return
        series: dict[int, list[tuple[datetime, float]]] = defaultdict(list)
        for t, sensor_id, value, _ in rows:
            if sensor_id in by_sensor or sensor_id in watch:
                series[sensor_id].append((t, value))
        if not series:
            return
        composite_pairs = sorted({p for sid in series for p in watch.get(sid, ())})
        members = {pair: _members(snapshot, *pair) for pair in composite_pairs}
        for points in series.values():
            points.sort()
        self._recall(conn, series, [sid for channels in members.values() for sid in channels])
        states = {pair: st for pair, st in store.lock_states(
            conn, list({sid for sid in series if sid in by_sensor} | {a for _, a in composite_pairs})).items()
            if pair[0] in snapshot.rules}
        before = {pair: _persisted(st) for pair, st in states.items()}
        now = datetime.now(timezone.utc)
        late_pairs: list[tuple[RuleRow, int, PairState | None, _Split]] = []
        quiet: list[tuple[RuleRow, int, _Split]] = []
        splits: dict[tuple[int, datetime], _Split] = {}
        for sensor_id, series_points in series.items():
            rule_ids = by_sensor.get(sensor_id)
            if not rule_ids:
                continue
            seen, first = self._seen[sensor_id], series_points[0][0]
            low = min(v for _, v in series_points)
            high = max(v for _, v in series_points)
            for rule_id in rule_ids:
                rule = snapshot.rules[rule_id]
                pair = (rule_id, sensor_id)
                state = states.get(pair)
                last = seen if state is None or state.last_time is None or (
                    seen is not None and seen >= state.last_time) else state.last_time
                if last is not None and first <= last and rule.kind != "offline":
                    split = splits.get((sensor_id, last))
                    if split is None:
                        split = splits[(sensor_id, last)] = _Split(series_points, last)
                    if state is None and _stays_quiet(rule, low, high):
                        quiet.append((rule, sensor_id, split))  # unless an alert is under way: see _late_pairs
                    else:
                        late_pairs.append((rule, sensor_id, state, split))
                    continue
                if state is None:
                    if _stays_quiet(rule, low, high):
                        # Clear, and no reading of this batch can change that: nothing to evaluate one by one.
                        self.evaluated += len(series_points)
                        continue
                    state = states[pair] = PairState()
                self._evaluate(conn, rule, sensor_id, state, series_points, now)
        if late_pairs or quiet:
            self._late_pairs(conn, late_pairs, quiet, states, now)
        if composite_pairs:
            self._composites(conn, snapshot, composite_pairs, members, series, states, now)
        # Only what changes the outcome is written (phase, since, a rate window): a state that
        # stays clear costs no write, so many quiet rules cost little.
        store.save_states(conn, [(pair, st) for pair, st in states.items()
                                 if _persisted(st) != before.get(pair, _CLEAR)])
        for sensor_id, points in series.items():
            self._seen[sensor_id] = _later(self._seen[sensor_id], points[-1][0])

    def _evaluate(self, conn: psycopg.Connection, rule: RuleRow, sensor_id: int, state: PairState,
                  points: list[tuple[datetime, float]], now: datetime, *, repeats: int = 0) -> None:
        """``repeats``: late readings that repeated the alert under way before ``points``."""
        out = _Outcome(now)
        evaluate = EVALUATORS[rule.kind]
        for t, v in points:
            if state.last_time is None or t > state.last_time:
                state.last_time, state.last_value = t, v
            evaluate(rule, state, t, v, out)
            self.evaluated += 1
        self._apply(conn, rule, sensor_id, out, repeats=repeats)

    def _late_pairs(self, conn: psycopg.Connection, pairs: list[tuple[RuleRow, int, PairState | None, _Split]],
                    quiet: list[tuple[RuleRow, int, _Split]], states: dict, now: datetime) -> None:
        """The (rule, sensor)s with readings not newer than the newest evaluated (``quiet``: clear
        ones with no reading past the value in the whole batch). Two cases of threshold rules need
        no re-evaluation: readings that cannot leave a clear state, unless an alert was under way
        at or raised after the first of them; readings that keep an episode active since before
        them: in time order they are repeats of its alert."""
        calm = {(rule.id, sensor_id) for rule, sensor_id, state, split in pairs
                if rule.kind == "threshold" and state is not None
                and (state.phase == "clear" or (state.phase == "pending" and state.since > split.late[-1][0]))
                and _never(rule.condition["op"], rule.condition["value"], split.late_low, split.late_high)}
        calm.update((rule.id, sensor_id) for rule, sensor_id, _ in quiet)
        if calm:
            firsts = {sensor_id: split.late[0][0] for _, sensor_id, split in quiet}
            firsts.update((sensor_id, split.late[0][0]) for rule, sensor_id, _, split in pairs
                          if (rule.id, sensor_id) in calm)
            under_way = store.alerts_since(conn, firsts)
            calm -= under_way
            settled: dict[_Split, int] = defaultdict(int)  # how many of its pairs have nothing to evaluate
            for rule, sensor_id, split in quiet:
                if (rule.id, sensor_id) in calm:  # nothing to evaluate, in time order or not
                    settled[split] += 1
                else:
                    pairs.append((rule, sensor_id, None, split))
            for split, n in settled.items():
                self.late += n * len(split.late)
                self.too_late += n * split.too_late
                self.evaluated += n * (len(split.late) - split.too_late + len(split.tail))
        for rule, sensor_id, state, split in pairs:
            repeats = 0
            if (rule.id, sensor_id) in calm:
                self._count_late(split)
            elif (rule.kind == "threshold" and state is not None and state.phase == "active"
                  and state.since <= split.late[0][0] and _stays_active(rule, split.late_low, split.late_high)):
                repeats = self._count_late(split)
            else:
                if state is None:
                    state = states[(rule.id, sensor_id)] = PairState()
                self._late(conn, rule, sensor_id, {sensor_id: ""}, state,
                           [(t, "", v, sensor_id) for t, v in split.late], split.last)
            tail = split.tail
            if not tail:
                if repeats:
                    store.count_repeats(conn, rule, sensor_id=sensor_id, repeats=repeats)
                continue
            if state is None and _stays_quiet(rule, split.tail_low, split.tail_high):
                self.evaluated += len(tail)
                continue
            if state is None:
                state = states[(rule.id, sensor_id)] = PairState()
            self._evaluate(conn, rule, sensor_id, state, tail, now, repeats=repeats)

    def _count_late(self, split: _Split) -> int:
        """Counts late readings that need no re-evaluation; returns how many are not too late."""
        self.late += len(split.late)
        self.too_late += split.too_late
        self.evaluated += len(split.late) - split.too_late
        return len(split.late) - split.too_late

    def _recall(self, conn: psycopg.Connection, series: dict[int, list], channels: list[int]) -> None:
        """The newest reading time of sensors this process has not evaluated yet, from the stored
        readings less this batch's: so a restart does not hide late readings."""
        unseen = {sid for sid in (*series, *channels) if sid not in self._seen}
        if unseen:
            self._seen.update(store.newest_readings(
                conn, {sid: [t for t, _ in series.get(sid, ())] for sid in unseen}))

    def _composites(self, conn, snapshot: _Rules, pairs, members, series, states, now: datetime) -> None:
        plans = []
        for rule_id, anchor in pairs:
            rule = snapshot.rules[rule_id]
            channels = members[(rule_id, anchor)]
            state = states.get((rule_id, anchor)) or PairState()
            states[(rule_id, anchor)] = state
            events = sorted((t, q, v, sid) for sid, q in channels.items() for t, v in series.get(sid, ()))
            last = _later(state.last_time, *(self._seen.get(sid) for sid in channels))
            if events and last is not None and events[0][0] <= last:
                events = self._late(conn, rule, anchor, channels, state, events, last)
            if events:
                plans.append((rule, anchor, channels, state, events))
        # Each channel's value before the events: its newest stored reading up to the first event's
        # time (before it, for a channel that has an event then).
        keys, inclusive = [], set()
        for _, _, channels, _, events in plans:
            t0 = events[0][0]
            at_t0 = {e[3] for e in itertools.takewhile(lambda e: e[0] == t0, events)}
            keys += [(sid, t0) for sid in channels]
            inclusive.update((sid, t0) for sid in channels if sid not in at_t0)
        start = store.latest_before(conn, keys, inclusive=inclusive)
        for rule, anchor, channels, state, events in plans:
            t0 = events[0][0]
            values = {q: start[(sid, t0)][1] for sid, q in channels.items() if (sid, t0) in start}
            out = _Outcome(now)
            for t, quantity, v, _ in events:
                _composite(rule, state, values, t, quantity, v, out)
                state.last_time = _later(state.last_time, t)
                self.evaluated += 1
            self._apply(conn, rule, anchor, out)

    def _apply(self, conn: psycopg.Connection, rule: RuleRow, sensor_id: int, out: _Outcome, *,
               repeats: int = 0) -> None:
        """Raises and clears in reading order; a run of repeats folds into its alert in one update.
        ``repeats``: older readings that repeated the alert under way (counted only)."""
        if repeats and (not out.steps or out.steps[0][0] != "repeat"):
            store.count_repeats(conn, rule, sensor_id=sensor_id, repeats=repeats)
            repeats = 0
        last = None
        for step, t, v in out.steps:
            if step == "repeat":
                repeats, last = repeats + 1, (t, v)
                continue
            if repeats:
                store.fold_repeats(conn, rule, sensor_id=sensor_id, repeats=repeats, last_time=last[0],
                                   last_value=last[1])
                repeats = 0
            if step == "raise":
                store.raise_alert(conn, rule, sensor_id=sensor_id, time=t, value=v, title=rule.name)
                self.raised += 1
            else:
                store.clear_alert(conn, rule, sensor_id=sensor_id, time=t, value=v)
        if repeats:
            store.fold_repeats(conn, rule, sensor_id=sensor_id, repeats=repeats, last_time=last[0],
                               last_value=last[1])

    # late readings (see the module's docstring) ------------------------------

    def _late(self, conn: psycopg.Connection, rule: RuleRow, anchor: int, channels: dict[int, str],
              state: PairState, events: list[Event], last: datetime) -> list[Event]:
        """Re-evaluates (rule, anchor) in time order for the events not newer than ``last`` (the
        newest evaluated); returns the newer ones, to evaluate as usual from ``state``."""
        late = [e for e in events if e[0] <= last]
        tail = [e for e in events if e[0] > last]
        self.late += len(late)
        lowest = last - timedelta(seconds=LATE_LOOKBACK_S)
        job = _Late(rule, anchor, channels, [e for e in late if e[0] >= lowest], last, lowest)
        too_late = len(late) - len(job.events)
        if job.events:
            checkpoint = self._checkpoint(conn, job)
            if checkpoint is None:
                too_late += len(job.events)
            else:
                self._replay(conn, job, state, checkpoint)
        if too_late:
            self.too_late += too_late
            log.debug("rule %d, sensor %d: %d reading(s) too late to evaluate (before %s, or no checkpoint)",
                      rule.id, anchor, too_late, lowest.isoformat())
        return tail

    def _checkpoint(self, conn: psycopg.Connection, job: _Late) -> _Checkpoint | None:
        rule, c, first = job.rule, job.rule.condition, job.first
        after_clear = None
        if rule.auto_clear:
            alert = store.engine_alert_before(conn, rule.id, job.anchor, first)
            if alert is not None:
                if (alert.cleared_at > first if alert.cleared_at is not None else alert.status in _UNFINISHED):
                    return self._under_way(conn, job, alert.raised_at)
                if alert.cleared_at is not None and alert.status not in _UNFINISHED:
                    after_clear = alert.cleared_at  # not active since: a value not past the value clears
        reach = timedelta(seconds=max(2 * float(c.get("hold_s") or c.get("window_s") or 0), NEAR_S))
        for start in dict.fromkeys((max(job.lowest, first - reach), job.lowest)):
            found = self._scan(conn, job, start, after_clear)
            if found is not None:
                return found
        return None

    def _under_way(self, conn: psycopg.Connection, job: _Late, raised_at: datetime) -> _Checkpoint:
        """Just before the first late reading, within the episode of the alert raised at ``raised_at``."""
        state, values, first = PairState("active", raised_at), None, job.first
        if job.rule.kind == "rate":
            start = max(job.lowest, first - timedelta(seconds=float(job.rule.condition["window_s"])))
            state.memory = {"points": [(t.timestamp(), v) for t, _, v, _ in
                                       _stream(conn, job.channels, start, first, end_inclusive=False)]}
        elif job.rule.kind == "composite":
            before = store.latest_before(conn, [(sid, first) for sid in job.channels])
            values = {q: before[(sid, first)][1] for sid, q in job.channels.items() if (sid, first) in before}
        return _Checkpoint(state, values, carried=raised_at)

    def _scan(self, conn: psycopg.Connection, job: _Late, start: datetime,
              after_clear: datetime | None) -> _Checkpoint | None:
        """The latest point from ``start`` to the first late reading after which the state is clear
        whatever it was before."""
        rule, channels = job.rule, job.channels
        c, kind = rule.condition, rule.kind
        before = store.latest_before(conn, [(sid, start) for sid in channels])
        values = {channels[sid]: v for (sid, _), (_, v) in before.items()} if kind == "composite" else None
        # Nothing stored before start: the data begins here, clear.
        found = _Checkpoint(PairState(), dict(values) if values is not None else None) if not before else None
        since: list[Event] = []
        op = OPS.get(c.get("op"))
        window = float(c.get("window_s") or 0)
        points: list[tuple[float, float]] = []
        for event in _stream(conn, channels, start, job.first, end_inclusive=False):
            t, quantity, v, _ = event
            memory = None
            if kind == "threshold":
                clear = _clears_any(rule, v) or (after_clear is not None and t >= after_clear
                                                 and not op(v, c["value"]))
            elif kind == "rate":
                ts = t.timestamp()
                points = [p for p in points if ts - p[0] <= window]
                points.append((ts, v))
                t0, v0 = points[0]
                whole = not before or ts - window >= start.timestamp()  # the window is all read
                clear = whole and ts > t0 and not op((v - v0) / (ts - t0), c["per_s"])
                memory = {"points": list(points)}
            else:
                values[quantity] = v
                clear = not _composite_holds(c, values)
            if clear:
                found = _Checkpoint(PairState("clear", None, t, v, memory),
                                    dict(values) if values is not None else None)
                since = []
            else:
                since.append(event)
        if found is not None:
            found.events = since
        return found

    def _replay(self, conn: psycopg.Connection, job: _Late, state: PairState, checkpoint: _Checkpoint) -> None:
        self.replays += 1
        old = _Machine(job.rule, checkpoint.state, checkpoint.values)
        new = _Machine(job.rule, checkpoint.state, checkpoint.values)
        for t, quantity, v, _ in checkpoint.events:
            old.feed(t, quantity, v)
            new.feed(t, quantity, v)
        ours = {(sid, t) for t, _, _, sid in job.events}
        newest_late = job.events[-1][0]
        converged = False
        for t, quantity, v, sid in _stream(conn, job.channels, job.first, job.last, end_inclusive=True):
            new.feed(t, quantity, v)
            if (sid, t) not in ours:
                old.feed(t, quantity, v)
            if t > newest_late and old.key() == new.key():
                converged = True  # the same from here on: what was evaluated stands
                break
        self._reconcile(conn, job, old.out.steps, new.out.steps, checkpoint.carried)
        if not converged:
            st = new.state
            state.phase, state.since, state.memory = st.phase, st.since, st.memory
            if state.last_time is None or (st.last_time is not None and st.last_time >= state.last_time):
                state.last_time, state.last_value = st.last_time, st.last_value

    def _reconcile(self, conn: psycopg.Connection, job: _Late, old_steps, new_steps, carried: datetime | None) -> None:
        """Puts the alerts right where the evaluation with the late readings (new) differs from the
        one without (old: what was done)."""
        if old_steps == new_steps:
            return
        old = {e.since: e for e in _episodes(old_steps, carried)}
        new = _episodes(new_steps, carried)
        kept = {e.since for e in new}
        for since, episode in old.items():
            if since not in kept:
                self._withdraw(conn, job, episode)
        for episode in new:
            was = old.get(episode.since)
            if was is None:
                self._raise_late(conn, job, episode)
            elif (was.raised, was.repeats, was.cleared) != (episode.raised, episode.repeats, episode.cleared):
                self._correct(conn, job, was, episode)

    def _withdraw(self, conn: psycopg.Connection, job: _Late, episode: _Episode) -> None:
        alert = store.engine_alert_at(conn, job.rule.id, job.anchor, episode.since)
        if alert is None:
            return
        if alert.handled:
            store.note_alert(conn, alert, note=f"{job.reading} shows that this rule would not have raised this "
                                               "alert; kept because it has been handled",
                             detail={**job.detail, "withdrawn": False})
        else:
            store.withdraw_alert(conn, alert, note=f"withdrawn: {job.reading} shows that this rule would not have "
                                                   "raised it", detail=job.detail)
            self.withdrawn += 1

    def _raise_late(self, conn: psycopg.Connection, job: _Late, episode: _Episode) -> None:
        rule, sensor_id, why = job.rule, job.anchor, job.detail
        (t, v), last = episode.raised, episode.last
        if episode.cleared is not None and rule.auto_clear:
            store.raise_finished_alert(conn, rule, sensor_id=sensor_id, title=rule.name, raised=(t, v), last=last,
                                       count=1 + len(episode.repeats), cleared=episode.cleared, detail=why)
        else:
            store.raise_alert(conn, rule, sensor_id=sensor_id, time=t, value=v, title=rule.name, detail=why)
            if episode.repeats:
                store.fold_repeats(conn, rule, sensor_id=sensor_id, repeats=len(episode.repeats), last_time=last[0],
                                   last_value=last[1])
            if episode.cleared is not None:
                store.clear_alert(conn, rule, sensor_id=sensor_id, time=episode.cleared[0], value=episode.cleared[1],
                                  detail=why)
        self.raised += 1

    def _correct(self, conn: psycopg.Connection, job: _Late, was: _Episode, now: _Episode) -> None:
        """The same alert in both: its first value, count, last reading and clear as new has them."""
        rule = job.rule
        alert = store.engine_alert_at(conn, rule.id, job.anchor, now.since)
        if alert is None:
            return
        last = None
        if was.last is not None and alert.last_at == was.last[0]:  # its last reading is one of the replay's
            # none in the new evaluation (an alert under way that a late reading clears): the one before
            last = now.last or self._last_before(conn, job, now.since, alert.first_value)
        elif now.last is not None and now.last[0] > alert.last_at:  # its last reading came before the replay's
            last = now.last
        cleared, note, reopen, clear = store.KEEP, None, False, None
        if was.cleared != now.cleared:
            engine_cleared = was.cleared is not None and alert.cleared_at == was.cleared[0]
            if now.cleared is None:
                if engine_cleared:
                    if alert.status == "resolved" and rule.auto_clear:
                        reopen = True
                    else:
                        cleared, note = None, "its condition has not cleared after all"
            elif was.cleared is None:
                clear = now.cleared if alert.status in _UNFINISHED else None
            elif engine_cleared:
                cleared = now.cleared[0]
                note = f"its condition cleared at {now.cleared[0].isoformat()}, not {was.cleared[0].isoformat()}"
        first_value = now.raised[1] if now.raised is not None and now.raised != was.raised else store.KEEP
        store.correct_alert(conn, alert.id, count_delta=len(now.repeats) - len(was.repeats), first_value=first_value,
                            last=last if last != was.last else None, cleared_at=cleared)
        if reopen and not store.reopen_alert(conn, rule, alert, note=f"reopened: {job.reading} shows that its "
                                                                    "condition has not cleared", detail=job.detail):
            note = "its condition has not cleared after all (not reopened: the rule has a newer alert open)"
        if note:
            store.note_alert(conn, alert, note=f"{job.reading}: {note}", detail=job.detail)
        if clear is not None:
            store.clear_alert(conn, rule, sensor_id=job.anchor, time=clear[0], value=clear[1], alert_id=alert.id,
                              detail=job.detail)

    def _last_before(self, conn: psycopg.Connection, job: _Late, since: datetime,
                     first_value: float | None) -> tuple[datetime, float] | None:
        """The last raise or repeat of the episode raised at ``since`` before the first late reading."""
        first = job.first
        if job.rule.kind == "rate":  # a reading with no other in its window repeats nothing
            window = float(job.rule.condition["window_s"])
            last, points = None, []
            start = max(job.lowest, since - timedelta(seconds=window))
            for t, _, v, _ in _stream(conn, job.channels, start, first, end_inclusive=False):
                ts = t.timestamp()
                points = [p for p in points if ts - p[0] <= window] + [(ts, v)]
                if t == since or (t > since and len(points) > 1):
                    last = (t, v)
            return last
        # Every event of an episode under way repeats it: the last one, of any channel.
        before = store.latest_before(conn, [(sid, first) for sid in job.channels])
        if not before:
            return None
        at = max(t for t, _ in before.values())
        if at == since:
            return since, first_value
        value = before.get((job.anchor, first))
        return (at, value[1]) if at > since and value is not None else None


@dataclass(slots=True)
class _Late:
    """One (rule, sensor)'s late readings in a batch, evaluated again."""

    rule: RuleRow
    anchor: int
    channels: dict[int, str]
    events: list[Event]   # the late events to evaluate, oldest first
    last: datetime        # the newest evaluated before them
    lowest: datetime      # the look-back's start

    @property
    def first(self) -> datetime:
        return self.events[0][0]

    @property
    def detail(self) -> dict:
        return {"late": True, "late_reading": {"time": self.first.isoformat(), "value": self.events[0][2]}}

    @property
    def reading(self) -> str:
        return f"a reading of {self.first.isoformat()} that arrived late"


def _members(snapshot: _Rules, rule_id: int, anchor: int) -> dict[int, str]:
    """A composite rule's channels on the anchor's device: {sensor_id: quantity}."""
    quantities = {q["quantity"] for q in snapshot.rules[rule_id].condition["conditions"]}
    return {sid: q for q, sid in snapshot.siblings.get(anchor, {}).items() if q in quantities}


# offline rules (the alerts timer) ---------------------------------------------

class OfflineRules:
    """The timer's offline evaluation, as a timer task (``evaluate_offline``), with the offline
    rules and their sensors kept between ticks and reloaded only when rules or sensors change
    (the engine's GenerationWatch on the rules' generation)."""

    def __init__(self, url: str, *, application_name: str = "cimtwin-alerts-timer"):
        self.__name__ = "evaluate_offline"
        self.loads = 0
        self._offline: tuple[dict[int, RuleRow], list[tuple[int, int]]] = ({}, [])
        self._watch = GenerationWatch(url, application_name=application_name, what="offline rules",
                                      generation=store.rules_generation, load=self._load)

    def _load(self, conn: psycopg.Connection) -> None:
        self._offline = _offline_matches(conn)
        self.loads += 1

    def __call__(self, conn: psycopg.Connection, *, now: datetime | None = None) -> int:
        self._watch.maybe_refresh()
        rules, pairs = self._offline
        with conn.transaction():
            return _evaluate_offline(conn, now or datetime.now(timezone.utc), rules, pairs)

    def close(self) -> None:
        self._watch.close()


def evaluate_offline(conn: psycopg.Connection, *, now: datetime | None = None) -> int:
    """The timer's part: raise offline alerts for matched sensors silent for too long. Loads the
    rules on every call; the timer itself uses :class:`OfflineRules`, which keeps them."""
    with conn.transaction():
        return _evaluate_offline(conn, now or datetime.now(timezone.utc), *_offline_matches(conn))


def _offline_matches(conn: psycopg.Connection) -> tuple[dict[int, RuleRow], list[tuple[int, int]]]:
    rules, matches, _ = store.load_rules(conn)
    offline = {r.id: r for r in rules if r.kind == "offline"}
    return offline, [(rid, sid) for rid, sid in matches if rid in offline]


def _evaluate_offline(conn: psycopg.Connection, now: datetime, offline: dict[int, RuleRow],
                      pairs: list[tuple[int, int]]) -> int:
    if not pairs:
        return 0
    # Every matched pair gets a state row, so a sensor that never reported is watched too.
    store.watch_pairs(conn, pairs)
    raised = 0
    for rule in offline.values():
        silent = store.silent_sensors(conn, rule_id=rule.id, silent_s=float(rule.condition["silent_s"]), now=now)
        for sensor_id, last in silent:
            store.raise_alert(conn, rule, sensor_id=sensor_id, time=now, value=None,
                              title=f"{rule.name}: no data since {last.isoformat() if last else 'ever'}")
            store.save_states(conn, [((rule.id, sensor_id), PairState("active", now, last or now, None, {}))])
            raised += 1
    return raised
