from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from cimtwin.api.deps import get_board, get_pool
from cimtwin.api.services import health as service

router = APIRouter(tags=["health"])


@router.get("/health", summary="Database, broker and ingest state; 503 when anything is wrong")
async def health(pool=Depends(get_pool), board=Depends(get_board)) -> JSONResponse:
    body = await service.health(pool=pool, board=board)
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)
