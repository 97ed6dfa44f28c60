"""Named admins and their API tokens: the store port's part (`AdminStore`, part of
`base.Store`) and its records.

Tables (SQLite migration 13, PostgreSQL 7): `admins` (name, role, teams as a JSON list,
the password's scrypt hash with its parameters, status, created/updated) and
`admin_tokens` (only the SHA-256 of a token, a display prefix, a label, the admin, when it
was made, expires and was revoked; a rotated token keeps its previous hash in `old_hash`,
valid until `old_until`, so the old secret is refused afterwards as *rotated*, not as
unknown). A dashboard session carries the admin's name as its actor.

Every change writes an audit entry (target `admin:<name>`), never a hash: `admin_json` is
what the audit log and the admin API show of an admin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from capgate.store.records import iso

ROLES = ("owner", "admin", "viewer", "team-admin")
ADMIN_STATUSES = ("active", "disabled")


@dataclass(frozen=True, slots=True)
class Admin:
    name: str
    role: str
    teams: tuple[str, ...]
    status: str
    password_hash: str | None  # `scrypt$n$r$p$salt$hash`; None: no password (tokens only)
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class AdminToken:
    id: str
    admin: str
    label: str
    prefix: str  # the token's first characters, to recognise it
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    rotated_at: float | None  # the last rotation
    old_until: float | None  # the secret before it works until then


@dataclass(frozen=True, slots=True)
class TokenMatch:
    """A presented token's row, and whether it was its secret from before a rotation."""

    token: AdminToken
    old: bool


def admin_json(admin: Admin) -> dict[str, Any]:
    return {
        "name": admin.name,
        "role": admin.role,
        "teams": list(admin.teams),
        "status": admin.status,
        "has_password": admin.password_hash is not None,
        "created_at": iso(admin.created_at),
        "updated_at": iso(admin.updated_at),
    }


def token_json(token: AdminToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "admin": token.admin,
        "label": token.label,
        "prefix": token.prefix,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
        "rotated_at": iso(token.rotated_at),
        "old_valid_until": iso(token.old_until),
    }


ADMIN_COLUMNS = "name, role, teams, status, password_hash, created_at, updated_at"
GRANT_COLUMNS = (
    "id, admin, label, prefix, created_at, expires_at, revoked_at, rotated_at, old_until"
)


class AdminStore(Protocol):
    """Named admins (`capgate admins ...`, `/admin/admins`) and their API tokens. Every
    change writes one audit entry (target `admin:<name>`) with `actor`; a change of
    password, a disable or a delete also ends the admin's dashboard sessions."""

    async def create_admin(
        self,
        name: str,
        role: str,
        teams: tuple[str, ...],
        password_hash: str | None,
        actor: str = "admin",
    ) -> Admin:
        """Conflict: the name is taken. Audit action `admin-create`."""

    async def get_admin(self, name: str) -> Admin | None: ...

    async def list_admins(self) -> list[Admin]:
        """By name."""

    async def update_admin(
        self,
        name: str,
        *,
        role: str | None = None,
        teams: tuple[str, ...] | None = None,
        status: str | None = None,
        password_hash: str | None = None,
        actor: str = "admin",
    ) -> Admin:
        """Change what is given (None: keep). NotFound. Audit action `admin-update`
        (`admin-password` when only the password changed)."""

    async def delete_admin(self, name: str, actor: str = "admin") -> None:
        """With its tokens and sessions. NotFound. Audit action `admin-delete`."""

    async def create_admin_token(
        self,
        admin: str,
        token_id: str,
        token_hash: bytes,
        prefix: str,
        label: str,
        expires_at: float | None,
        actor: str = "admin",
    ) -> AdminToken:
        """NotFound: no such admin. Audit action `admin-token`."""

    async def list_admin_tokens(self, admin: str) -> list[AdminToken]:
        """Newest first, revoked ones too."""

    async def find_admin_token(self, token_hash: bytes) -> TokenMatch | None:
        """The token whose secret (or whose secret before its last rotation) hashes to
        `token_hash`, whatever its state; None: no such token."""

    async def revoke_admin_token(
        self, admin: str, token_id: str, actor: str = "admin"
    ) -> AdminToken:
        """NotFound. Audit action `admin-token-revoke`."""

    async def rotate_admin_token(
        self,
        admin: str,
        token_id: str,
        token_hash: bytes,
        prefix: str,
        grace_s: float,
        actor: str = "admin",
    ) -> AdminToken:
        """A new secret; the current one keeps working `grace_s` seconds more. NotFound;
        InvalidRequest: revoked. Audit action `admin-token-rotate`."""
