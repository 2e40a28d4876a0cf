"""Keeps an ingest worker's ProfileDecoder in step with the profiles table."""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg
from pydantic import ValidationError

from cimtwin.schemas.profiles import Profile
from cimtwin.store.profiles import load_profiles, profiles_generation
from cimtwin.store.watch import GenerationWatch

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
    or devices moved to another version; ``on_change`` then drops cached devices). Before
    each batch, so a profile a vendor has just saved decodes the very next message."""

    def __init__(self, url: str, decoder: ProfileDecoder, *, application_name: str,
                 on_change: Callable[[], None] | None = None):
        self.decoder = decoder
        self._on_change = on_change
        self._watch = GenerationWatch(url, application_name=application_name, what="profiles",
                                      generation=profiles_generation, load=self._load)

    def _load(self, conn: psycopg.Connection) -> None:
        profiles = compile_rows(load_profiles(conn))
        self.decoder.replace(profiles)
        if self._on_change is not None and self._watch.generation is not None:
            self._on_change()  # e.g. devices moved to another version
        log.info("loaded %d profile version(s)", len(profiles))

    def maybe_refresh(self) -> None:
        self._watch.maybe_refresh()

    def close(self) -> None:
        self._watch.close()
