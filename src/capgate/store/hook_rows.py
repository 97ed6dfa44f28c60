"""Hook mode's rows -> records and the few decisions both engines make the same way
(the machine's key name, its metadata, one code per id)."""

from __future__ import annotations

import orjson

from capgate.core.bounds import MAX_NAME
from capgate.core.limits import Scope, Status
from capgate.errors import Conflict, InvalidRequest, NotFound
from capgate.store.base import Enrolment
from capgate.store.records import HookCode, HookMachine
from capgate.store.rows import Row


def hook_code_from_row(row: Row) -> HookCode:
    return HookCode(
        id=bytes(row["code_hash"]).hex()[:8],
        user=row["user"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        used_at=row["used_at"],
        machine=row["machine"],
        actor=row["actor"],
        agents=tuple(orjson.loads(row["agents"])),
    )


def hook_machine_from_row(row: Row) -> HookMachine:
    files = row["tamper_files"]
    return HookMachine(
        key_id=row["key_id"],
        last_seen=row["last_seen"],
        hook_version=row["hook_version"],
        tampered_at=row["tampered_at"],
        tamper_files=tuple(orjson.loads(files)) if files else (),
    )


def machine_metadata(enrolment: Enrolment, now: float) -> dict[str, object]:
    """A machine key's `metadata`: what it said of itself when it enrolled."""
    return {
        "hook": {
            "hostname": enrolment.hostname,
            "os": enrolment.os,
            "os_user": enrolment.os_user,
            "agents": list(enrolment.agents),
            "installed_at": now,
        }
    }


def machine_base(user: str, hostname: str) -> str:
    """`<user>@<hostname>`, cut so that it fits a name with a `-NNN` (core/bounds.py)."""
    return f"{user}@{hostname}"[: MAX_NAME - 4]


def machine_name(user: str, hostname: str, taken: set[str]) -> str:
    """`<user>@<hostname>` (`machine_base`), or with `-2`, `-3`... when that key name is
    taken."""
    base = machine_base(user, hostname)
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def one_code(code_id: str, found: int) -> None:
    """NotFound / Conflict unless exactly one code has the id `code_id`."""
    if found == 0:
        raise NotFound(f'no install code with id "{code_id}"')
    if found > 1:
        raise Conflict(f'the id "{code_id}" names {found} install codes: give more of it')


def code_json(code: HookCode) -> dict[str, object]:
    """What the audit log keeps of a code (never the code)."""
    return {"id": code.id, "user": code.user, "expires_at": code.expires_at}


def switched_metadata(user: Scope, logout: bool | None) -> dict[str, object] | None:
    """A person's metadata after a kill (`logout` marked: whether their machines log the
    agent out) or a resume (`logout` None: the mark cleared); None: unchanged. A revoked
    person cannot come back (InvalidRequest)."""
    if user.status is Status.REVOKED:
        raise InvalidRequest(f'user "{user.name}" is revoked; revocation is final')
    metadata = dict(user.extra.get("metadata") or {})
    if logout is not None:
        return {**metadata, "hook_logout": logout}
    if "hook_logout" not in metadata:
        return None
    del metadata["hook_logout"]
    return metadata
