"""Reading fields of an untrusted JSON body for translation: each reader returns the
value with its type or raises InvalidRequest naming the field by its path, so that odd
input never ends in a KeyError or TypeError. Pure."""

from __future__ import annotations

import re
from typing import Any

from capgate.errors import InvalidRequest

JSON = dict[str, Any]

# Anthropic accepts these characters in tool ids; others (some OpenAI-compatible servers
# write ids like "functions.get_weather:0") are replaced the same way wherever they appear,
# so a call and its result still match.
_UNSAFE_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)


def tool_id(value: str) -> str:
    """An id Anthropic accepts; the same input always gives the same id."""
    return _UNSAFE_ID_CHARS.sub("_", value)


def invalid(path: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{path}: {problem}")


def obj(value: Any, path: str) -> JSON:
    if not isinstance(value, dict):
        raise invalid(path, "must be an object")
    return value


def array(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise invalid(path, "must be an array")
    return value


def string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise invalid(path, "must be a string")
    return value


def integer(value: Any, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(path, "must be an integer")
    return value


def number(value: Any, path: str) -> float | int:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise invalid(path, "must be a number")
    return value


def reject(body: JSON, fields: tuple[str, ...], target: str) -> None:
    """Refuse fields that change what the model does and have no counterpart."""
    for name in fields:
        if body.get(name) is not None:
            raise invalid(name, f"has no counterpart in the {target} format")
