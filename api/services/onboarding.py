"""Vendor onboarding: profiles and their versions, dry runs, pending devices, bulk device
import and dead-letter replay. Keyword-only functions; errors are cimtwin.errors."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from typing import Any

import anyio
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from cimtwin.api.auth import Principal
from cimtwin.errors import BadRequest, InvalidDocument, NotFound
from cimtwin.geo.crs import parse_crs, transform_xy
from cimtwin.ingest.profiles import compile_profile, dry_run as profile_dry_run
from cimtwin.ingest.replay import ReplayResult, replay_selected
from cimtwin.schemas.access import Role
from cimtwin.schemas.onboarding import (DeviceImportOut, DeviceRow, DryRunIn, DryRunOut, ImportRowError,
                                        OnboardIn, OnboardOut, ProfileMoveIn, ProfileMoveOut, ProfileVersion,
                                        ReplayIn, ReplayOut, parse_profile_ref)
from cimtwin.schemas.profiles import Profile, ProfileDocumentError, load_profile_document
from cimtwin.schemas.registry import SensorIn
from cimtwin.schemas.units import CANONICAL_UNITS
from cimtwin.settings import Settings
from cimtwin.store import onboarding as onboarding_store
from cimtwin.store import profiles as store


def _json_pointer(loc: tuple) -> str:
    return "/" + "/".join(str(p) for p in loc) if loc else "/"


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [{"path": _json_pointer(e["loc"]), "message": e["msg"]} for e in exc.errors(include_url=False)]


def parse_profile(text: str | bytes, *, vendor: str) -> tuple[Profile, dict[str, Any]]:
    """Validate a profile document (YAML or JSON) for ``vendor``; 422 listing every error by path."""
    try:
        profile = load_profile_document(text)
        compile_profile(profile, vendor_code=vendor)
    except ProfileDocumentError as exc:
        raise InvalidDocument(f"the profile is invalid: {exc}", code="invalid_profile", errors=exc.errors) from None
    except ValueError as exc:
        raise InvalidDocument(f"the profile is invalid: {exc}", code="invalid_profile",
                              errors=[{"path": "/topic", "message": str(exc)}]) from None
    return profile, profile.model_dump(mode="json", exclude_unset=True)


async def create_profile(*, pool: AsyncConnectionPool, principal: Principal, vendor: str,
                         text: str | bytes) -> ProfileVersion:
    principal.ensure_vendor(vendor)
    profile, document = parse_profile(text, vendor=vendor)
    row = await store.create_version(pool, vendor=vendor, scope=principal.vendor_scope, name=profile.name,
                                     format=profile.format, topic=profile.topic, document=document,
                                     actor=principal.actor)
    return ProfileVersion(**row)


async def list_profiles(*, pool: AsyncConnectionPool, principal: Principal, vendor: str,
                        name: str | None = None) -> list[ProfileVersion]:
    rows = await store.list_profiles(pool, vendor=vendor, scope=principal.vendor_scope, name=name)
    return [ProfileVersion(**r) for r in rows]


async def get_profile(*, pool: AsyncConnectionPool, principal: Principal, vendor: str, name: str,
                      version: int | None) -> ProfileVersion:
    return ProfileVersion(**await store.get_profile(pool, vendor=vendor, scope=principal.vendor_scope, name=name,
                                                    version=version))


async def delete_profile_version(*, pool: AsyncConnectionPool, principal: Principal, vendor: str, name: str,
                                 version: int) -> None:
    principal.ensure_vendor(vendor)
    await store.delete_version(pool, vendor=vendor, scope=principal.vendor_scope, name=name, version=version,
                               actor=principal.actor)


async def move_devices(*, pool: AsyncConnectionPool, principal: Principal, vendor: str, name: str,
                       body: ProfileMoveIn) -> ProfileMoveOut:
    principal.ensure_vendor(vendor)
    result = await store.move_devices(pool, vendor=vendor, scope=principal.vendor_scope, name=name,
                                      version=body.version, device_ext_ids=body.devices,
                                      from_version=body.from_version, actor=principal.actor)
    return ProfileMoveOut(profile=ProfileVersion(**result["profile"]), moved=result["moved"])


def _payload_bytes(body: DryRunIn) -> bytes:
    if body.payload_base64 is not None:
        try:
            return base64.b64decode(body.payload_base64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("payload_base64 is not valid base64", code="invalid_payload") from None
    if body.payload is not None:
        return body.payload.encode()
    return json.dumps(body.payload_json).encode()


async def dry_run(*, pool: AsyncConnectionPool, principal: Principal, vendor: str, body: DryRunIn) -> DryRunOut:
    """Decode a sample message; nothing is stored."""
    principal.ensure_vendor(vendor)
    used = None
    if body.document is not None:
        profile, _ = parse_profile(json.dumps(body.document), vendor=vendor)
    else:
        name, version = parse_profile_ref(body.profile)
        row = await store.get_profile(pool, vendor=vendor, scope=principal.vendor_scope, name=name, version=version)
        profile, used = Profile.model_validate(row["document"]), f"{row['name']}@{row['version']}"
    result = profile_dry_run(profile, vendor_code=vendor, topic=body.topic, payload=_payload_bytes(body))
    return DryRunOut(ok=not result["errors"], profile=used, **result)


def _replay_out(results: list[ReplayResult]) -> ReplayOut:
    items = [{"id": r.id, "stored": r.stored, "readings": r.readings, "reason": r.reason} for r in results]
    stored = sum(r.stored for r in results)
    return ReplayOut(replayed=len(results), stored=stored, still_failing=len(results) - stored,
                     readings=sum(r.readings for r in results), items=items)


async def replay_dead_letters(*, pool: AsyncConnectionPool, settings: Settings, principal: Principal,
                              vendor: str | None, body: ReplayIn) -> ReplayOut:
    """Replay unreplayed dead letters of ``vendor`` (staff may leave it out: any vendor)."""
    if vendor is not None:
        principal.ensure_vendor(vendor)
        async with pool.connection() as conn:
            await store.vendor_id(conn, vendor, scope=principal.vendor_scope)
    elif principal.role == Role.vendor:
        vendor = principal.vendor_code
    results = await anyio.to_thread.run_sync(lambda: replay_selected(
        settings, vendor=vendor, ids=body.ids, reason_code=body.reason_code, device=body.device,
        since=body.since, until=body.until, limit=body.limit))
    return _replay_out(results)


def _canonical_sensors(payload: bytes) -> list[SensorIn]:
    """Sensors for a canonical message's channels whose name is a known quantity."""
    try:
        readings = json.loads(payload).get("readings") or []
        channels = sorted({r["channel"] for r in readings})
    except (ValueError, AttributeError, TypeError, KeyError):
        channels = []
    unknown = [c for c in channels if c not in CANONICAL_UNITS]
    if not channels or unknown:
        raise InvalidDocument(
            "give the device's sensors: its last message's channel(s) "
            f"{', '.join(map(repr, unknown or channels)) or '(none)'} are not known quantities",
            code="sensors_required", errors=[{"path": "/sensors", "message": "required for this device"}])
    return [SensorIn(channel=c, quantity=c, unit=CANONICAL_UNITS[c]) for c in channels]


