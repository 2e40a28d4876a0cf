"""Keeps an ingest worker's ProfileDecoder in step with the profiles table."""

from __future__ import annotations

from collections.abc import Callable
import logging
import threading
import time

import psycopg
from pydantic import ValidationError

from cimtwin.schemas.profiles import Profile
from cimtwin.store.db import connect
from cimtwin.store.profiles import load_profiles, profiles_generation

from .profiles import CompiledProfile, ProfileDecoder, compile_profile

log = logging.getLogger("cimtwin.ingest")


def compile_rows(rows) -> list[CompiledProfile]:
    """Compile stored profile versions; one that no longer validates is logged and left out."""
    compiled = []
    for profile_id, vendor_code, name, version, document in rows:
        try:
            compiled.append(compile_profile(Profile.model_validate(document), vendor_code=vendor_code,
                                            profile_id=profile_id, version=version))
        except (ValidationError, ValueError) as exc:
            log.error("profile %s/%s version %s does not compile: %s", vendor_code, name, version, exc)
    return compiled


class ProfileSync:
    """Reloads the profiles when their generation counter moves (a profile saved or deleted,
    or devices moved to another version; ``on_change`` then drops cached devices).

    ``maybe_refresh`` costs one single-row query and is called before each batch, so a
    profile a vendor has just saved decodes the very next message. A database that cannot
    be reached keeps the profiles already loaded.
    """

    def __init__(self, url: str, decoder: ProfileDecoder, *, application_name: str, min_interval_s: float = 0.05,
                 on_change: Callable[[], None] | None = None):
        self._url = url
        self._on_change = on_change
        self._application_name = application_name
        self.decoder = decoder
        self._min_interval_s = min_interval_s
        self._generation: int | None = None
        self._checked = 0.0
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._min_interval_s:
            return
        with self._lock:
            self._checked = now
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = connect(self._url, application_name=self._application_name)
                generation = profiles_generation(self._conn)
                if generation != self._generation:
                    profiles = compile_rows(load_profiles(self._conn))
                    self.decoder.replace(profiles)
                    if self._on_change is not None and self._generation is not None:
                        self._on_change()  # e.g. devices moved to another version
                    self._generation = generation
                    log.info("loaded %d profile version(s)", len(profiles))
            except psycopg.Error as exc:
                log.warning("could not refresh profiles (%s); keeping the loaded ones", exc)
                self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
