"""The rule engine: evaluates each batch's new readings inside the batch's transaction.

* Only readings the batch really inserted are evaluated, so a QoS 1 redelivery (a
  duplicate) never fires twice.
* The per-(rule, sensor) state is read (locked) and written in the same transaction as the
  readings, so a restart resumes exactly where the last commit left off: hold timers and
  hysteresis are not reset.
* A sensor's readings are evaluated in time order within a batch. A reading older than the
  newest one already evaluated for that (rule, sensor) is counted as late and evaluated
  against the current state (its place in an episode already decided is not revisited).

Rule kinds (conditions in cimtwin.schemas.alerts): threshold (with hysteresis and hold),
rate of change over a window, offline (no data for N s; raised by the timer, cleared here
when data returns), composite (all/any conditions over one device's channels, with hold).
"""

from __future__ import annotations

import logging
import operator
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import NamedTuple

import psycopg

from cimtwin.store import alert_engine as store
from cimtwin.store.alert_engine import PairState, RuleRow
from cimtwin.store.watch import GenerationWatch

log = logging.getLogger("cimtwin.alerts")

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
Row = tuple[datetime, int, float, datetime]


class _Outcome:
    """What evaluating one (rule, sensor) over a batch asks the store to do, in reading order."""

    __slots__ = ("steps",)

    def __init__(self):
        self.steps: list[tuple[str, datetime, float | None]] = []

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
        still = op(v, clear_at) if clear_at is not None else breached
        if still:
            out.repeated(t, v)
        else:
            state.phase, state.since = "clear", None
            out.cleared(t, v)
        return
    if not breached:
        state.phase, state.since = "clear", None
        return
    if state.phase == "clear":
        state.phase, state.since = "pending", t
    if (t - state.since).total_seconds() >= float(c.get("hold_s") or 0):
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
        if breached:
            out.repeated(t, v)
        else:
            state.phase, state.since = "clear", None
            out.cleared(t, v)
    elif breached:
        state.phase, state.since = "active", t
        out.raised(t, v)


def _offline(rule: RuleRow, state: PairState, t: datetime, v: float, out: _Outcome) -> None:
    if state.phase == "active":  # data is back
        state.phase, state.since = "clear", None
        out.cleared(t, v)


EVALUATORS = {"threshold": _threshold, "rate": _rate, "offline": _offline}


def _composite_holds(c: dict, values: dict[str, float]) -> bool:
    results = [q["quantity"] in values and OPS[q["op"]](values[q["quantity"]], q["value"])
               for q in c["conditions"]]
    return all(results) if c.get("mode", "all") == "all" else any(results)


_CLEAR = ("clear", None, None)


def _stays_quiet(rule: RuleRow, low: float, high: float) -> bool:
    """True if a clear (rule, sensor) stays clear, with nothing to do, for values in [low, high]."""
    if rule.kind == "offline":
        return True  # readings only matter to an offline rule that is active
    if rule.kind != "threshold":
        return False
    c = rule.condition
    op, value = c["op"], c["value"]
    if op == ">":
        return high <= value
    if op == ">=":
        return high < value
    if op == "<":
        return low >= value
    return low > value


