"""`build_app`: the FastAPI application `clara api` serves (tests serve the same one).

Routes are synchronous functions on purpose: core is synchronous (SQLAlchemy sessions,
torch), so FastAPI runs each in its thread pool and the event loop stays free.
"""

from __future__ import annotations

import threading
from importlib import import_module

from fastapi import FastAPI
from sqlalchemy import Engine

from api import errors
from api.limits import BodyLimit
from core.config import Settings
from core.ops.metrics import metrics_registry

API_PREFIX = "/api/v1"
# The areas under /api/v1, one module each in api/routes.
AREAS = ("health", "auth", "corpus", "datasets", "jobs", "adapters", "learning")


class ChatHolder:
    """The chat service, made on first use: the base model loads only when a caller asks for
    generation, not when an API for corpus and datasets starts."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine, self._settings = engine, settings
        self._service = None
        self._lock = threading.Lock()

    def get(self):
        if self._service is None:
            with self._lock:
                if self._service is None:
                    from core.serving.chat import ChatService, engine_from_settings

                    self._service = ChatService(self._engine, engine_from_settings(self._settings))
        return self._service


def build_app(engine: Engine, settings: Settings) -> FastAPI:
    app = FastAPI(
        title="CLARA Workbench API",
        version="1",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.settings = settings
    app.state.secret = settings.auth_secret_value()
    app.state.chat = ChatHolder(engine, settings)
    errors.install(app)
    for area in AREAS:
        module = import_module(f"api.routes.{area}")
        app.include_router(module.router, prefix=API_PREFIX)
    from api.routes import metrics, openai_compat

    app.include_router(openai_compat.router)
    app.state.metrics = metrics_registry(engine, settings)
    app.include_router(metrics.router)
    return app


def asgi_app(engine: Engine, settings: Settings):
    """The application behind the body-size limit, as the server runs it."""
    return BodyLimit(build_app(engine, settings), int(settings.api_max_body_mb * 1_000_000))
