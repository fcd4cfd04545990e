"""The endpoint's FastAPI application, before any route: the one error body for every status,
503 + Retry-After for a dependency that is down, the body-size limit, the API-key check and
the published OpenAPI with the configured limits.

Settings are per replica: each check reads the serving replica's ingress instance (its config
and keys) through Serve's replica context, not module state. The routes are the methods of
``serving.ingress.RecommenderIngress``, which Serve mounts on ``fastapi_app``.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' real types.
import math
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayrec.serving.api import BodySizeLimit, key_id, key_is_valid, with_config_limits
from rayrec.serving.bandit import PolicyUnavailable
from rayrec.serving.eventlog import EventLogFull


def _ingress() -> Any:
    """This replica's ingress instance (its config, keys and counters), or None outside Serve."""
    try:
        return serve.get_replica_context().servable_object
    except Exception:  # not inside a Serve replica (e.g. a unit test driving the FastAPI app)
        return None


ADMIN_PATHS = ("/items", "/items/hide")  # the admin routes (catalog changes), under any route prefix


def is_admin_path(path: str) -> bool:
    return path.rstrip("/").endswith(ADMIN_PATHS)


def _max_body_bytes(scope: dict) -> int | None:
    """This request's body limit: the admin routes take whole batches of items."""
    ingress = _ingress()
    if ingress is None:
        return None
    sc = ingress.cfg.serve
    return sc.admin_max_body_bytes if is_admin_path(scope.get("path", "")) else sc.max_body_bytes


class RecommenderAPI(FastAPI):
    """The FastAPI app, whose published schema carries this replica's configured limits
    (serve.max_k, history length, reward bounds, ...). Serve serves a pickled copy of the app,
    so the schema is built from the serving copy's own routes (``self``)."""

    def openapi(self) -> dict[str, Any]:
        schema = super().openapi()  # FastAPI's own, from this app's routes (cached)
        ingress = _ingress()
        return schema if ingress is None else with_config_limits(schema, ingress.cfg.serve)


fastapi_app = RecommenderAPI(
    title="rayrec recommendations",
    description="Retrieval + LLM ranking + exploration, served by Ray Serve.",
    version="1",
)
fastapi_app.add_middleware(BodySizeLimit, limit=_max_body_bytes)


def _error(status: int, error: str, detail, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error the app sends: the one documented body (``api.ErrorBody``)."""
    return JSONResponse(status_code=status, content={"error": error, "detail": detail}, headers=headers)


@fastapi_app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        msg = "unknown field" if e.get("type") == "extra_forbidden" else e.get("msg", "invalid")
        problems.append(f"{where}: {msg}")
    return _error(422, "invalid request", problems)


@fastapi_app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """HTTPException bodies in the one documented shape, headers kept."""
    try:
        phrase = HTTPStatus(exc.status_code).phrase.lower()
    except ValueError:
        phrase = "error"
    return _error(exc.status_code, phrase, str(exc.detail), getattr(exc, "headers", None))


# A dependency that is down answers 503 + Retry-After, never a 500: the event log's storage
# (buffer full: back-pressure, not loss) or a policy's state (restarting: retrying is safe,
# one reward per item).
_UNAVAILABLE = {EventLogFull: ("event log unavailable", "5"), PolicyUnavailable: ("policy state unavailable", "2")}


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    error, retry_after = _UNAVAILABLE[type(exc)]
    return _error(503, error, str(exc), {"Retry-After": retry_after})


for _exc in _UNAVAILABLE:
    fastapi_app.add_exception_handler(_exc, _unavailable)


def bad_request(msg: str, status: int = 422) -> HTTPException:
    return HTTPException(status_code=status, detail=msg)


def presented_key(request: Request) -> str | None:
    """The key in ``x-api-key``, else in ``Authorization: Bearer``."""
    presented = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if presented is None and auth.lower().startswith("bearer "):
        presented = auth[7:].strip()
    return presented


async def require_key(request: Request) -> None:
    """API-key check (no-op unless serve.require_api_key), then the key's quota
    (serve.key_quota_per_s: 429 + Retry-After past it); keys are never logged or echoed."""
    ingress = _ingress()
    if ingress is None or not ingress.cfg.serve.require_api_key:
        return
    presented = presented_key(request)
    if not key_is_valid(presented, ingress.api_keys):
        raise HTTPException(status_code=401, detail="missing or invalid API key",
                            headers={"WWW-Authenticate": "Bearer"})
    wait = ingress.quota.take(key_id(presented)) if ingress.quota is not None else None
    if wait is not None:
        raise HTTPException(status_code=429, headers={"Retry-After": str(max(1, math.ceil(wait)))}, detail=(
            f"this API key is over its quota (serve.key_quota_per_s={ingress.cfg.serve.key_quota_per_s}, "
            f"burst {ingress.cfg.serve.key_quota_burst}); retry after Retry-After"))


async def require_admin_key(request: Request) -> None:
    """Admin-key check of the catalog routes, always on: no admin keys configured is a 403 (the
    routes are off), a client key is a 403 (known, but not allowed), anything else a 401.
    Keys are never logged or echoed."""
    ingress = _ingress()
    admin_keys = getattr(ingress, "admin_keys", None) or []  # outside Serve: none
    if not admin_keys:
        raise HTTPException(status_code=403, detail="catalog changes are off: no admin keys configured "
                            "(serve.admin_api_keys_env / serve.admin_api_keys_file)")
    presented = presented_key(request)
    if key_is_valid(presented, admin_keys):
        return
    if key_is_valid(presented, ingress.client_keys):
        raise HTTPException(status_code=403, detail="a client API key cannot change the catalog: use an admin key")
    raise HTTPException(status_code=401, detail="missing or invalid admin key",
                        headers={"WWW-Authenticate": "Bearer"})
