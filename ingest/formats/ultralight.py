"""FIWARE UltraLight 2.0 measures: ``t|25|h|40``, groups joined by ``#``, optional leading timestamp.

The syntax follows the FIWARE IoT Agent for UltraLight (its user manual and ``ulParser``):
a group is ``key|value`` pairs separated by ``|``; a leading ``|`` is ignored; a group with an
odd number of fields starts with its timestamp (ISO 8601, ``2016-06-13T00:35:30Z|lle|100``);
empty keys or values are errors; values are untyped text. ``device@command|…`` is a command
(or command result), not measures, and is rejected here.
"""

from __future__ import annotations

from . import FormatError

Group = tuple[str | None, list[tuple[str, str]]]


def parse(payload: bytes | str) -> list[Group]:
    """``[(timestamp or None, [(key, value), …]), …]``, one per measure group."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError("invalid_payload", "", f"UltraLight payload is not UTF-8 text: {exc}") from None
    text = payload.strip()
    if not text:
        raise FormatError("invalid_payload", "", "empty UltraLight payload")
    groups: list[Group] = []
    for g, group in enumerate(text.split("#")):
        if group[:1] == "|":
            group = group[1:]
        fields = group.split("|")
        if "@" in fields[0]:
            raise FormatError("invalid_payload", f"/{g}",
                              f"group {g} {group[:60]!r} is a command (device@command|…), not measures")
        stamp = None
        if len(fields) % 2 == 1:
            stamp, fields = fields[0], fields[1:]
        if not fields:
            raise FormatError("invalid_payload", f"/{g}", f"group {g} {group[:60]!r} has no key|value measures")
        if "" in fields or stamp == "":
            raise FormatError("invalid_payload", f"/{g}",
                              f"group {g} {group[:60]!r} has an empty key or value (\"||\" or a trailing \"|\")")
        groups.append((stamp, list(zip(fields[0::2], fields[1::2]))))
    return groups
