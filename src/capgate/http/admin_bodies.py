"""`GET /admin/requests/{request_id}/body`: a request's logged body and answer, redacted
(capgate.bodylog), for the callers allowed to read prompts.

Who may read them is decided in one place, `may_read_bodies`: prompts and answers are
more sensitive than the ledger's numbers, so a role that may read the ledger need not
read them.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from capgate.errors import NotFound, PermissionDenied
from capgate.http.admin_io import json_response, known_params
from capgate.http.sessions import Caller
from capgate.store.base import LedgerReader, RequestQuery
from capgate.store.bodies import BodyRecord, BodyStore
from capgate.store.records import iso

# Owners and admins (the admin key is the owner's); not viewers, who see no secrets, nor
# team admins. The route's rule (http/roles.py) says the same.
BODY_READERS = frozenset({"owner", "admin"})


def may_read_bodies(caller: Caller | None) -> bool:
    """Whether `caller` may read logged prompts and answers."""
    return caller is not None and caller.role in BODY_READERS


def body_json(body: BodyRecord) -> dict[str, Any]:
    return {
        "request_id": body.request_id,
        "logged": True,
        "created_at": iso(body.created_at),
        "request": body.request,
        "answer": body.answer,
        "request_bytes": body.request_bytes,
        "answer_bytes": body.answer_bytes,
        "truncated": body.truncated,
    }


class _Store(BodyStore, LedgerReader, Protocol):
    pass


class BodyRoutes:
    def __init__(self, store: _Store) -> None:
        self._store = store

    def routes(self, guard: Any) -> list[web.RouteDef]:
        return [web.get("/admin/requests/{request_id}/body", guard(self.body))]

    async def body(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        if not may_read_bodies(request.get("caller")):
            raise PermissionDenied(
                "Admin API: this caller may not read logged prompts and answers."
            )
        request_id = request.match_info["request_id"]
        found = await self._store.read_body(request_id)
        if found is not None:
            return json_response(body_json(found))
        if not await self._store.query_requests(RequestQuery(request_id=request_id, limit=1)):
            raise NotFound(f"no request with id {request_id!r} in the ledger")
        # A request that was not logged: its scopes did not log bodies then, or it is
        # older than the retention. Not an error: most requests are not logged.
        return json_response({"request_id": request_id, "logged": False})
