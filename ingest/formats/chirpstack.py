"""ChirpStack uplink events, v3 and v4 field names.

=========================  =================================  ==========================================
reading                    v4                                 v3
=========================  =================================  ==========================================
device id (DevEUI)         deviceInfo.devEui (hex)            devEUI (hex, or base64 with json_v3)
decoded fields             object                             object, or objectJSON (a JSON string)
lora_frame_counter         fCnt                               fCnt
lora_frame_port            fPort                              fPort
lora_frequency             txInfo.frequency                   txInfo.frequency
lora_spreading_factor      txInfo.modulation.lora.            txInfo.loRaModulationInfo.spreadingFactor
                           spreadingFactor                    (older: txInfo.dataRate.spreadingFactor)
lora_rssi, lora_snr        rxInfo[].rssi, rxInfo[].snr        rxInfo[].rssi, rxInfo[].loRaSNR
time                       time                               rxInfo[].time
=========================  =================================  ==========================================

With several gateways, rssi and snr come from the one with the strongest RSSI (the first of
equals), as the ThingsBoard ChirpStack converters report them.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from pydantic_core import from_json

from . import FormatError

_HEX_EUI = re.compile(r"^[0-9A-Fa-f]{16}$")
_NUMBER = (int, float)


def with_object(envelope: Any) -> dict:
    """The envelope, with a v3 ``objectJSON`` string also readable as ``object``."""
    if type(envelope) is not dict:
        raise FormatError("invalid_payload", "", "a ChirpStack uplink is a JSON object")
    if "object" not in envelope:
        text = envelope.get("objectJSON")
        if isinstance(text, str) and text:
            try:
                envelope["object"] = from_json(text, allow_inf_nan=False)
            except ValueError as exc:
                raise FormatError("invalid_payload", "/objectJSON", f"objectJSON is not JSON: {exc}") from None
    return envelope


def dev_eui(envelope: dict) -> str | None:
    """The DevEUI as 16 lower-case hex digits, or None if the envelope has none."""
    info = envelope.get("deviceInfo")
    raw = info.get("devEui") if type(info) is dict else None
    if raw is None:
        raw = envelope.get("devEUI")
    if not isinstance(raw, str) or not raw:
        return None
    if _HEX_EUI.match(raw):
        return raw.lower()
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.hex() if len(decoded) == 8 else None


def best_gateway(envelope: dict) -> tuple[int, dict] | None:
    """(index, rxInfo entry) of the gateway with the strongest RSSI; the first of equals."""
    rx = envelope.get("rxInfo")
    if type(rx) is not list:
        return None
    best = None
    for i, gw in enumerate(rx):
        if type(gw) is not dict:
            continue
        rssi = gw.get("rssi")
        if type(rssi) not in _NUMBER:
            continue
        if best is None or rssi > best[1]["rssi"]:
            best = (i, gw)
    return best


def envelope_time(envelope: dict) -> tuple[str, str] | None:
    """(path, ISO 8601 text) of the uplink's time: v4 ``time``, else the first gateway time."""
    t = envelope.get("time")
    if isinstance(t, str) and t:
        return "/time", t
    rx = envelope.get("rxInfo")
    if type(rx) is list:
        for i, gw in enumerate(rx):
            if type(gw) is dict:
                for key in ("time", "gwTime", "nsTime"):
                    t = gw.get(key)
                    if isinstance(t, str) and t:
                        return f"/rxInfo/{i}/{key}", t
    return None


def radio_metadata(envelope: dict) -> list[tuple[str, str, Any]]:
    """``[(channel, path, raw value), …]`` for the metadata the envelope has."""
    out: list[tuple[str, str, Any]] = []
    if "fCnt" in envelope:
        out.append(("lora_frame_counter", "/fCnt", envelope["fCnt"]))
    if "fPort" in envelope:
        out.append(("lora_frame_port", "/fPort", envelope["fPort"]))
    tx = envelope.get("txInfo")
    if type(tx) is dict:
        if "frequency" in tx:
            out.append(("lora_frequency", "/txInfo/frequency", tx["frequency"]))
        sf = None
        modulation = tx.get("modulation")
        if type(modulation) is dict and type(modulation.get("lora")) is dict and "spreadingFactor" in modulation["lora"]:
            sf = ("/txInfo/modulation/lora/spreadingFactor", modulation["lora"]["spreadingFactor"])
        else:
            for key in ("loRaModulationInfo", "dataRate"):
                info = tx.get(key)
                if type(info) is dict and "spreadingFactor" in info:
                    sf = (f"/txInfo/{key}/spreadingFactor", info["spreadingFactor"])
                    break
        if sf is not None:
            out.append(("lora_spreading_factor", *sf))
    best = best_gateway(envelope)
    if best is not None:
        i, gw = best
        out.append(("lora_rssi", f"/rxInfo/{i}/rssi", gw["rssi"]))
        for key in ("snr", "loRaSNR"):
            if key in gw:
                out.append(("lora_snr", f"/rxInfo/{i}/{key}", gw[key]))
                break
    return out
