"""The alerts timer (`cimtwin alerts-timer`): the alert work that no reading triggers.

Every few seconds it runs each task of ``TIMER_TASKS`` in turn, with one synchronous
autocommit connection (the offline rules and their sensors are kept between ticks and
reloaded only when rules or sensors change: ``timer_tasks``). A task is
``fn(conn, *, now) -> int`` (how many alerts it changed); it opens its own transactions
(``with conn.transaction()``), so it also runs inside a caller's transaction (then as
savepoints). Tasks must be safe with several timers running: lock what they change with
``FOR UPDATE SKIP LOCKED`` (see store.alerts.escalate_due).

A failing task is logged and retried on the next tick; the other tasks still run. A lost
database connection is reopened on the next tick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone

import psycopg

from cimtwin.settings import Settings
from cimtwin.store.alerts import escalate_due
from cimtwin.store.db import connect

from .alerting import OfflineRules, evaluate_offline

log = logging.getLogger("cimtwin.alerts_timer")

TimerTask = Callable[..., int]

#: Run in this order on every tick. Offline rules: sensors silent for too long get an alert.
#: Escalation: open alerts past their acknowledge SLA go one level up their dispatch chain.
#: (``evaluate_offline`` here loads the rules on each call; ``timer_tasks`` keeps them.)
TIMER_TASKS: list[TimerTask] = [evaluate_offline, escalate_due]


def timer_tasks(database_url: str) -> list[TimerTask]:
    """TIMER_TASKS for a long-running timer: the offline rules and their sensors are kept between
    ticks and reloaded only when rules or sensors change. Close them with :func:`close_tasks`."""
    return [OfflineRules(database_url) if task is evaluate_offline else task for task in TIMER_TASKS]


def close_tasks(tasks: list[TimerTask]) -> None:
    for task in tasks:
        close = getattr(task, "close", None)
        if close is not None:
            close()


def run_once(conn: psycopg.Connection, *, now: datetime | None = None,
             tasks: list[TimerTask] | None = None) -> dict[str, int]:
    """One tick: every task once; returns {task name: alerts changed} (failed tasks: -1)."""
    now = now or datetime.now(timezone.utc)
    done: dict[str, int] = {}
    for task in TIMER_TASKS if tasks is None else tasks:
        name = getattr(task, "__name__", repr(task))
        try:
            done[name] = int(task(conn, now=now) or 0)
        except psycopg.OperationalError:
            raise  # the connection is gone: the caller reconnects
        except Exception:
            log.exception("alerts timer task %s failed; retried on the next tick", name)
            done[name] = -1
    return done


def run(settings: Settings, *, every: float, stop: threading.Event | None = None, once: bool = False) -> None:
    """Ticks every ``every`` seconds until ``stop`` is set (or once)."""
    stop = stop or threading.Event()
    conn: psycopg.Connection | None = None
    tasks = timer_tasks(settings.database_url)
    while True:
        try:
            if conn is None or conn.closed:
                conn = connect(settings.database_url, application_name="cimtwin-alerts-timer", autocommit=True)
            done = run_once(conn, tasks=tasks)
            for name, count in done.items():
                if count > 0:
                    log.info("%s: %d alert(s)", name, count)
        except psycopg.OperationalError as exc:
            log.warning("alerts timer: database unavailable (%s); retrying", exc)
            if conn is not None:
                conn.close()
            conn = None
        if once or stop.wait(every):
            break
    close_tasks(tasks)
    if conn is not None:
        conn.close()
