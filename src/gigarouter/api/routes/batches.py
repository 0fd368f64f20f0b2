"""OpenAI's Batch API for /v1/embeddings: POST /v1/batches, GET /v1/batches[/{batch_id}], POST .../cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from gigarouter.api.deps import GateDep, JsonRoute
from gigarouter.api.routes.files import BatchJobsDep, caller

router = APIRouter(route_class=JsonRoute)


class NewBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(max_length=64)
    endpoint: str = Field(max_length=100, description="/v1/embeddings")
    completion_window: str = Field(max_length=10, description="24h")
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        default=None, max_length=16)
    # Accepted for compatibility and ignored: output files are kept until deleted.
    output_expires_after: dict[str, Any] | None = None


@router.post("/v1/batches")
async def create_batch(body: NewBatch, request: Request, gate: GateDep, jobs: BatchJobsDep) -> dict:
    principal = await caller(request, gate)
    return await jobs.create(principal, input_file_id=body.input_file_id, endpoint=body.endpoint,
                             completion_window=body.completion_window, metadata=body.metadata)


@router.get("/v1/batches")
async def list_batches(request: Request, gate: GateDep, jobs: BatchJobsDep,
                       after: Annotated[str | None, Query(max_length=64)] = None,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict:
    return await jobs.list(await caller(request, gate), after=after, limit=limit)


@router.get("/v1/batches/{batch_id}")
async def get_batch(batch_id: str, request: Request, gate: GateDep, jobs: BatchJobsDep) -> dict:
    return await jobs.batch(await caller(request, gate), batch_id)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request, gate: GateDep, jobs: BatchJobsDep) -> dict:
    return await jobs.cancel(await caller(request, gate), batch_id)
