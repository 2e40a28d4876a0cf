"""Built-in payload formats (SenML, UltraLight 2.0, ChirpStack) and the binary decoder plug-in point.

A device whose payload is binary needs a decoder for its model. Plug one in by adding it to
:data:`BINARY_DECODERS` under the name a ``format: binary`` profile gives in ``decoder``; until
then its messages are dead letters with reason ``no_decoder`` ("no decoder for model <name>").
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


class FormatError(Exception):
    """A payload a format cannot read: a reason code, the path of the problem and a message."""

    def __init__(self, reason_code: str, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.reason_code = reason_code
        self.path = path
        self.message = message


@runtime_checkable
class BinaryDecoder(Protocol):
    """Turns one binary payload into fields, which the profile's channel paths then read."""

    def decode(self, payload: bytes) -> dict[str, Any]: ...


# decoder name (the device model) -> decoder
BINARY_DECODERS: dict[str, BinaryDecoder] = {}

__all__ = ["BINARY_DECODERS", "BinaryDecoder", "FormatError"]
