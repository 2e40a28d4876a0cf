"""Replays dead letters through the ingest pipeline, after a profile or registry fix.

Each letter is decoded and normalized exactly as a live message would be (current
profiles, the device's pinned version, range and time checks). Readings go through the
writer's conflict-safe path, and the letters are marked in the same transaction, so a
letter replayed twice (or at once by two callers) is stored once. The alert engine
evaluates the replayed readings like live ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from cimtwin.settings import Settings
from cimtwin.store.dead_letters import StoredLetter, letters_to_replay
from cimtwin.store.db import connect
from cimtwin.store.writer import DeviceLookup, ReadingWriter, ReplayOutcome
from cimtwin.twin.alerting import AlertEngine

from .decoders import CanonicalDecoder
from .normalize import DeviceDirectory, Normalizer, RawMessage
from .profile_sync import ProfileSync
from .profiles import ProfileDecoder


@dataclass(frozen=True, slots=True)
class ReplayResult:
    id: int
    stored: bool
    readings: int
    reason: str | None


def replay(settings: Settings, letters: list[StoredLetter]) -> list[ReplayResult]:
    if not letters:
        return []
    app = "cimtwin-replay"
    lookup = DeviceLookup(settings.database_url, application_name=app)
    alerts = AlertEngine(settings.database_url, application_name=app)  # replayed readings are evaluated too
    writer = ReadingWriter(settings.database_url, application_name=app, on_inserted=alerts)
    profiles = ProfileSync(settings.database_url, ProfileDecoder(()), application_name=app)
    try:
        profiles.maybe_refresh()
        alerts.maybe_refresh()
        normalizer = Normalizer(DeviceDirectory(lookup, ttl_s=0.0),
                                max_payload_bytes=settings.ingest_max_payload_bytes,
                                max_future_s=settings.ingest_max_future_s,
                                decoders=(CanonicalDecoder(), profiles.decoder))
        rows, outcomes, results = [], [], []
        for letter in letters:
            out = normalizer.normalize([RawMessage(letter.topic, letter.payload, letter.received_at)])
            reason = "; ".join(d.reason for d in out.dead_letters) or None
            stored = bool(out.rows)
            rows += out.rows
            outcomes.append(ReplayOutcome(letter.id, stored, reason))
            results.append(ReplayResult(letter.id, stored, len(out.rows), reason))
        # The writer's safe path: a reading stored already (an earlier replay) is skipped.
        writer.write(rows, replays=outcomes)
        return results
    finally:
        writer.close()
        lookup.close()
        profiles.close()
        alerts.close()


def replay_selected(settings: Settings, *, vendor: str | None, ids: list[int] | None, reason_code: str | None,
                    device: str | None, since, until, limit: int) -> list[ReplayResult]:
    """Choose the unreplayed letters (scoped to ``vendor`` when given) and replay them."""
    with connect(settings.database_url, application_name="cimtwin-replay") as conn:
        letters = letters_to_replay(conn, vendor=vendor, ids=ids, reason_code=reason_code, device=device,
                                    since=since, until=until, limit=limit)
    return replay(settings, letters)
