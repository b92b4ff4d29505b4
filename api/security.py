"""Who is calling: a bearer access token (JWT) or a personal API key, checked per request.

Every request re-reads the user (role, disabled) from the database through core, so the
answer for a disabled user, a revoked key or a changed role is right at the next request.
Every failure gives the same 401 with no detail a guesser could use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from core.api_keys import KEY_PREFIX, resolve_api_key
from core.api_tokens import verify_access_token
from core.permissions import Principal

UNAUTHENTICATED = "not authenticated: send 'Authorization: Bearer <access token or API key>'"


@dataclass(frozen=True)
class Caller:
    principal: Principal
    via: str  # "token" | "api_key"
    session_id: str | None = None  # the sign-in an access token belongs to


def unauthorized(message: str = UNAUTHENTICATED) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def current_caller(request: Request) -> Caller:
    token = bearer(request)
    if token is None:
        raise unauthorized()
    state = request.app.state
    if token.startswith(KEY_PREFIX):
        principal = resolve_api_key(state.engine, token)
        if principal is not None:
            return Caller(principal, "api_key")
    else:
        found = verify_access_token(state.engine, token, state.secret)
        if found is not None:
            return Caller(found[0], "token", found[1])
    raise unauthorized("invalid or expired credentials")


def current_user(caller: Annotated[Caller, Depends(current_caller)]) -> Principal:
    return caller.principal


User = Annotated[Principal, Depends(current_user)]


def client_address(request: Request) -> str:
    """The caller's address; X-Forwarded-For only behind a proxy we were told to trust."""
    if request.app.state.settings.trust_proxy_headers:
        forwarded = request.headers.get("x-forwarded-for", "")
        if forwarded:
            return forwarded.split(",")[0].strip()[:64]
    return request.client.host if request.client else ""


def still_allowed(request: Request, permission: str) -> bool:
    """Whether the credentials a long-lived response (a live stream) was opened with would
    still be accepted now, with `permission`: a revoked key, a disabled user, a logout, an
    expired token or a role change ends the stream as it would refuse the next request."""
    try:
        caller = current_caller(request)
    except HTTPException:
        return False
    return caller.principal.can(permission)
