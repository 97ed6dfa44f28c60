"""Reading admin requests and writing their answers: JSON bodies validated by pydantic with
messages that name the bad field, query parameters, JSON responses."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError

from capgate.core.bounds import MAX_INT
from capgate.errors import InvalidRequest
from capgate.http.admin_models import parse_time
from capgate.http.door import GatewayRequest

NO_STORE = {"cache-control": "no-store"}


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=NO_STORE
    )


async def read_body(request: web.Request, model: type[BaseModel]) -> Any:
    if request.content_type != "application/json":
        raise InvalidRequest("Content-Type must be application/json.")
    try:
        raw = await request.read()
    except (BadHttpMessage, RequestPayloadError):
        raise InvalidRequest(undecodable_body(request)) from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "body"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise InvalidRequest("; ".join(problems)) from None


def undecodable_body(request: GatewayRequest) -> str:
    encoding = request.headers.get("content-encoding", "")[:40]
    return f"The request body could not be read as its Content-Encoding ({encoding!r}) says."


def known_params(params: Any, allowed: Collection[str]) -> None:
    """Refuse query parameters a route does not take: a typo (`stauts=402`) would
    otherwise answer everything as if unfiltered."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        names = ", ".join(unknown)
        raise InvalidRequest(
            f"unknown query parameter(s): {names} (this route takes: "
            f"{', '.join(sorted(allowed)) or 'none'})"
        )


def choice_param(params: Any, name: str, choices: Collection[str]) -> str | None:
    value = params.get(name)
    if value in (None, ""):
        return None
    if value not in choices:
        raise InvalidRequest(f"{name}: one of {', '.join(choices)}")
    return str(value)


def int_param(
    params: Any, name: str, minimum: int | None = None, maximum: int = MAX_INT
) -> int | None:
    """A whole-number query parameter within [minimum, maximum] (at most what the
    store's 64-bit columns hold), or InvalidRequest naming it."""
    value = params.get(name)
    if value in (None, ""):
        return None
    try:
        number = int(value) if len(value) <= 40 else None
    except ValueError:
        number = None
    if number is None:
        raise InvalidRequest(f"{name}: must be a whole number")
    if minimum is not None and number < minimum:
        raise InvalidRequest(f"{name}: must be at least {minimum}")
    if number > maximum:
        raise InvalidRequest(f"{name}: must be at most {maximum}")
    return number


def time_param(params: Any, name: str) -> float | None:
    try:
        return parse_time(params.get(name))
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}") from None
