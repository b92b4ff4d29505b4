"""Password hashing (bcrypt) and the password policy."""

from __future__ import annotations

import secrets

import bcrypt

from core.errors import ClaraError

MIN_PASSWORD_LENGTH = 8


class PasswordPolicyError(ClaraError, ValueError):
    """A password that the policy refuses; the message says what to do."""


def hash_password(password: str, rounds: int | None = None) -> str:
    from core.config import get_settings

    rounds = rounds or get_settings().bcrypt_rounds
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds)).decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode("utf-8"), password_hash.encode("ascii"))
    except ValueError:
        return False


_dummy_hashes: dict[int, str] = {}


def dummy_hash() -> str:
    """Checked for unknown user names so that timing does not reveal whether a user exists."""
    from core.config import get_settings

    rounds = get_settings().bcrypt_rounds
    if rounds not in _dummy_hashes:
        _dummy_hashes[rounds] = hash_password(secrets.token_urlsafe(16), rounds)
    return _dummy_hashes[rounds]


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(
            f"password too short: use at least {MIN_PASSWORD_LENGTH} characters"
        )
    if len(password.encode("utf-8")) > 72:
        raise PasswordPolicyError("password too long: bcrypt uses at most 72 bytes")