async def onboard_pending(*, pool: AsyncConnectionPool, settings: Settings, principal: Principal, vendor: str,
                          ext_id: str, body: OnboardIn) -> OnboardOut:
    principal.ensure_vendor(vendor)
    scope = principal.vendor_scope
    pending = await onboarding_store.pending_device(pool, vendor=vendor, ext_id=ext_id, scope=scope)
    profile_row = None
    if body.profile is not None:
        name, version = parse_profile_ref(body.profile)
        profile_row = await store.get_profile(pool, vendor=vendor, scope=scope, name=name, version=version)
    elif pending["profile_id"] is not None:
        profile_row = await onboarding_store.profile_by_id(pool, profile_id=pending["profile_id"])
    if body.sensors is not None:
        sensors = body.sensors
    elif profile_row is not None:
        sensors = _profile_sensors(profile_row, vendor=vendor, sample=(pending["last_topic"], pending["last_payload"]))
    else:
        sensors = _canonical_sensors(pending["last_payload"])
    device_id = await onboarding_store.register_devices(
        pool, vendor=vendor, scope=scope, actor=principal.actor,
        devices=[onboarding_store.NewDevice(ext_id=ext_id, name=body.name, model=body.model,
                                            profile_id=profile_row["id"] if profile_row else None,
                                            sensors=sensors)])
    replayed = None
    if body.replay:
        results = await anyio.to_thread.run_sync(lambda: replay_selected(
            settings, vendor=vendor, ids=None, reason_code=None, device=ext_id, since=None, until=None,
            limit=1000))
        replayed = _replay_out(results)
    return OnboardOut(device_id=device_id[0].device_id, ext_id=ext_id,
                      profile=f"{profile_row['name']}@{profile_row['version']}" if profile_row else None,
                      sensors=[s.channel for s in sensors], replay=replayed)


