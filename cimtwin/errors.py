"""Domain errors. Each carries its HTTP status; the API translates them in one handler."""

from __future__ import annotations


class CimtwinError(Exception):
    status_code = 400
    code = "bad_request"

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
