"""Virtual key material: generation, hashing and constant-time verification.

A key looks like `sk-cg-<id>-<secret>`: the id (12 characters) finds the record without a
secret-dependent lookup, the secret carries 256 random bits, and only SHA-256 of the whole
key is stored. A hook machine's token (hook mode) is `cgh-<id>-<secret>`, made the same way
but with its own prefix, so that the gateway refuses it (`key_id_of` does not read it) and
the hook endpoints refuse gateway keys. A hook install code is `cgi-` + 32 base32
characters (160 bits), also stored as SHA-256 only. A fast hash is right here: the secret is random, not a password, so there
is nothing for a slow hash to protect against.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "sk-cg-"
HOOK_PREFIX = "cgh-"
CODE_PREFIX = "cgi-"
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no look-alikes: l, o, 0, 1


def new_key() -> tuple[str, str]:
    """A fresh (key id, raw key) pair."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    return key_id, new_secret(key_id)


def new_secret(key_id: str) -> str:
    """A new raw key of the key `key_id`: a rotation keeps the id, the secret is new."""
    return f"{PREFIX}{key_id}-{secrets.token_urlsafe(32)}"


def key_hash(raw: str) -> bytes:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).digest()


def key_id_of(raw: str) -> str | None:
    """The id part of a raw key, or None when it is not one of ours."""
    if not raw.startswith(PREFIX) or len(raw) < len(PREFIX) + 14:
        return None
    key_id = raw[len(PREFIX) : len(PREFIX) + 12]
    return key_id if raw[len(PREFIX) + 12] == "-" else None


def matches(raw: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(key_hash(raw), stored_hash)


def display_prefix(raw: str) -> str:
    """What lists show of a key: enough to recognise it, useless to an attacker."""
    return raw[: len(PREFIX) + 12] + "-…"


def new_hook_token() -> tuple[str, str]:
    """A fresh (key id, raw token) pair for a hook machine: `cgh-<id12>-<secret>`."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    return key_id, f"{HOOK_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"


def hook_token_id_of(raw: str) -> str | None:
    """The id part of a hook machine's token, or None when it is not one."""
    if not raw.startswith(HOOK_PREFIX) or len(raw) < len(HOOK_PREFIX) + 14:
        return None
    key_id = raw[len(HOOK_PREFIX) : len(HOOK_PREFIX) + 12]
    return key_id if raw[len(HOOK_PREFIX) + 12] == "-" else None


def hook_display(raw: str) -> str:
    """What lists show of a hook token."""
    return raw[: len(HOOK_PREFIX) + 12] + "-…"


def new_install_code() -> str:
    """A hook install code: `cgi-` + 32 base32 characters (160 random bits)."""
    return CODE_PREFIX + base64.b32encode(secrets.token_bytes(20)).decode().lower()
