"""Reloading what a long-running process caches from the database when it changes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from .db import connect

log = logging.getLogger("cimtwin.store")


class GenerationWatch:
    """Calls ``load(conn)`` whenever ``generation(conn)`` (a counter that triggers move) changes.

    ``maybe_refresh`` costs one single-row query (one round trip: the connection is in
    autocommit), at most every ``min_interval_s``, so it can run before every ingest batch: a
    change committed a moment ago is in effect for the next batch. A database that cannot be
    reached keeps what was loaded; the next call reconnects. Thread-safe.
    """

    def __init__(self, url: str, *, application_name: str, what: str,
                 generation: Callable[[psycopg.Connection], int], load: Callable[[psycopg.Connection], None],
                 min_interval_s: float = 0.05):
        self._url = url
        self._application_name = application_name
        self._what = what
        self._generation_of = generation
        self._load = load
        self._min_interval_s = min_interval_s
        self.generation: int | None = None
        self._checked = 0.0
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def maybe_refresh(self) -> bool:
        """True if it (re)loaded."""
        now = time.monotonic()
        if now - self._checked < self._min_interval_s:
            return False
        with self._lock:
            self._checked = now
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = connect(self._url, application_name=self._application_name, autocommit=True)
                generation = self._generation_of(self._conn)
                changed = generation != self.generation
                if changed:
                    with self._conn.transaction():
                        self._load(self._conn)
                    self.generation = generation
                return changed
            except psycopg.Error as exc:
                log.warning("could not refresh %s (%s); keeping the loaded ones", self._what, exc)
                self.close()
                return False

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
