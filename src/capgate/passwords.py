"""Admin passwords and admin API tokens.

Passwords are hashed with scrypt (`hashlib.scrypt`, standard library: no new dependency;
memory-hard, so a stolen database is slow to guess on GPUs as well as CPUs). argon2id is
the newer choice but needs a compiled package; scrypt at n=2**15, r=8, p=1 costs 32 MiB
and ~50-100 ms per guess. The parameters are stored with each hash
(`scrypt$n$r$p$salt$hash`), so they can be raised later and old hashes still verify.
Hashing is slow on purpose: callers run it off the event loop (`asyncio.to_thread`).

An admin token is `cga-` + 43 random URL-safe characters (256 bits): random, not chosen,
so only its SHA-256 is stored (as for virtual keys, a fast hash is right for it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
PASSWORD_MIN_LENGTH = 12
PASSWORD_MAX_LENGTH = 1000
TOKEN_PREFIX = "cga-"  # noqa: S105 - not a secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p,
        maxmem=2 * 128 * r * n + 2**20, dklen=32,
    )  # fmt: skip


def password_problem(password: str) -> str | None:
    """Why `password` cannot be an admin's password (None: it can)."""
    if len(password) < PASSWORD_MIN_LENGTH:
        return f"password: at least {PASSWORD_MIN_LENGTH} characters"
    if len(password) > PASSWORD_MAX_LENGTH:
        return f"password: at most {PASSWORD_MAX_LENGTH} characters"
    return None


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether `password` is the one `stored` was made from (constant-time compare). With
    no stored hash the same work is done, so timing does not tell which names exist."""
    if stored is None:
        _scrypt(password, b"\0" * SALT_BYTES, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        found = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(found, _unb64(digest))


def new_admin_token() -> tuple[str, str]:
    """A fresh (token id, raw token): the id names it in lists, revoke and rotate."""
    return secrets.token_hex(4), TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(raw: str) -> bytes:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).digest()


def token_display(raw: str) -> str:
    return raw[: len(TOKEN_PREFIX) + 6] + "…"
