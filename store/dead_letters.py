"""Dead letters chosen for replay (synchronous; the replay runs the ingest pipeline)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg


@dataclass(frozen=True, slots=True)
class StoredLetter:
    id: int
    topic: str
    payload: bytes
    received_at: datetime


def letters_to_replay(conn: psycopg.Connection, *, vendor: str | None, ids: list[int] | None,
                      reason_code: str | None, device: str | None, since: datetime | None,
                      until: datetime | None, limit: int) -> list[StoredLetter]:
    """Unreplayed dead letters of ``vendor`` (any vendor when None), oldest first.

    The original receive time is kept, so a reading timed by arrival gets the time it
    would have had. A letter stands for ``occurrences`` identical messages; one is replayed.
    """
    rows = conn.execute(
        """SELECT id, topic, payload, first_received_at FROM (
               SELECT * FROM dead_letters
               WHERE replayed_at IS NULL
                 AND (%(vendor)s::text IS NULL OR vendor_code = %(vendor)s)
                 AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s))
                 AND (%(reason)s::text IS NULL OR reason_code = %(reason)s)
                 AND (%(device)s::text IS NULL OR device_ext_id = %(device)s)
                 AND (%(since)s::timestamptz IS NULL OR last_received_at >= %(since)s)
                 AND (%(until)s::timestamptz IS NULL OR last_received_at < %(until)s)
               ORDER BY last_received_at DESC LIMIT %(limit)s) newest
           ORDER BY first_received_at, id""",
        {"vendor": vendor, "ids": ids, "reason": reason_code, "device": device, "since": since,
         "until": until, "limit": limit}).fetchall()
    conn.rollback()
    return [StoredLetter(*r) for r in rows]
