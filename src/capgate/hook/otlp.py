"""Claude Code's OpenTelemetry log records (OTLP/HTTP JSON, `POST /v1/logs`) as model
calls: each `api_request` event is one call (HOOKS.md §8). Pure."""

from __future__ import annotations

from typing import Any

from capgate.core.money import Usage
from capgate.errors import InvalidRequest
from capgate.hook.report import MAX_TOKENS, Call

EVENT_NAMES = ("api_request", "claude_code.api_request")


def _value(value: Any) -> Any:
    """An OTLP AnyValue's content (intValue arrives as a string in OTLP JSON)."""
    if not isinstance(value, dict):
        return None
    for kind in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if kind in value:
            return value[kind]
    return None


def attributes(items: Any) -> dict[str, Any]:
    if items is None:
        return {}
    if not isinstance(items, list):
        raise InvalidRequest("attributes: expected a list")
    out = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise InvalidRequest("attributes: expected {key, value} objects")
        out[item["key"]] = _value(item.get("value"))
    return out


def _count(attrs: dict[str, Any], name: str) -> int:
    value = attrs.get(name, 0)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{name}: expected a number of tokens") from None
    if isinstance(value, bool) or not 0 <= number < MAX_TOKENS:
        raise InvalidRequest(f"{name}: expected a number of tokens from 0 to 2^40 - 1")
    return number


def _list(node: dict[str, Any], name: str) -> list[Any]:
    value = node.get(name, [])
    if not isinstance(value, list):
        raise InvalidRequest(f"{name}: expected a list")
    return value


def api_requests(body: Any) -> list[tuple[str | None, Call]]:
    """Every `api_request` record of an OTLP logs body as (session id, call); other
    records are ignored. InvalidRequest when the body is not OTLP logs JSON or an
    api_request lacks what a call needs."""
    if not isinstance(body, dict):
        raise InvalidRequest("expected an OTLP logs JSON object")
    out = []
    for resource in _list(body, "resourceLogs"):
        if not isinstance(resource, dict):
            raise InvalidRequest("resourceLogs: expected objects")
        for scope in _list(resource, "scopeLogs"):
            if not isinstance(scope, dict):
                raise InvalidRequest("scopeLogs: expected objects")
            for record in _list(scope, "logRecords"):
                if not isinstance(record, dict):
                    raise InvalidRequest("logRecords: expected objects")
                attrs = attributes(record.get("attributes"))
                name = attrs.get("event.name") or _value(record.get("body"))
                if name not in EVENT_NAMES:
                    continue
                out.append(_call(attrs))
    return out


def _call(attrs: dict[str, Any]) -> tuple[str | None, Call]:
    request_id, model = attrs.get("request_id"), attrs.get("model")
    if not isinstance(request_id, str) or not request_id or len(request_id) > 256:
        raise InvalidRequest("api_request: request_id missing")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise InvalidRequest("api_request: model missing")
    write = _count(attrs, "cache_creation_tokens")
    write_1h = min(write, _count(attrs, "cache_creation_1h_tokens"))
    usage = Usage(
        _count(attrs, "input_tokens"),
        _count(attrs, "output_tokens"),
        _count(attrs, "cache_read_tokens"),
        write - write_1h,
        write_1h,
    )
    session, prompt = attrs.get("session.id"), attrs.get("prompt.id")
    return (
        session if isinstance(session, str) and session else None,
        Call(request_id, prompt if isinstance(prompt, str) and prompt else None, model, usage),
    )
