"""Reading admin requests and writing their answers: JSON bodies validated by pydantic with
messages that name the bad field, query parameters, JSON responses."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from capgate.errors import InvalidRequest
from capgate.http.admin_models import parse_time

NO_STORE = {"cache-control": "no-store"}


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=NO_STORE
    )


async def read_body(request: web.Request, model: type[BaseModel]) -> Any:
    if request.content_type != "application/json":
        raise InvalidRequest("Content-Type must be application/json.")
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "body"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise InvalidRequest("; ".join(problems)) from None


def int_param(params: Any, name: str) -> int | None:
    value = params.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest(f"{name}: must be a whole number") from None


def time_param(params: Any, name: str) -> float | None:
    try:
        return parse_time(params.get(name))
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}") from None
