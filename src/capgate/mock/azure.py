"""A mock Azure OpenAI: `POST /openai/deployments/{deployment}/chat/completions
?api-version=...` with the key in `api-key`, answering as OpenAI does (the main mock's
answers), streams starting with Azure's prompt-filter chunk (no choices), and errors in
Azure's shape (`{"error": {"code", "message"}}`, no `type`)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping

import orjson
from aiohttp import web

from capgate.mock import responses
from capgate.mock.directives import last_user_text, parse_directives
from capgate.mock.server import REQUESTS, _record

API_VERSIONS = frozenset({"2024-06-01", "2024-10-21", "2025-04-01-preview"})
DEPLOYMENTS: web.AppKey[Mapping[str, str]] = web.AppKey("deployments")  # name -> model
API_KEY: web.AppKey[str] = web.AppKey("api_key")


def create_azure_app(api_key: str, deployments: Mapping[str, str]) -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[REQUESTS] = deque(maxlen=100)
    app[API_KEY] = api_key
    app[DEPLOYMENTS] = dict(deployments)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", _chat)
    return app


def error(status: int, message: str, code: str | None = None) -> web.Response:
    body = {"error": {"code": code or str(status), "message": message}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def _chat(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    request.app[REQUESTS].append(_record(request, raw))
    if request.headers.get("api-key") != request.app[API_KEY]:
        return error(401, "Access denied due to invalid subscription key or wrong API endpoint.")
    if request.query.get("api-version") not in API_VERSIONS:
        return error(404, "Resource not found")
    model = request.app[DEPLOYMENTS].get(request.match_info["deployment"])
    if model is None:
        return error(
            404, "The API deployment for this resource does not exist.", "DeploymentNotFound"
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error(400, "Invalid JSON")
    directives = parse_directives(last_user_text(body))
    if directives.status is not None:
        message = f"Requests to the ChatCompletions_Create Operation have exceeded a limit (mock:status={directives.status})."
        return error(directives.status, message)
    body["model"] = model  # the deployment's model answers, whatever the body said
    if body.get("stream") is not True:
        answer = responses.openai_chat(body)
        answer["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": {}}]
        return web.Response(body=orjson.dumps(answer), content_type="application/json")
    response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    filters = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
               "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}  # fmt: skip
    await response.write(b"data: " + orjson.dumps(filters) + b"\n\n")
    for event in responses.openai_chat_stream(body):
        await response.write(event)
        await asyncio.sleep(0)
    await response.write_eof()
    return response
