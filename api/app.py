"""The FastAPI application. Pools and broker clients open in the lifespan, never at import."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

import cimtwin
from cimtwin.errors import CimtwinError
from cimtwin.ingest.status import StatusBoard
from cimtwin.settings import Settings, get_settings
from cimtwin.store.db import open_async_pool

from .auth import ANY_ROLE, READERS, KeyCache, require
from .routers import alert_stream
from .routers import console
from .routers import alerts as alerts_router
from .routers import live_state as live_state_router
from .routers import twin as twin_router
from .routers import (access, blocks, health, mqtt_credentials, ogc, onboarding, readings, registry, reports,
                      schemas, spatial, tiles)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool = open_async_pool(settings.database_url, statement_timeout_ms=settings.api_statement_timeout_ms)
        await pool.open(wait=False)
        board = StatusBoard(settings)
        board.start()
        app.state.pool, app.state.status_board, app.state.settings = pool, board, settings
        try:
            yield
        finally:
            board.stop()
            await pool.close()

    app = FastAPI(title="cimtwin", version=cimtwin.__version__, lifespan=lifespan,
                  description="IoT sensing and digital-twin backend for a district safety monitoring centre.")

    @app.exception_handler(CimtwinError)
    async def domain_error(request: Request, exc: CimtwinError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "detail": exc.detail, **exc.extra}, status_code=exc.status_code,
                            headers=exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"])
            parts.append(f"{where}: {e['msg']}")
        return JSONResponse({"error": "invalid_request", "detail": "; ".join(parts),
                             "errors": jsonable_errors(exc.errors())}, status_code=422)

    # Access (README, "Access"): /health, /schemas and the API docs are public; every other router
    # needs a key. Routers that mix roles narrow them per route, and vendor keys are scoped in the
    # store queries. A route added without its own requirement still needs some valid key.
    app.state.key_cache = KeyCache()
    for module in (health, schemas):
        app.include_router(module.router)
    app.include_router(console.router)  # public: the console's page and built files (web/dist), at / and /assets
    for module in (registry, readings, blocks):
        app.include_router(module.router, dependencies=[Depends(require(*ANY_ROLE))])
    for module in (ogc, tiles, spatial):
        app.include_router(module.router, dependencies=[Depends(require(*READERS))])
    app.include_router(alert_stream.router)  # readers; its lifespan runs the SSE hub; before /alerts/{id}
    app.include_router(access.router)
    app.include_router(mqtt_credentials.router)  # admin, or a vendor key for its own vendor
    app.include_router(onboarding.router)  # roles per route; a vendor key only for its own vendor
    app.include_router(reports.router)  # admin, operator, analyst
    app.include_router(alerts_router.router)  # rules, alerts, events: readers read, admin/operator act
    app.include_router(twin_router.router)  # admin, operator, analyst
    app.include_router(live_state_router.router)  # GET /twin/states: admin, operator, analyst
    return app


def jsonable_errors(errors) -> list[dict]:
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
