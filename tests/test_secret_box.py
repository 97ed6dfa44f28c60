"""The secret box: AES-256-GCM bound to a provider's name and the key's id; keys read as
hex or base64; fingerprints. Pure: no server."""

from __future__ import annotations

import base64
import os
from dataclasses import replace

import pytest

from capgate.config import ConfigError
from capgate.secret_box import SecretBox, SecretUnreadable, fingerprint, load_key, parse_key


def test_a_sealed_secret_opens_only_for_its_provider_and_key() -> None:
    key = os.urandom(32)
    box = SecretBox(key)
    sealed = box.seal("alpha", "sk-upstream-1")
    assert b"sk-upstream-1" not in sealed.ciphertext
    assert box.open("alpha", sealed) == "sk-upstream-1"
    assert SecretBox(key).open("alpha", sealed) == "sk-upstream-1"  # the same key, later
    with pytest.raises(SecretUnreadable, match="does not decrypt"):
        box.open("beta", sealed)  # moved onto another provider's row
    with pytest.raises(SecretUnreadable, match="sealed with key"):
        SecretBox(os.urandom(32)).open("alpha", sealed)
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(SecretUnreadable):
        box.open("alpha", replace(sealed, ciphertext=flipped))
    forged = SecretBox(os.urandom(32))
    with pytest.raises(SecretUnreadable):  # a claimed key id does not make it open
        box.open("alpha", replace(forged.seal("alpha", "x"), key_id=box.key_id))
    assert box.seal("alpha", "same").nonce != box.seal("alpha", "same").nonce


def test_keys_are_read_as_hex_or_base64_and_bad_ones_are_refused() -> None:
    raw = os.urandom(32)
    assert parse_key(raw.hex(), "k") == raw
    assert parse_key(base64.b64encode(raw).decode() + "\n", "k") == raw
    assert parse_key(base64.urlsafe_b64encode(raw).decode(), "k") == raw
    for bad in ("", "short", raw.hex()[:-2], base64.b64encode(raw[:16]).decode()):
        with pytest.raises(ConfigError, match="32 bytes"):
            parse_key(bad, "CAPGATE_SECRET_KEY")
    assert load_key({}, None) is None
    env_box = load_key({"CAPGATE_SECRET_KEY": raw.hex()}, "/nonexistent")  # env wins
    assert env_box is not None and env_box.key_id == SecretBox(raw).key_id
    with pytest.raises(ConfigError, match="cannot read"):
        load_key({}, "/nonexistent/key")


def test_a_fingerprint_is_short_stable_and_checkable() -> None:
    assert fingerprint("sk-abc") == "sha256:1460db1b"  # printf %s sk-abc | sha256sum
    assert fingerprint("sk-abc") == fingerprint("sk-abc") != fingerprint("sk-abd")
    assert len(fingerprint("sk-abc")) == len("sha256:") + 8
