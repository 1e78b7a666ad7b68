"""create_app(): the FastAPI app. The lifespan builds the service (stores, engine) and starts workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from app.api import errors
from app.api.auth import KeyRing
from app.api.deps import method_access, use_access
from app.api.routes import adapters, datasets, health, inference, jobs, metrics, ui
from app.api.routes.v1 import chat, files, fine_tuning, models
from app.config import Settings, get_settings
from app.jobs.ray_executor import make_executor
from app.jobs.webhooks import WebhookDispatcher
from app.openai_compat.schemas import V1_ERROR_RESPONSES
from app.schemas import ERROR_RESPONSES, JobPublic
from app.service import PeftServe


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    keys = KeyRing.from_settings(settings)
    keys.check_startable()  # auth on and no key: refuse to start rather than serve an open API

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = PeftServe(settings)
        app.state.service = service
        if settings.preload_adapters:
            await run_in_threadpool(service.engine.preload, settings.preload_adapters)
        pool = make_executor(settings, service.store)  # local worker processes, or Ray actors
        if settings.workers:
            pool.start()
        webhooks = WebhookDispatcher(
            service.store,
            lambda job: JobPublic.from_job(job).model_dump(
                mode="json"
            ),  # the payload's `data`: the job, as GET shows it
            settings.webhook_secret,
            max_attempts=settings.webhook_max_attempts,
            retry_seconds=settings.webhook_retry_seconds,
            timeout=settings.webhook_timeout,
        )
        webhooks.start()
        try:
            yield
        finally:
            pool.stop()  # first: workers checkpoint and requeue their jobs
            webhooks.stop()
            service.close()

    app = FastAPI(
        title="peftserve",
        summary="LoRA fine-tuning and serving on one shared quantized base model",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.keys = keys
    errors.install(app)
    uploads = ("/datasets", "/adapters", "/v1/files")  # multipart: refused by Content-Length before spooling
    app.add_middleware(errors.UploadLimit, paths=uploads, max_bytes=settings.max_upload_bytes)
    app.include_router(health.router)  # open: liveness for load balancers
    ui.install(app)  # open: the static dashboard at /ui/ (it sends the user's key on each API call)
    for module in (datasets, jobs, adapters):
        app.include_router(module.router, dependencies=[Depends(method_access)], responses=ERROR_RESPONSES)
    for module in (inference, metrics):  # any key: predict, evaluate, scrape
        app.include_router(module.router, dependencies=[Depends(use_access)], responses=ERROR_RESPONSES)
    # The OpenAI-compatible face (/v1): the same keys and scopes, OpenAI's error envelope.
    for module in (files, fine_tuning, models):
        app.include_router(module.router, dependencies=[Depends(method_access)], responses=V1_ERROR_RESPONSES)
    app.include_router(chat.router, dependencies=[Depends(use_access)], responses=V1_ERROR_RESPONSES)
    return app
