"""Provider API keys at rest: AES-256-GCM under the server's secret key.

The key comes from `CAPGATE_SECRET_KEY` (32 bytes, hex or base64) or the file
`server.secret_key_file`. Each sealed secret keeps its 12-byte random nonce and the id of
the key that sealed it; the associated data binds the ciphertext to its provider's name
and that key id, so a ciphertext copied onto another provider's row does not decrypt.
A key id is an HMAC of the key, never the key: it names which key a row needs.

A fingerprint (`sha256:` + the first 8 hex digits of the secret's SHA-256) is all any
API shows of a secret once it is set.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from capgate.config import ConfigError

KEY_ENV = "CAPGATE_SECRET_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12


class SecretUnreadable(Exception):
    """A stored secret does not decrypt: another key sealed it, or it was moved or altered."""


@dataclass(frozen=True, slots=True)
class Sealed:
    ciphertext: bytes  # the secret encrypted, with GCM's 16-byte tag at the end
    nonce: bytes
    key_id: str


def fingerprint(secret: str) -> str:
    """What an API may show of a secret: enough to tell two keys apart and to check one
    (`printf %s KEY | sha256sum`), nothing to recover it from (an API key is random)."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def parse_key(text: str, where: str) -> bytes:
    """32 bytes written as 64 hex digits or as base64 (standard or URL-safe)."""
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 2 * KEY_BYTES:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != KEY_BYTES:
        raise ConfigError(
            f"{where}: the secret key must be {KEY_BYTES} bytes, as 64 hex digits or base64 "
            "(make one with: openssl rand -base64 32)"
        )
    return raw


def read_key_file(path: str, where: str = "secret_key_file") -> bytes:
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    return parse_key(text, f"{where} {path}")


def load_key(env: Mapping[str, str], key_file: str | None) -> SecretBox | None:
    """The server's box: `CAPGATE_SECRET_KEY` first, then `secret_key_file`; None: no key
    is configured (runtime providers can then have no API key)."""
    if env.get(KEY_ENV):
        return SecretBox(parse_key(env[KEY_ENV], KEY_ENV))
    if key_file:
        return SecretBox(read_key_file(key_file))
    return None


def new_key_text() -> str:
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the secret key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self.key_id = hmac.new(key, b"capgate secret key id", hashlib.sha256).hexdigest()[:16]

    @staticmethod
    def _aad(provider: str, key_id: str) -> bytes:
        return b"capgate provider api_key\x00%s\x00%s" % (provider.encode(), key_id.encode())

    def seal(self, provider: str, secret: str) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)  # random: 2^-32 collision odds only after 2^32 seals
        data = self._aead.encrypt(nonce, secret.encode(), self._aad(provider, self.key_id))
        return Sealed(data, nonce, self.key_id)

    def open(self, provider: str, sealed: Sealed) -> str:
        if sealed.key_id != self.key_id:
            raise SecretUnreadable(
                f"provider {provider!r}: its api key was sealed with key {sealed.key_id}, "
                f"not the configured one ({self.key_id})"
            )
        aad = self._aad(provider, sealed.key_id)
        try:
            return self._aead.decrypt(sealed.nonce, sealed.ciphertext, aad).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError):
            raise SecretUnreadable(
                f"provider {provider!r}: its stored api key does not decrypt (altered, or "
                "copied from another provider)"
            ) from None
