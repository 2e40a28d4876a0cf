"""Who is calling, and may they: API keys, roles, and the FastAPI dependencies that check them.

A key comes in one of three ways, the first found wins:

- ``Authorization: Bearer <key>``
- ``X-API-Key: <key>``
- ``?api_key=<key>``, for clients that cannot set headers (map tiles, some GDAL/QGIS setups).
  A key in the URL ends up in access logs and browser history: prefer a header.

``CIMTWIN_ADMIN_API_KEY``, when set, is an admin key too. ``CIMTWIN_AUTH_ANONYMOUS_ROLE`` gives
requests without any key a role (analyst or operator); a key that is given but wrong is still a 401.

Route dependencies: ``Depends(require(Role.admin, Role.vendor))`` gives the handler the
``Principal``; scope store queries with ``principal.vendor_scope``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from threading import Lock

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from cimtwin.errors import Forbidden, Unauthorized
from cimtwin.schemas.access import Role
from cimtwin.store import access as store

API_KEY_PARAM = "api_key"
API_KEY_HEADER = "X-API-Key"
#: How long a looked-up key is trusted in this process; a revoked key stops working after at most this.
KEY_CACHE_TTL_S = 2.0
_KEY_CACHE_MAX = 10_000
_MAX_KEY_LENGTH = 256


@dataclass(frozen=True)
class Principal:
    """The caller: a stored key, the admin key from the settings, or an anonymous request."""

    key_id: int | None
    name: str
    role: Role
    vendor_id: int | None = None
    vendor_code: str | None = None

    @property
    def actor(self) -> str:
        """How the audit log names the caller: ``key:<id>:<name>``, ``admin-setting`` or ``anonymous``."""
        return f"key:{self.key_id}:{self.name}" if self.key_id is not None else self.name

    @property
    def vendor_scope(self) -> int | None:
        """The ``vendor_id`` for store queries: a vendor key's vendor, else None (unscoped)."""
        return self.vendor_id if self.role == Role.vendor else None

    def ensure_vendor(self, vendor_code: str) -> None:
        """403 when a vendor key acts for another vendor (writes; reads are 404 by scoping)."""
        if self.role == Role.vendor and vendor_code != self.vendor_code:
            raise Forbidden(f"this key belongs to vendor {self.vendor_code!r} and cannot act for vendor "
                            f"{vendor_code!r}", code="other_vendor")


ADMIN_SETTING = Principal(key_id=None, name="admin-setting", role=Role.admin)


class KeyCache:
    """Recently authenticated keys by SHA-256, each trusted for ``ttl`` seconds."""

    def __init__(self, ttl: float = KEY_CACHE_TTL_S):
        self.ttl = ttl
        self._entries: dict[bytes, tuple[float, Principal]] = {}
        self._lock = Lock()

    def get(self, digest: bytes) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: bytes, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) >= _KEY_CACHE_MAX:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + self.ttl, principal)

    def forget(self, key_id: int) -> None:
        """Drops a key at once (it was revoked in this process)."""
        with self._lock:
            for digest in [d for d, (_, p) in self._entries.items() if p.key_id == key_id]:
                del self._entries[digest]


# auto_error=False: a missing key is ours to report (401 with the JSON error shape), and these
# put the three ways of sending a key into the OpenAPI document (the "Authorize" button in /docs).
_bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="Authorization: Bearer <key>")
_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name="apiKeyHeader",
                       description=f"{API_KEY_HEADER}: <key>")
_query = APIKeyQuery(name=API_KEY_PARAM, auto_error=False, scheme_name="apiKeyQuery",
                     description="?api_key=<key>, for tile and GDAL/QGIS clients that cannot set headers; "
                                 "it ends up in access logs, so prefer a header")


def key_in_url(request: Request) -> list[tuple[str, str]]:
    """``[("api_key", key)]`` when the key came in the URL, for links that clients follow as given
    (OGC paging, TileJSON tile URLs); else nothing: a key sent in a header is never copied into a body."""
    key = request.query_params.get(API_KEY_PARAM)
    return [(API_KEY_PARAM, key)] if key else []


def key_cache(request: Request) -> KeyCache:
    state = request.app.state
    if not hasattr(state, "key_cache"):
        state.key_cache = KeyCache()
    return state.key_cache


async def authenticate(request: Request, bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
                       header: str | None = Depends(_header), query: str | None = Depends(_query)) -> Principal:
    """The caller's Principal; 401 without a usable key (unless anonymous requests have a role)."""
    settings = request.app.state.settings
    key = (bearer.credentials if bearer else None) or header or query
    if not key:
        if settings.auth_anonymous_role is not None:
            return Principal(key_id=None, name="anonymous", role=settings.auth_anonymous_role)
        raise Unauthorized(f"an API key is required: send 'Authorization: Bearer <key>', '{API_KEY_HEADER}: <key>' "
                           f"or ?{API_KEY_PARAM}=<key>", code="missing_api_key")
    if settings.admin_api_key is not None and hmac.compare_digest(
            key.encode(), settings.admin_api_key.get_secret_value().encode()):
        return ADMIN_SETTING
    if len(key) > _MAX_KEY_LENGTH or not key.startswith(store.KEY_SCHEME):
        raise Unauthorized("unknown or revoked API key", code="invalid_api_key")
    digest = store.key_hash(key)
    cache = key_cache(request)
    principal = cache.get(digest)
    if principal is None:
        found = await store.authenticate(request.app.state.pool, key)
        if found is None:
            raise Unauthorized("unknown or revoked API key", code="invalid_api_key")
        principal = Principal(key_id=found.id, name=found.name, role=found.role, vendor_id=found.vendor_id,
                              vendor_code=found.vendor_code)
        cache.put(digest, principal)
    return principal


def require(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates and admits only ``roles`` (403 for the others)."""
    allowed = frozenset(roles)
    if not allowed:
        raise ValueError("require() needs at least one role")
    names = ", ".join(r.value for r in Role if r in allowed)

    async def check(request: Request, principal: Principal = Depends(authenticate)) -> Principal:
        if principal.role not in allowed:
            raise Forbidden(f"role {principal.role.value} may not {request.method} {request.url.path}; "
                            f"allowed: {names}", code="forbidden_role")
        return principal

    check.__name__ = f"require_{'_'.join(r.value for r in Role if r in allowed)}"
    return check


# The role matrix (README, "Access"): who may do what.
ANY_ROLE = tuple(Role)
STAFF = (Role.admin, Role.operator)                  # write block data and places
READERS = (Role.admin, Role.operator, Role.analyst)  # everything that is not scoped to one vendor
INGEST_READERS = (Role.admin, Role.operator, Role.vendor)  # dead letters, pending devices
