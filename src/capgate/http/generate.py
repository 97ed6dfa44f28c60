"""`POST /generate` and `POST /generate-codex`: the simple API of the ai-cli-bridge project.

Request `{"systemPrompt"?, "userPrompt", "model"?}`; answer `{"content", "usage",
"cost_usd", "duration_ms"}`; errors `{"error": message}` with the HTTP status. Each call
becomes an ordinary Messages (`/generate`) or Chat Completions (`/generate-codex`)
request and goes through the same engine as every other: routed to any provider (a CLI or
an API), budgeted, recorded in the ledger.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from capgate.config import ServerConfig
from capgate.core.limits import nano_to_decimal_str
from capgate.errors import CapgateError, InvalidRequest
from capgate.http.dialects import client_of, for_client
from capgate.http.gateway import Gateway
from capgate.providers.base import Endpoint


class GenerateAPI:
    def __init__(self, gateway: Gateway, settings: ServerConfig) -> None:
        self._gateway = gateway
        self._settings = settings

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/generate", self.generate), web.post("/generate-codex", self.codex)]

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._run(request, Endpoint.MESSAGES, self._settings.generate_model)

    async def codex(self, request: web.Request) -> web.StreamResponse:
        return await self._run(request, Endpoint.CHAT, self._settings.generate_codex_model)

    async def _run(
        self, request: web.Request, endpoint: Endpoint, default_model: str
    ) -> web.StreamResponse:
        started, t0 = time.time(), time.perf_counter()
        request_id = self._gateway.new_request_id()
        body: dict[str, Any] = {"model": "", "max_tokens": self._settings.default_max_tokens}
        try:
            key = await self._gateway.authenticate(request)
            _, given = await self._gateway.read_json(request)
            system, prompt, body["model"] = _fields(given, default_model)
            if endpoint is Endpoint.MESSAGES:
                if system:
                    body["system"] = system
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                turns = [{"role": "system", "content": system}] if system else []
                body["messages"] = [*turns, {"role": "user", "content": prompt}]
            raw = orjson.dumps(body)
            admitted = await self._gateway.admit(
                request, endpoint, key, raw, body, started, t0, request_id
            )
        except CapgateError as exc:  # rendered once, here, in this door's shape
            return _refused(exc, request_id, client_of(request.headers))
        answer = await admitted.run()
        if not isinstance(answer, web.Response) or answer.status >= 400:
            return _from_dialect(answer)
        data = orjson.loads(answer.body) if isinstance(answer.body, bytes) else {}
        content, usage = _content(endpoint, data)
        cost = admitted.cost_nano or 0
        payload = {
            "content": content,
            "usage": usage,
            # The exact decimal, as a JSON number (ai-cli-bridge clients read a number).
            "cost_usd": orjson.Fragment(nano_to_decimal_str(cost).encode()),
            "duration_ms": round((time.perf_counter() - t0) * 1000),
            "model": data.get("model", body["model"]),
        }
        headers = {k: v for k, v in answer.headers.items() if k.startswith("x-capgate-")}
        return web.Response(
            body=orjson.dumps(payload), content_type="application/json", headers=headers
        )


def _fields(given: Any, default_model: str) -> tuple[str | None, str, str]:
    if not isinstance(given, dict):
        raise InvalidRequest("The body must be a JSON object with userPrompt.")
    prompt = given.get("userPrompt")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest("userPrompt: required, a non-empty string.")
    system = given.get("systemPrompt")
    if system is not None and not isinstance(system, str):
        raise InvalidRequest("systemPrompt: must be a string.")
    model = given.get("model", default_model)
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: must be a non-empty string.")
    return system or None, prompt, model


def _content(endpoint: Endpoint, data: dict[str, Any]) -> tuple[str, dict[str, int]]:
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    if endpoint is Endpoint.MESSAGES:
        blocks = data.get("content") if isinstance(data.get("content"), list) else []
        text = "".join(
            b.get("text", "")
            for b in blocks or []
            if isinstance(b, dict) and b.get("type") == "text"
        )
        return text, {
            "input_tokens": int(usage.get("input_tokens") or 0),
            "output_tokens": int(usage.get("output_tokens") or 0),
            "cache_read_input_tokens": int(usage.get("cache_read_input_tokens") or 0),
            "cache_creation_input_tokens": int(usage.get("cache_creation_input_tokens") or 0),
        }
    choices = data.get("choices") if isinstance(data.get("choices"), list) else []
    message = choices[0].get("message", {}) if choices and isinstance(choices[0], dict) else {}
    content = message.get("content") if isinstance(message, dict) else None
    details = usage.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    prompt = int(usage.get("prompt_tokens") or 0)
    return content if isinstance(content, str) else "", {
        "input_tokens": prompt - cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )


def _refused(exc: CapgateError, request_id: str, client: str | None) -> web.Response:
    """A refusal or error before forwarding, in ai-cli-bridge's shape."""
    shown = for_client(exc, client)
    headers = {"x-capgate-request-id": request_id}
    headers.update((k, v) for k, v in shown.headers.items() if k.lower() in _KEPT)
    if not shown.retryable:
        headers["x-should-retry"] = "false"
    return _error(shown.status, shown.message, headers)


_KEPT = ("retry-after", "x-should-retry", "x-capgate-request-id", "x-capgate-refusal")


def _from_dialect(answer: web.StreamResponse) -> web.StreamResponse:
    """An error answer of the call (an upstream's error passed on, or the call's own),
    in ai-cli-bridge's shape."""
    if not isinstance(answer, web.Response) or not isinstance(answer.body, bytes):
        return answer
    try:
        data = orjson.loads(answer.body)
        message = str(data["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = answer.body.decode("utf-8", "replace")[:1000]
    headers = {k: v for k, v in answer.headers.items() if k.lower() in _KEPT}
    return _error(answer.status, message, headers)
