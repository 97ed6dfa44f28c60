"""`POST /admin/keys/{name}/rotate`: a new secret for a key, the old one kept for a grace
period (docs/security.md#key-rotation). The new secret is in this answer only."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from capgate.core.limits import ScopeKind
from capgate.errors import InvalidRequest
from capgate.http.admin_io import json_response, known_params, read_body
from capgate.keys import HOOK_PREFIX, key_hash, new_secret
from capgate.rotation import MAX_GRACE_S
from capgate.store.base import ScopeStore
from capgate.store.records import scope_json


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_s: StrictInt | StrictFloat = Field(
        0,
        ge=0,
        le=MAX_GRACE_S,
        description="seconds the old secret keeps working (0, the default: refused at once; "
        "at most 90 days)",
    )


class KeyRotation:
    def __init__(self, store: ScopeStore) -> None:
        self._store = store

    async def rotate(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        spec = KeyRotate()
        if request.can_read_body or request.content_type == "application/json":
            spec = await read_body(request, KeyRotate)
        store, name = self._store, request.match_info["name"]
        key = await store.get_scope(ScopeKind.KEY, name)
        if str(key.extra.get("prefix") or "").startswith(HOOK_PREFIX):
            raise InvalidRequest(
                f'key "{name}" is a hook machine\'s: give the machine a new token by '
                "enrolling it again (docs/hook-mode.md), then revoke this key"
            )
        raw = new_secret(key.id)
        rotated = await store.rotate_key(name, key_hash(raw), float(spec.grace_s), request["actor"])
        return json_response({**scope_json(rotated), "key": raw})
