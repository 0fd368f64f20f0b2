"""Batch input files: POST /v1/files (multipart: purpose=batch, file), GET /v1/files/{file_id}, its /content, DELETE.

The multipart body is read with its size counted as it streams (a chunked
upload without Content-Length is cut off at the limit too); the file part is
then checked line by line as it is copied into the files directory.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from starlette.datastructures import FormData, UploadFile

from gigarouter.accounts.gate import Gate, Principal
from gigarouter.api.deps import GateDep, SettingsDep
from gigarouter.batches.jobs import BatchJobs
from gigarouter.errors import InvalidRequest, NotFound, PayloadTooLarge

router = APIRouter()


async def get_batch_jobs(request: Request) -> BatchJobs:
    return request.app.state.batches


BatchJobsDep = Annotated[BatchJobs, Depends(get_batch_jobs)]

#: Room in a multipart body for its boundaries, part headers and the purpose field, beyond the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


async def caller(request: Request, gate: Gate) -> Principal:
    """Files and batches are embedding work: the ``embed`` scope, and a request against the key's rate limit."""
    principal = await gate.authenticate(request.headers.get("authorization"), scope="embed")
    await gate.check_rate(principal, tokens=0)
    return principal


@router.post("/v1/files")
async def upload_file(request: Request, gate: GateDep, jobs: BatchJobsDep, settings: SettingsDep) -> dict:
    principal = await caller(request, gate)
    form = await _form(request, limit=settings.batch_max_file_bytes + MULTIPART_OVERHEAD_BYTES)
    try:
        purpose, upload = form.get("purpose"), form.get("file")
        if not isinstance(purpose, str):
            raise InvalidRequest("purpose is required (a form field: purpose=batch)", param="purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("file is required (a form part holding a JSONL file)", param="file")
        return await jobs.upload(principal, source=upload.file, filename=upload.filename or "upload.jsonl",
                                 purpose=purpose)
    finally:
        await form.close()


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, request: Request, gate: GateDep, jobs: BatchJobsDep) -> dict:
    return await jobs.file(await caller(request, gate), file_id)


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request, gate: GateDep, jobs: BatchJobsDep) -> FileResponse:
    path = await jobs.content(await caller(request, gate), file_id)
    if not path.exists():
        raise NotFound(f"the content of file {file_id} is gone from the server's files directory",
                       param="file_id", code="file_not_found")
    return FileResponse(path, media_type="application/jsonl")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request, gate: GateDep, jobs: BatchJobsDep) -> dict:
    return await jobs.delete_file(await caller(request, gate), file_id)


async def _form(request: Request, *, limit: int) -> FormData:
    """The multipart form, or 413 once more than ``limit`` bytes have arrived."""
    received = 0

    async def counted():
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(f"the upload is larger than batch_max_file_bytes allows ({limit} bytes with "
                                      "the form around it)", param="file", code="file_too_large")
        return message

    return await Request(request.scope, counted).form(max_files=1, max_fields=8)
