"""Domain errors. Each carries its HTTP status; the API translates them in one handler."""

from __future__ import annotations


class CimtwinError(Exception):
    status_code = 400
    code = "bad_request"
    #: HTTP headers the API adds to the error response.
    headers: dict[str, str] = {}

    def __init__(self, detail: str, *, code: str | None = None, **extra):
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.extra = extra


class BadRequest(CimtwinError):
    pass


class NotFound(CimtwinError):
    status_code = 404
    code = "not_found"


class Unauthorized(CimtwinError):
    """No API key, or one that is unknown or revoked."""

    status_code = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="cimtwin"'}


class Forbidden(CimtwinError):
    """A valid key whose role (or vendor) may not do this."""

    status_code = 403
    code = "forbidden"


class Conflict(CimtwinError):
    status_code = 409
    code = "conflict"


class TooLarge(CimtwinError):
    """A query that would return or scan more than the configured limits allow."""

    status_code = 400
    code = "query_too_large"


class Unavailable(CimtwinError):
    status_code = 503
    code = "unavailable"


class UnknownCrs(BadRequest):
    """A CRS identifier that geo.crs.parse_crs does not know; the detail names it."""

    code = "unknown_crs"


class InvalidGeometry(BadRequest):
    """A geometry that does not parse, is empty, is of the wrong type, or is invalid (with the reason)."""

    code = "invalid_geometry"


class QueryTimeout(TooLarge):
    """The statement timeout cut a query off. A 400, like every other limit: narrow the query."""

    code = "query_timeout"


class InvalidDocument(CimtwinError):
    """A document (e.g. a vendor profile) that does not validate; ``errors`` lists each path."""

    status_code = 422
    code = "invalid_document"
