"""Core's errors as HTTP answers: one mapping for every route.

The message is core's own (which file, field or name, and what to do). Routes under /v1
(the OpenAI-compatible ones) answer in OpenAI's error shape so its clients show them.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import ClaraError, Conflict, NotFound
from core.login import AccountLocked, AuthenticationFailed
from core.permissions import AuthError, PermissionDenied

OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def status_of(err: ClaraError) -> int:
    if isinstance(err, PermissionDenied):
        return 403
    if isinstance(err, AccountLocked):
        return 429
    if isinstance(err, AuthenticationFailed | AuthError):
        return 401
    if isinstance(err, NotFound):
        return 404
    if isinstance(err, Conflict):
        return 409
    if isinstance(err, ValueError):
        return 422  # the input is wrong: a spec field, a form value, a file's row
    return 400


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    kind: str = "",
    code: str | None = None,
    param: str | None = None,
    fields: list | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    if request.url.path.startswith("/v1/"):
        body = {
            "error": {
                "message": message,
                "type": OPENAI_TYPES.get(status, "api_error"),
                "param": param,
                "code": code,
            }
        }
    else:
        body = {"detail": message, "error": kind or OPENAI_TYPES.get(status, "error")}
        if fields is not None:
            body["fields"] = fields
    return JSONResponse(body, status_code=status, headers=headers)


def _field_errors(err: RequestValidationError) -> list[dict]:
    out = []
    for e in err.errors():
        loc = list(e.get("loc", ()))
        # Only the first item says where (body, query, ...): a field may be named "query".
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]
        if e.get("type") == "json_invalid":
            # The location of a syntax error is a character offset, not a field.
            at = f" at character {loc[0]}" if loc else ""
            error = (e.get("ctx") or {}).get("error", "")
            out.append({"field": "body", "problem": f"invalid JSON{at}: {error}".rstrip(": ")})
            continue
        loc = [str(x) for x in loc]
        out.append({"field": ".".join(loc) or "body", "problem": e.get("msg", "invalid")})
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(ClaraError)
    async def _clara(request: Request, err: ClaraError) -> JSONResponse:
        status = status_of(err)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        code = getattr(err, "error_code", None)
        return error_response(
            request, status, str(err), kind=type(err).__name__, code=code, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        fields = _field_errors(err)
        first = fields[0] if fields else {"field": "body", "problem": "invalid"}
        message = "; ".join(f"{f['field']}: {f['problem']}" for f in fields) or "invalid request"
        return error_response(
            request, 422, message, kind="ValidationError", param=first["field"], fields=fields
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = "invalid_api_key" if err.status_code == 401 else None
        return error_response(
            request,
            err.status_code,
            str(err.detail),
            code=code,
            headers=getattr(err, "headers", None),
        )
