"""Vendors' MQTT credentials: make (the password is returned once), list, revoke; each change is
audited and then written to the broker (cimtwin/broker_auth.py)."""

from __future__ import annotations

import asyncio
import logging

from psycopg_pool import AsyncConnectionPool

from cimtwin.broker_auth import mosquitto_hash, new_password, sync_broker_auth
from cimtwin.errors import Unavailable
from cimtwin.schemas.mqtt import MqttCredential, MqttCredentialChanged, MqttCredentialCreated
from cimtwin.settings import Settings
from cimtwin.store import mqtt_auth as store

log = logging.getLogger("cimtwin.mqtt_credentials")


def vendor_topics(vendor_code: str) -> list[str]:
    """The topic filters a vendor credential may publish to (the ACL's pattern rules)."""
    return [f"cim/v1/{vendor_code}/#", f"vendors/{vendor_code}/#"]


async def _sync(settings: Settings) -> tuple[bool, str]:
    try:
        result = await asyncio.to_thread(sync_broker_auth, settings)
    except Exception as exc:  # the change is committed; say so, and how to finish it
        log.exception("broker sync failed")
        return False, f"broker sync failed ({type(exc).__name__}: {exc}); run `cimtwin broker-sync`"
    return True, result.note


async def create_credential(*, pool: AsyncConnectionPool, settings: Settings, vendor_code: str, actor: str,
                            replace: bool = False, vendor_id: int | None = None) -> MqttCredentialCreated:
    """Makes the vendor's credential and returns its password, which is stored only hashed.

    A failed broker sync does not lose the password: the answer says ``broker_synced: false``.
    """
    password = new_password()
    credential = await store.create_credential(pool, vendor_code=vendor_code, password_hash=mosquitto_hash(password),
                                               actor=actor, replace=replace, vendor_id=vendor_id)
    synced, note = await _sync(settings)
    return MqttCredentialCreated(**credential.model_dump(), password=password, topics=vendor_topics(vendor_code),
                                 broker_synced=synced, broker_note=note)


async def list_credentials(*, pool: AsyncConnectionPool, vendor_code: str | None = None,
                           vendor_id: int | None = None, include_revoked: bool = True) -> list[MqttCredential]:
    return await store.list_credentials(pool, vendor_code=vendor_code, vendor_id=vendor_id,
                                        include_revoked=include_revoked)


async def revoke_credential(*, pool: AsyncConnectionPool, settings: Settings, vendor_code: str,
                            credential_id: int, actor: str, vendor_id: int | None = None) -> MqttCredentialChanged:
    """Revokes it and has the broker drop it, open connections included. The broker is synced even
    when the credential was revoked already, so repeating a revoke whose sync failed finishes it."""
    credential, _ = await store.revoke_credential(pool, vendor_code=vendor_code, credential_id=credential_id,
                                                  actor=actor, vendor_id=vendor_id)
    synced, note = await _sync(settings)
    if not synced:
        raise Unavailable(f"MQTT credential {credential_id} is revoked in the database, but the broker still "
                          f"accepts it: {note}; repeat the request", code="broker_sync_failed")
    return MqttCredentialChanged(**credential.model_dump(), broker_synced=True, broker_note=note)

