"""/api/v1/auth: password → access and refresh token; refresh; logout; who am I."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from api.security import Caller, client_address, current_caller
from core.api_tokens import issue_tokens, logout, refresh_tokens
from core.login import authenticate
from core.permissions import permissions_of

router = APIRouter(prefix="/auth", tags=["auth"])


class TokenRequest(BaseModel):
    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1000)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=200)


class TokenAnswer(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int


def _ttls(request: Request) -> dict:
    cfg = request.app.state.settings
    return {
        "access_ttl": timedelta(minutes=cfg.api_access_token_minutes),
        "refresh_ttl": timedelta(days=cfg.api_refresh_token_days),
    }


@router.post("/token", response_model=TokenAnswer)
def token(body: TokenRequest, request: Request) -> TokenAnswer:
    """Sign in with user name and password (the web login's lockout and audit apply)."""
    state, address = request.app.state, client_address(request)
    principal = authenticate(state.engine, body.username, body.password, address)
    pair = issue_tokens(
        state.engine,
        principal,
        state.secret,
        client_addr=address,
        user_agent=request.headers.get("user-agent", ""),
        **_ttls(request),
    )
    return TokenAnswer(**pair.__dict__)


@router.post("/refresh", response_model=TokenAnswer)
def refresh(body: RefreshRequest, request: Request) -> TokenAnswer:
    """A new token pair for a refresh token, which stops working (use each once)."""
    state = request.app.state
    pair = refresh_tokens(
        state.engine,
        body.refresh_token,
        state.secret,
        client_addr=client_address(request),
        user_agent=request.headers.get("user-agent", ""),
        **_ttls(request),
    )
    return TokenAnswer(**pair.__dict__)


@router.post("/logout", status_code=204)
def sign_out(caller: Annotated[Caller, Depends(current_caller)], request: Request) -> None:
    """End this sign-in: its access and refresh tokens stop working."""
    if caller.session_id is not None:
        logout(request.app.state.engine, caller.principal, caller.session_id)


@router.get("/me")
def me(caller: Annotated[Caller, Depends(current_caller)]) -> dict:
    p = caller.principal
    return {
        "username": p.username,
        "role": p.role,
        "full_name": p.full_name,
        "via": caller.via,
        "permissions": permissions_of(p.role),
    }
