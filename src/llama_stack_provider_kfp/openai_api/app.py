"""The HTTP routes of OpenAI's fine-tuning, files and models APIs, under /v1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import Response

from ..config import KFPPostTrainingConfig
from ..core.errors import InvalidRequest
from ..jobs.record import Owner
from ..service.jobs import JobService
from ..service.paths import PathRoots
from . import errors
from .errors import APIError, not_found
from .files import FileStore
from .jobs import FaceJobs
from .keys import Keys
from .requests import CreateJob

log = logging.getLogger(__name__)


def page(items: list[dict], after: str | None, limit: int | None, default: int = 20,
         most: int = 100) -> dict:  # fmt: skip
    """OpenAI's cursor page: the items after the one whose id is `after`, at most `limit`."""
    limit = default if limit is None else limit
    if not 1 <= limit <= most:
        raise errors.bad(f"limit must be from 1 to {most} (got {limit})", param="limit")
    start = 0
    if after is not None:
        ids = [i["id"] for i in items]
        if after not in ids:
            raise errors.bad(f"after {after!r} is not an id of this list", param="after")
        start = ids.index(after) + 1
    chunk = items[start : start + limit]
    return {"object": "list", "data": chunk, "has_more": start + limit < len(items),
            "first_id": chunk[0]["id"] if chunk else None,
            "last_id": chunk[-1]["id"] if chunk else None}  # fmt: skip


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """`metadata[key]=value` query parameters (OpenAI's list filter)."""
    found = {k[len("metadata[") : -1]: v for k, v in request.query_params.items()
             if k.startswith("metadata[") and k.endswith("]")}  # fmt: skip
    return found or None


def create_app(config: KFPPostTrainingConfig, keys: Keys | None = None) -> FastAPI:
    keys = keys if keys is not None else Keys.load(config.openai.keys_file)
    service = JobService(config)
    files = FileStore(config.work_dir, config.openai.max_file_bytes)
    jobs = FaceJobs(service, files)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(service.shutdown)
        log.info("openai face: scheduler stopped; jobs keep running in their own processes")

    app = FastAPI(title="llama-stack-provider-kfp: OpenAI fine-tuning", lifespan=lifespan)
    app.state.service = service
    errors.install(app)

    def caller(request: Request) -> Owner:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else None
        owner = keys.owner(key)
        if owner is None:
            raise APIError(401, "Incorrect API key provided. Use a key from this server's "
                           "openai.keys_file.", code="invalid_api_key")  # fmt: skip
        return owner

    def paths_for(owner: Owner) -> PathRoots | None:
        if keys.single_user:  # one user: every local path, as the llama-stack face without auth
            return None

        def may_read(job_id: str) -> bool:
            try:
                found = service.store.load(job_id)
            except InvalidRequest:
                return False
            return bool(found and found.owner and found.owner.principal == owner.principal)

        return service.path_roots(may_read)

    Caller = Depends(caller)
    UPLOAD, PURPOSE = File(...), Form(...)

    def run[T](fn: Callable[..., T], *args: Any) -> Any:
        return asyncio.to_thread(fn, *args)

    # ---- files ----------------------------------------------------------------------------

    @app.post("/v1/files")
    async def create_file(file: UploadFile = UPLOAD, purpose: str = PURPOSE,
                          owner: Owner = Caller) -> dict:  # fmt: skip
        stored = await run(files.add, file.file, file.filename or "upload.jsonl", purpose, owner)
        return stored.api()

    @app.get("/v1/files")
    async def list_files(after: str | None = None, limit: int | None = None,
                         order: str = "desc", purpose: str | None = None,
                         owner: Owner = Caller) -> dict:  # fmt: skip
        found = [f.api() for f in await run(files.list, owner)
                 if purpose is None or f.purpose == purpose]  # fmt: skip
        if order == "desc":
            found.reverse()
        return page(found, after, limit, default=10000, most=10000)

    @app.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str, owner: Owner = Caller) -> dict:
        return (await run(files.get, file_id, owner)).api()

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, owner: Owner = Caller) -> dict:
        await run(files.delete, file_id, owner)
        return {"id": file_id, "object": "file", "deleted": True}

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, owner: Owner = Caller) -> Response:
        from fastapi.responses import FileResponse

        return FileResponse(await run(files.path, file_id, owner),
                            media_type="application/octet-stream")  # fmt: skip

    # ---- jobs -----------------------------------------------------------------------------

    @app.post("/v1/fine_tuning/jobs")
    async def create_job(body: CreateJob, owner: Owner = Caller) -> dict:
        return await jobs.create(body, owner, paths_for(owner))

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request, after: str | None = None, limit: int | None = None,
                        owner: Owner = Caller) -> dict:  # fmt: skip
        def objects() -> list[dict]:
            return [jobs.job_object(r, f)
                    for r, f in jobs.mine(owner, _metadata_filter(request))]  # fmt: skip

        return page(await run(objects), after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def retrieve_job(job_id: str, owner: Owner = Caller) -> dict:
        def one() -> dict:
            return jobs.job_object(*jobs.get(job_id, owner))

        return await run(one)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, owner: Owner = Caller) -> dict:
        return await run(jobs.cancel, job_id, owner)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def list_events(job_id: str, after: str | None = None, limit: int | None = None,
                          owner: Owner = Caller) -> dict:  # fmt: skip
        def events() -> list[dict]:
            return jobs.events(*jobs.get(job_id, owner))

        return page(await run(events), after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def list_checkpoints(job_id: str, after: str | None = None, limit: int | None = None,
                               owner: Owner = Caller) -> dict:  # fmt: skip
        def checkpoints() -> list[dict]:
            return jobs.checkpoints(*jobs.get(job_id, owner))

        return page(await run(checkpoints), after, limit, default=10)

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    async def pause_job(job_id: str, owner: Owner = Caller) -> dict:
        return await run(jobs.pause, job_id, owner)

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    async def resume_job(job_id: str, owner: Owner = Caller) -> dict:
        return await run(jobs.resume, job_id, owner)

    # ---- models ---------------------------------------------------------------------------

    def models(owner: Owner) -> list[dict]:
        out = []
        for record, face in jobs.mine(owner, None):
            obj = jobs.job_object(record, face)
            if obj["fine_tuned_model"]:
                out.append({"id": obj["fine_tuned_model"], "object": "model",
                            "created": obj["finished_at"] or face.created_at,
                            "owned_by": face.owner.principal})  # fmt: skip
        return out

    @app.get("/v1/models")
    async def list_models(owner: Owner = Caller) -> dict:
        return {"object": "list", "data": await run(models, owner)}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str, owner: Owner = Caller) -> dict:
        found = [m for m in await run(models, owner) if m["id"] == model_id]
        if not found:
            raise not_found("model", model_id, param="model")
        return found[0]

    @app.delete("/v1/models/{model_id:path}")
    async def delete_model(model_id: str, owner: Owner = Caller) -> dict:
        return await run(jobs.delete_model, model_id, owner)

    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "OK"}

    return app
