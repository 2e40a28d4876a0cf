"""Vendors' MQTT credentials (enforced by the broker; see cimtwin/broker_auth.py)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class MqttCredentialIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replace: bool = Field(default=False, description="revoke the vendor's active credential and make a new one "
                                                     "(devices on the old password are cut off at once)")


class MqttCredential(BaseModel):
    id: int
    vendor: str = Field(description="the vendor's code")
    username: str = Field(description="the MQTT username: the vendor's code")
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revoked_by: str | None


class MqttCredentialChanged(MqttCredential):
    broker_synced: bool = Field(description="whether the broker's password file now says the same")
    broker_note: str = Field(description="what the broker sync did")


class MqttCredentialCreated(MqttCredentialChanged):
    password: str = Field(description="the MQTT password; shown only this once, never stored")
    topics: list[str] = Field(description="the topic filters this credential may publish to")
