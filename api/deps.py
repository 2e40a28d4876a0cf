"""Request-scoped access to what the lifespan opened."""

from __future__ import annotations

from fastapi import Request
from psycopg_pool import AsyncConnectionPool

from cimtwin.ingest.status import StatusBoard


def get_pool(request: Request) -> AsyncConnectionPool:
    return request.app.state.pool


def get_board(request: Request) -> StatusBoard:
    return request.app.state.status_board
