import pytest

from core.passwords import hash_password, verify_password
from core.permissions import (
    PERMISSIONS,
    ROLE_PERMISSIONS,
    ROLES,
    PermissionDenied,
    Principal,
    has_permission,
    require,
)

REQUIRED = {
    "corpus:ingest",
    "corpus:search",
    "datasets:read",
    "datasets:create",
    "datasets:review",
    "datasets:export",
    "training:create",
    "training:read",
    "training:cancel",
    "adapters:read",
    "adapters:activate",
    "chat:use",
    "audit:read",
    "users:manage",
}


def test_every_required_permission_exists():
    assert set(PERMISSIONS) >= REQUIRED


def test_roles():
    assert set(ROLES) == {"admin", "trainer", "analyst", "user", "auditor"} == set(ROLE_PERMISSIONS)


@pytest.mark.parametrize(
    ("role", "allowed", "denied"),
    [
        ("admin", REQUIRED, set()),
        (
            "trainer",
            {"training:create", "training:cancel", "adapters:activate", "datasets:review"},
            {"users:manage", "audit:read"},
        ),
        (
            "analyst",
            {"corpus:ingest", "datasets:create", "datasets:review", "chat:use"},
            {"training:create", "users:manage", "audit:read", "adapters:activate"},
        ),
        (
            "user",
            {"chat:use"},
            {"corpus:ingest", "datasets:review", "training:create", "audit:read"},
        ),
        (
            "auditor",
            {"audit:read", "training:read", "datasets:read"},
            {"corpus:ingest", "datasets:create", "training:create", "users:manage", "chat:use"},
        ),
    ],
)
def test_permission_map(role, allowed, denied):
    for p in allowed:
        assert has_permission(role, p), (role, p)
    for p in denied:
        assert not has_permission(role, p), (role, p)


def test_require_raises_specific_error():
    u = Principal("bob", "user")
    assert require(u, "chat:use") is u
    with pytest.raises(PermissionDenied) as err:
        require(u, "training:create")
    assert err.value.permission == "training:create"
    assert "bob (user)" in str(err.value)
    with pytest.raises(PermissionDenied):
        require(None, "chat:use")


def test_unknown_permission_is_a_bug():
    with pytest.raises(KeyError):
        has_permission("admin", "corpus:eat")


def test_bcrypt_hashes():
    h = hash_password("correct horse")
    assert h.startswith("$2") and "correct horse" not in h
    assert verify_password("correct horse", h)
    assert not verify_password("wrong horse", h)
    assert not verify_password("x", "not-a-hash")


def test_only_admins_read_server_monitoring():
    assert [r for r in ROLES if "system:monitor" in ROLE_PERMISSIONS[r]] == ["admin"]
