"""A hit given to its client: the kept answer, whole or as the same stream of events.
The events were kept as the client was sent them (after translation, the usage chunk
hidden as it was), so a replay needs no parsing: one write."""

from __future__ import annotations

from aiohttp import web

from capgate.cache.memory import KeptAnswer

HIT_HEADER = "x-capgate-cache"  # on every answer of a cacheable request: hit or miss


async def replay(
    request: web.Request, answer: KeptAnswer, headers: dict[str, str]
) -> web.StreamResponse:
    headers = {**headers, "content-type": answer.content_type, HIT_HEADER: "hit"}
    if not answer.stream:
        return web.Response(status=answer.status, body=answer.body, headers=headers)
    headers["cache-control"] = "no-cache"
    response = web.StreamResponse(status=answer.status, headers=headers)
    await response.prepare(request)
    await response.write_eof(answer.body)
    return response
