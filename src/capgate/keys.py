"""Virtual key material: generation, hashing and constant-time verification.

A key looks like `sk-cg-<id>-<secret>`: the id (12 characters) finds the record without a
secret-dependent lookup, the secret carries 256 random bits, and only SHA-256 of the whole
key is stored. A fast hash is right here: the secret is random, not a password, so there
is nothing for a slow hash to protect against.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "sk-cg-"
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no look-alikes: l, o, 0, 1


def new_key() -> tuple[str, str]:
    """A fresh (key id, raw key) pair."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    return key_id, f"{PREFIX}{key_id}-{secrets.token_urlsafe(32)}"


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
