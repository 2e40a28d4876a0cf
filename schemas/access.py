"""API keys, roles and the audit log."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .registry import VendorCode


class Role(StrEnum):
    """What a key may do; the matrix is in the README ("Access")."""

    admin = "admin"        # everything, including keys, vendors and the audit log
    operator = "operator"  # read everything; write block data and places
    analyst = "analyst"    # read block data, spatial, OGC, tiles, readings and the registry
    vendor = "vendor"      # only its own vendor's devices, sensors, readings, dead letters


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200, description="what the key is for, e.g. 'qgis desk 3'")]
    role: Role
    vendor: VendorCode | None = Field(default=None, description="the vendor's code; required for, and only for, "
                                                                "role vendor")

    @model_validator(mode="after")
    def _vendor_iff_vendor_role(self) -> "ApiKeyIn":
        if self.role == Role.vendor and self.vendor is None:
            raise ValueError("a vendor key needs `vendor` (the vendor's code)")
        if self.role != Role.vendor and self.vendor is not None:
            raise ValueError(f"`vendor` applies only to role vendor, not {self.role.value}")
        return self


class ApiKey(BaseModel):
    id: int
    name: str
    role: Role
    vendor: str | None = Field(description="the vendor's code (vendor keys)")
    prefix: str = Field(description="the key's public part: keys look like cimtwin_<prefix>_<secret>")
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="updated at most once a minute")


class ApiKeyCreated(ApiKey):
    key: str = Field(description="the key itself; shown only this once, never stored")


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="key:<id>:<name>, admin-setting, anonymous or cli:<user>")
    action: str = Field(examples=["api_key.create"])
    target: str = Field(examples=["api_key:7"])
    detail: dict[str, Any]