def _persisted(state: PairState) -> tuple:
    return state.phase, state.since, state.memory or None


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
        self._seen: dict[tuple[int, int], datetime] = {}
        self.evaluated = 0
        self.late = 0
        self.raised = 0

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
        pairs = [(rid, sid) for sid in series for rid in by_sensor.get(sid, ())]
        composite_pairs = sorted({p for sid in series for p in watch.get(sid, ())})
        for points in series.values():
            points.sort()
        states = {pair: st for pair, st in store.lock_states(
            conn, list({sid for _, sid in pairs} | {a for _, a in composite_pairs})).items()
            if pair[0] in snapshot.rules}
        before = {pair: _persisted(st) for pair, st in states.items()}
        bounds = {sid: (min(v for _, v in pts), max(v for _, v in pts)) for sid, pts in series.items()}
        for rule_id, sensor_id in pairs:
            rule = snapshot.rules[rule_id]
            pair = (rule_id, sensor_id)
            if pair not in states and _stays_quiet(rule, *bounds[sensor_id]):
                # Clear, and no reading of this batch can change that: nothing to evaluate one by one.
                newest = series[sensor_id][-1][0]
                if self._seen.get(pair) is None or newest > self._seen[pair]:
                    self._seen[pair] = newest
                self.evaluated += len(series[sensor_id])
                continue
            state = states.get(pair) or PairState()
            states[pair] = state
            last = self._newest(pair, state)
            out = _Outcome()
            evaluate = EVALUATORS[rule.kind]
            for t, v in series[sensor_id]:
                if last is not None and t <= last:
                    self.late += 1
                else:
                    state.last_time = last = t
                state.last_value = v
                evaluate(rule, state, t, v, out)
                self.evaluated += 1
            self._seen[pair] = last
            self._apply(conn, rule, sensor_id, out)
        if composite_pairs:
            self._composite(conn, snapshot, composite_pairs, series, states)
        # Only what changes the outcome is written (phase, since, a rate window): a state that
        # stays clear costs no write, so many quiet rules cost little.
        store.save_states(conn, [(pair, st) for pair, st in states.items()
                                 if _persisted(st) != before.get(pair, _CLEAR)])

    def _newest(self, pair: tuple[int, int], state: PairState) -> datetime | None:
        """The newest reading time evaluated for a pair (this process's memory, or the stored one)."""
        seen = self._seen.get(pair)
        if seen is None or (state.last_time is not None and state.last_time > seen):
            return state.last_time
        return seen

    def _composite(self, conn, snapshot: "_Rules", pairs, series, states) -> None:
        members = {sid for rid, anchor in pairs for sid in snapshot.siblings.get(anchor, {}).values()}
        stored = store.latest_values(conn, [m for m in members if m not in series])
        for rule_id, anchor in pairs:
            rule = snapshot.rules[rule_id]
            c = rule.condition
            by_quantity = snapshot.siblings.get(anchor, {})
            state = states.get((rule_id, anchor)) or PairState()
            states[(rule_id, anchor)] = state
            last = self._newest((rule_id, anchor), state)
            events = sorted((t, q, v) for q, sid in by_quantity.items() for t, v in series.get(sid, ()))
            values = {q: stored[sid][1] for q, sid in by_quantity.items() if sid in stored}
            out = _Outcome()
            for t, quantity, v in events:
                values[quantity] = v
                if last is not None and t < last:
                    self.late += 1
                else:
                    state.last_time = last = t
                holds = _composite_holds(c, values)
                first = values.get(c["conditions"][0]["quantity"])
                if state.phase == "active":
                    if holds:
                        out.repeated(t, first)
                    else:
                        state.phase, state.since = "clear", None
                        out.cleared(t, first)
                elif not holds:
                    state.phase, state.since = "clear", None
                else:
                    if state.phase == "clear":
                        state.phase, state.since = "pending", t
                    if (t - state.since).total_seconds() >= float(c.get("hold_s") or 0):
                        state.phase, state.since = "active", t
                        out.raised(t, first)
                self.evaluated += 1
            self._seen[(rule_id, anchor)] = last
            self._apply(conn, rule, anchor, out)

    def _apply(self, conn: psycopg.Connection, rule: RuleRow, sensor_id: int, out: _Outcome) -> None:
        """Raises and clears in reading order; a run of repeats folds into its alert in one update."""
        repeats, last = 0, None
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


def evaluate_offline(conn: psycopg.Connection, *, now: datetime | None = None) -> int:
    """The timer's part: raise offline alerts for matched sensors silent for too long."""
    now = now or datetime.now(timezone.utc)
    with conn.transaction():
        return _evaluate_offline(conn, now)


def _evaluate_offline(conn: psycopg.Connection, now: datetime) -> int:
    rules, matches, _ = store.load_rules(conn)
    offline = {r.id: r for r in rules if r.kind == "offline"}
    pairs = [(rid, sid) for rid, sid in matches if rid in offline]
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
