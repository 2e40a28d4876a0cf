from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from cimtwin.errors import NotFound
from cimtwin.schemas import CanonicalMessage, DeviceIn
from cimtwin.schemas.profiles import Profile

router = APIRouter(prefix="/schemas", tags=["schemas"])

# JSON Schemas of the documents vendors send, by name.
SCHEMAS = {
    "canonical-message": CanonicalMessage,
    "device": DeviceIn,
    "profile": Profile,
}


@router.get("", summary="Names of the published JSON Schemas")
async def list_schemas() -> dict:
    return {"schemas": [{"name": name, "href": f"/schemas/{name}"} for name in SCHEMAS]}


@router.get("/{name}", summary="One JSON Schema (draft 2020-12)")
async def get_schema(name: str) -> JSONResponse:
    model = SCHEMAS.get(name)
    if model is None:
        raise NotFound(f"no schema named {name!r}; known: {', '.join(SCHEMAS)}")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"/schemas/{name}",
              **model.model_json_schema()}
    return JSONResponse(schema, media_type="application/schema+json")