def _profile_sensors(row: dict, *, vendor: str, sample: tuple[str, bytes] | None = None) -> list[SensorIn]:
    """The profile's declared channels, plus those a sample message yields that it does not
    declare (SenML records, or undeclared fields the profile takes in)."""
    profile = Profile.model_validate(row["document"])
    compiled = compile_profile(profile, vendor_code=vendor, profile_id=row["id"], version=row["version"])
    sensors = {s["channel"]: SensorIn(**s) for s in compiled.sensors()}
    if sample is not None:
        for r in profile_dry_run(profile, vendor_code=vendor, topic=sample[0], payload=sample[1])["readings"]:
            if r["channel"] not in sensors and r.get("quantity") and r.get("unit"):
                sensors[r["channel"]] = SensorIn(channel=r["channel"], quantity=r["quantity"], unit=r["unit"])
    if not sensors:
        raise InvalidDocument(f"profile {row['name']!r} declares no channels and no sample message names any; "
                              "give the device's sensors", code="sensors_required",
                              errors=[{"path": "/sensors", "message": "required for this device"}])
    return list(sensors.values())


# --- bulk import -------------------------------------------------------------------------------

def _rows_from_csv(data: bytes) -> list[dict[str, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest("the CSV is not UTF-8", code="invalid_file") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "ext_id" not in reader.fieldnames:
        raise BadRequest("the CSV needs a header row with at least an ext_id column", code="invalid_file")
    return [{k.strip(): (v.strip() if isinstance(v, str) and v.strip() else None)
             for k, v in row.items() if k is not None} for row in reader]


def _rows_from_geojson(data: bytes, *, crs: str | None) -> tuple[list[dict[str, Any]], list[ImportRowError]]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise BadRequest(f"the GeoJSON is not valid JSON: {exc}", code="invalid_file") from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
        raise BadRequest("the GeoJSON must be a FeatureCollection", code="invalid_file")
    src = parse_crs(crs) if crs else None
    rows, errors = [], []
    for i, feature in enumerate(doc["features"], start=1):
        props = dict((feature or {}).get("properties") or {})
        geometry = (feature or {}).get("geometry")
        if geometry is not None:
            coords = geometry.get("coordinates") if isinstance(geometry, dict) else None
            if geometry.get("type") != "Point" or not isinstance(coords, list) or len(coords) < 2:
                errors.append(ImportRowError(row=i, ext_id=props.get("ext_id"),
                                             errors=["geometry: a device location must be a Point"]))
                rows.append(None)
                continue
            x, y = float(coords[0]), float(coords[1])
            if src is not None:
                x, y = transform_xy(x, y, src=src, dst="EPSG:4326")
            props["lon"], props["lat"] = float(x), float(y)
        rows.append(props)
    return rows, errors


async def import_devices(*, pool: AsyncConnectionPool, principal: Principal, vendor: str, data: bytes,
                         media_type: str, crs: str | None, dry_run: bool) -> DeviceImportOut:
    """Register or update many devices; every rejected row is reported with its reasons."""
    principal.ensure_vendor(vendor)
    scope = principal.vendor_scope
    geojson = "json" in media_type
    src = parse_crs(crs) if crs else None
    if geojson:
        raw_rows, rejected = _rows_from_geojson(data, crs=crs)
    else:
        raw_rows, rejected = _rows_from_csv(data), []
    valid: list[tuple[int, DeviceRow]] = []
    for i, raw in enumerate(raw_rows, start=1):
        if raw is None:
            continue
        try:
            row = DeviceRow.model_validate(raw)
        except ValidationError as exc:
            rejected.append(ImportRowError(row=i, ext_id=raw.get("ext_id"), errors=[
                f"{e['path'].lstrip('/') or 'row'}: {e['message']}" for e in validation_errors(exc)]))
            continue
        if not geojson and src is not None and row.lon is not None:
            x, y = transform_xy(row.lon, row.lat, src=src, dst="EPSG:4326")
            row = row.model_copy(update={"lon": float(x), "lat": float(y)})
        valid.append((i, row))
    seen: dict[str, int] = {}
    for i, row in list(valid):
        if row.ext_id in seen:
            rejected.append(ImportRowError(row=i, ext_id=row.ext_id,
                                           errors=[f"ext_id: also on row {seen[row.ext_id]}"]))
            valid.remove((i, row))
        else:
            seen[row.ext_id] = i

    # Profiles, and the places named, checked in bulk.
    refs = {r.profile for _, r in valid if r.profile}
    profiles: dict[str, dict] = {}
    for ref in refs:
        name, version = parse_profile_ref(ref)
        try:
            profiles[ref] = await store.get_profile(pool, vendor=vendor, scope=scope, name=name, version=version)
        except NotFound as exc:
            if exc.code == "vendor_not_found":
                raise
    missing_places = await onboarding_store.missing_places(
        pool, buildings={r.building_id for _, r in valid if r.building_id},
        rooms={r.room_id for _, r in valid if r.room_id},
        components={r.component_id for _, r in valid if r.component_id})
    devices = []
    for i, row in valid:
        errors = []
        if row.profile and row.profile not in profiles:
            errors.append(f"profile: vendor {vendor!r} has no profile {row.profile!r}")
        for kind, value in (("building", row.building_id), ("room", row.room_id), ("component", row.component_id)):
            if value is not None and (kind, value) in missing_places:
                errors.append(f"{kind}_id: {kind} {value} does not exist")
        if errors:
            rejected.append(ImportRowError(row=i, ext_id=row.ext_id, errors=errors))
            continue
        profile_row = profiles.get(row.profile) if row.profile else None
        sensors = row.channels or _profile_sensors(profile_row, vendor=vendor)
        devices.append(onboarding_store.NewDevice(
            ext_id=row.ext_id, name=row.name, model=row.model, sensors=sensors,
            profile_id=profile_row["id"] if profile_row else None,
            building_id=row.building_id, room_id=row.room_id, component_id=row.component_id,
            lon=row.lon, lat=row.lat))
    created = updated = 0
    if devices and not dry_run:
        results = await onboarding_store.register_devices(pool, vendor=vendor, scope=scope, actor=principal.actor,
                                                          devices=devices)
        created = sum(r.created for r in results)
        updated = len(results) - created
    elif devices:
        existing = await onboarding_store.existing_devices(pool, vendor=vendor, scope=scope,
                                                           ext_ids=[d.ext_id for d in devices])
        updated = len(existing)
        created = len(devices) - updated
    rejected.sort(key=lambda r: r.row)
    return DeviceImportOut(dry_run=dry_run, rows=len(raw_rows), created=created, updated=updated,
                           rejected=rejected, format="geojson" if geojson else "csv")
