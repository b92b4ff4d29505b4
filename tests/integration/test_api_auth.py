"""The HTTP API's sign-in against the real `clara api` server: access and refresh tokens,
API keys, and an outsider's attempts (forged, expired, replayed, `alg: none`, a disabled
user, a revoked key), all refused with the same 401 and no detail."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import pytest
from sqlalchemy import select, update

from tests.api_server import running_api_server
from tests.cli_run import clara

PUBLIC = {
    ("GET", "/api/v1/health"),
    ("POST", "/api/v1/auth/token"),
    ("POST", "/api/v1/auth/refresh"),
}


@pytest.fixture
def api(settings):
    with running_api_server(settings, {"CLARA_API_MAX_BODY_MB": "1"}) as server:
        yield server


def _sign_in(api, user: str, password: str) -> httpx.Response:
    return httpx.post(
        api.url + "/api/v1/auth/token", json={"username": user, "password": password}, timeout=30
    )


def _me(api, token: str) -> httpx.Response:
    return httpx.get(
        api.url + "/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def _audit(settings, action: str) -> list:
    """(actor, action, outcome) of the audit rows of one action, oldest first."""
    from core.db import get_engine, reading
    from core.db.models import AuditEntry

    with reading(get_engine(settings)) as s:
        rows = s.scalars(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
        )
        return [(e.actor, e.action, e.outcome) for e in rows]


def _b64(data: dict) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_tokens_sign_in_refresh_rotation_and_logout(api, settings):
    pair = _sign_in(api, "trainer", "trainer-pass-1").json()
    assert pair["token_type"] == "bearer" and pair["expires_in"] == 15 * 60
    me = _me(api, pair["access_token"]).json()
    assert me["username"] == "trainer" and me["role"] == "trainer" and me["via"] == "token"
    assert "training:create" in me["permissions"]
    # The token names the user and the sign-in, never the role.
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "trainer" and "role" not in claims

    fresh = httpx.post(
        api.url + "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
    ).json()
    assert fresh["refresh_token"] != pair["refresh_token"]
    assert _me(api, fresh["access_token"]).status_code == 200
    # The first refresh token was replaced; using it again means it was copied: every token
    # of that sign-in ends, the thief's and the owner's.
    replay = httpx.post(
        api.url + "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
    )
    assert replay.status_code == 401
    assert _me(api, fresh["access_token"]).status_code == 401
    again = httpx.post(
        api.url + "/api/v1/auth/refresh", json={"refresh_token": fresh["refresh_token"]}
    )
    assert again.status_code == 401
    assert [e[2] for e in _audit(settings, "auth.token_reuse")] == ["denied"]

    # Logout ends the access token at once (not when it expires) and its refresh token.
    other = _sign_in(api, "trainer", "trainer-pass-1").json()
    out = httpx.post(
        api.url + "/api/v1/auth/logout",
        headers={"Authorization": f"Bearer {other['access_token']}"},
    )
    assert out.status_code == 204
    assert _me(api, other["access_token"]).status_code == 401
    assert (
        httpx.post(
            api.url + "/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]}
        ).status_code
        == 401
    )


def test_wrong_passwords_are_locked_out_and_audited_like_the_web_login(api, settings):
    codes = [_sign_in(api, "analyst", "wrong-password").status_code for _ in range(5)]
    assert codes[:4] == [401] * 4 and codes[4] == 429
    # Locked: even the right password is refused until the lockout ends.
    locked = _sign_in(api, "analyst", "analyst-pass-1")
    assert locked.status_code == 429 and "blocked until" in locked.json()["detail"]
    outcomes = [e[2] for e in _audit(settings, "auth.login") if e[0] == "analyst"]
    assert outcomes.count("failed") == 5 and "denied" in outcomes
    # An unknown name gets exactly the answer a wrong password gets.
    assert _sign_in(api, "nobody", "x").json() == _sign_in(api, "user", "x").json()


def test_forged_expired_and_foreign_tokens_are_refused_alike(api, settings):
    good = _sign_in(api, "admin", "adminpass1").json()["access_token"]
    claims = jwt.decode(good, options={"verify_signature": False})
    secret = settings.auth_secret_value()
    derived = hmac.new(secret.encode(), b"clara-api-access-token", hashlib.sha256).digest()
    header, payload, signature = good.split(".")
    attempts = {
        "garbage": "not-a-token",
        "wrong signature": jwt.encode(claims, "a-key-from-somewhere-else-0123456789", "HS256"),
        # The repository publishes how the key is derived, not the secret: signing with the
        # raw secret or a guessed one must not pass either.
        "raw secret": jwt.encode(claims, secret, "HS256"),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "alg none, no dot": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}",
        "expired": jwt.encode(
            {**claims, "iat": int(time.time()) - 3600, "exp": int(time.time()) - 60},
            derived,
            "HS256",
        ),
        "another user's name": jwt.encode({**claims, "sub": "auditor"}, derived, "HS256"),
        "no session": jwt.encode({**claims, "sid": "0" * 64}, derived, "HS256"),
        "other audience": jwt.encode({**claims, "aud": "somewhere"}, derived, "HS256"),
        "tampered payload": f"{header}.{_b64({**claims, 'sub': 'auditor'})}.{signature}",
        "unknown api key": "clara_deadbeef_" + "x" * 40,
    }
    answers = {}
    for name, token in attempts.items():
        r = _me(api, token)
        answers[name] = (r.status_code, r.json(), r.headers.get("www-authenticate"))
    assert {name: a[0] for name, a in answers.items()} == {name: 401 for name in attempts}
    bodies = {json.dumps(a[1], sort_keys=True) for a in answers.values()}
    assert len(bodies) == 1, bodies  # nothing says which check failed
    assert all(a[2] == "Bearer" for a in answers.values())
    # The real token was right all along: the refusals above are about the forgeries.
    assert _me(api, good).status_code == 200
    # The same for the OpenAI-compatible routes, in OpenAI's error shape.
    r = httpx.get(api.url + "/v1/models", headers={"Authorization": "Bearer " + good[:-2]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_disabled_users_and_changed_roles_take_effect_at_the_next_request(api, settings):
    from core.api_keys import create_api_key
    from core.db import get_engine
    from core.permissions import SYSTEM
    from core.users import set_disabled, set_role

    engine = get_engine(settings)
    token = _sign_in(api, "analyst", "analyst-pass-1").json()["access_token"]
    _, key = create_api_key(engine, SYSTEM, "notebook", username="analyst")
    assert _me(api, key).json()["role"] == "analyst"
    # A role change: the key acts with the new role at once (the token's sign-in ends, as
    # a role change ends every session of the user).
    set_role(engine, SYSTEM, "analyst", "auditor")
    assert _me(api, key).json()["role"] == "auditor"
    assert "audit:read" in _me(api, key).json()["permissions"]
    assert _me(api, token).status_code == 401

    token = _sign_in(api, "analyst", "analyst-pass-1").json()["access_token"]
    set_disabled(engine, SYSTEM, "analyst", True)
    assert _me(api, token).status_code == 401
    assert _me(api, key).status_code == 401
    assert _sign_in(api, "analyst", "analyst-pass-1").status_code == 401
    # Enabled again, the key works again; the token's sign-in stays ended.
    set_disabled(engine, SYSTEM, "analyst", False)
    assert _me(api, key).status_code == 200
    assert _me(api, token).status_code == 401


def test_api_keys_from_the_cli_are_shown_once_listed_hashed_and_revocable(api, settings):
    made = clara(
        settings,
        "users",
        "api-key",
        "create",
        "ci pipeline",
        "--expires",
        "30d",
        "--json",
        user="trainer",
    )
    assert made.returncode == 0, made.stderr
    info = json.loads(made.stdout)
    key = info["key"]
    assert key.startswith(f"clara_{info['prefix']}_") and info["username"] == "trainer"
    me = _me(api, key).json()
    assert me["username"] == "trainer" and me["via"] == "api_key"

    listed = clara(settings, "users", "api-key", "list", "--json", user="trainer")
    assert listed.returncode == 0, listed.stderr
    assert key not in listed.stdout and info["prefix"] in listed.stdout
    assert json.loads(listed.stdout)[0]["status"] == "active"

    from core.api_keys import key_hash
    from core.db import get_engine, reading
    from core.db.models import ApiKey

    with reading(get_engine(settings)) as s:
        stored = s.scalar(select(ApiKey).where(ApiKey.id == info["id"]))
        assert stored.key_hash == key_hash(key) and key not in repr(stored.__dict__)

    # Someone else's key: neither listed nor revocable by an ordinary user, and the refusal
    # does not say whether the id exists.
    other = clara(settings, "users", "api-key", "revoke", str(info["id"]), user="analyst")
    assert other.returncode != 0 and "does not exist or is not yours" in other.stderr
    peek = clara(settings, "users", "api-key", "list", "--user", "trainer", user="analyst")
    assert peek.returncode != 0 and "users:manage" in peek.stderr
    assert _me(api, key).status_code == 200

    gone = clara(settings, "users", "api-key", "revoke", str(info["id"]), user="trainer")
    assert gone.returncode == 0, gone.stderr
    assert _me(api, key).status_code == 401
    actions = {(e[1], e[2]) for e in _audit(settings, "users.api_key_revoke")}
    assert actions == {("users.api_key_revoke", "ok"), ("users.api_key_revoke", "failed")}
    assert [e[2] for e in _audit(settings, "users.api_key_create")] == ["ok"]

    # An expired key is refused like a revoked one.
    made = json.loads(
        clara(settings, "users", "api-key", "create", "short", "--json", user="trainer").stdout
    )
    assert _me(api, made["key"]).status_code == 200
    from core.db import writing
    from core.db.base import utcnow

    with writing(get_engine(settings)) as s:
        s.execute(update(ApiKey).where(ApiKey.id == made["id"]).values(expires_at=utcnow()))
    assert _me(api, made["key"]).status_code == 401
    bad = clara(settings, "users", "api-key", "create", "x", "--expires", "soon", user="trainer")
    assert bad.returncode != 0 and "90d" in bad.stderr


def test_every_route_but_health_and_sign_in_needs_credentials(api):
    spec = httpx.get(api.url + "/api/openapi.json").json()
    routes = [
        (method.upper(), path)
        for path, methods in spec["paths"].items()
        for method in methods
        if method in ("get", "post", "put", "patch", "delete")
    ]
    assert len(routes) >= 8, routes
    refused = {}
    for method, path in routes:
        url = api.url + path.replace("{", "").replace("}", "")  # any value for path params
        for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic x"}):
            r = httpx.request(method, url, headers=headers, timeout=30)
            if (method, path) in PUBLIC:
                assert r.status_code != 401 or path.endswith("refresh"), (method, path)
            else:
                refused[(method, path, str(headers))] = r.status_code
    assert set(refused.values()) == {401}, {k: v for k, v in refused.items() if v != 401}


def test_oversized_bodies_are_refused_with_413(api):
    big = b'{"username": "admin", "password": "' + b"x" * 1_100_000 + b'"}'
    r = httpx.post(
        api.url + "/api/v1/auth/token",
        content=big,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413 and "CLARA_API_MAX_BODY_MB" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"x" * 50_000

    r = httpx.post(
        api.url + "/api/v1/auth/token",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413
    # The server is fine afterwards.
    assert _sign_in(api, "admin", "adminpass1").status_code == 200


def test_malformed_bodies_name_the_problem(api):
    r = httpx.post(
        api.url + "/api/v1/auth/token",
        content=b'{"username": "admin", "password": ',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422
    (problem,) = r.json()["fields"]
    assert problem["field"] == "body" and problem["problem"].startswith("invalid JSON at")
    r = httpx.post(api.url + "/api/v1/auth/token", json={"username": "admin"})
    assert r.status_code == 422
    assert r.json()["fields"] == [{"field": "password", "problem": "Field required"}]


def test_users_page_creates_lists_and_revokes_api_keys(db_engine, settings, monkeypatch):
    from core.api_keys import list_api_keys, resolve_api_key
    from core.permissions import SYSTEM
    from tests.conftest import open_page

    at = open_page(monkeypatch, "pages/admin.py")
    at.text_input(key="admin_key_name").input("portal")
    [b for b in at.button if b.label == "Create API key"][0].click()
    at.run()
    assert not at.exception, at.exception
    (shown,) = [c.value for c in at.code]
    assert resolve_api_key(db_engine, shown).username == "admin"
    at.run()  # shown once: gone at the next rerun
    assert not [c for c in at.code]
    table = at.dataframe[-1].value
    assert list(table["name"]) == ["portal"] and list(table["status"]) == ["active"]
    assert shown not in table.to_string()

    at.button(key="admin_revoke_key_btn").click()
    at.run()
    assert not at.exception, at.exception
    assert resolve_api_key(db_engine, shown) is None
    assert [k.status for k in list_api_keys(db_engine, SYSTEM, every_user=True)] == ["revoked"]
