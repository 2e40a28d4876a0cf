"""The monitoring console (web/): its built page at ``/`` and its files at ``/assets/…``.

Public: the page and its scripts hold no data; the console asks for an API key and sends it with
every call. ``npm run build`` in web/ (run by deploy/bootstrap.sh) writes web/dist; without it,
``/`` is a 503 that says how to build it. Built files have content hashes in their names, so they
are cached for good; the page itself is revalidated on every load.
"""

from __future__ import annotations

import stat

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from cimtwin.errors import NotFound, Unavailable
from cimtwin.settings import REPO_ROOT

DIST = REPO_ROOT / "web" / "dist"
BUILD_COMMAND = "./deploy/bootstrap.sh (or: cd web && npm ci && npm run build)"

router = APIRouter(tags=["console"], include_in_schema=False)
_assets = StaticFiles(directory=DIST / "assets", check_dir=False)


@router.api_route("/", methods=["GET", "HEAD"], response_class=FileResponse)
async def console(request: Request) -> Response:
    page = DIST / "index.html"
    if not page.is_file():
        raise Unavailable(f"the console is not built ({page} is missing): run {BUILD_COMMAND}",
                          code="console_not_built")
    return FileResponse(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


@router.api_route("/assets/{path:path}", methods=["GET", "HEAD"], response_class=FileResponse)
async def asset(path: str, request: Request) -> Response:
    try:
        full_path, found = await anyio.to_thread.run_sync(_assets.lookup_path, path)
    except (ValueError, OSError):  # a NUL byte, a name too long
        found = None
    if found is None or not stat.S_ISREG(found.st_mode):
        raise NotFound(f"no console file {path!r}", code="not_found")
    response = _assets.file_response(full_path, found, request.scope)
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return response
