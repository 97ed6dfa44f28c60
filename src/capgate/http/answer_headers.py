"""The headers of the gateway's answers: the provider's (those its `UpstreamAnswer` passes
on) and capgate's `x-capgate-*` ones, read from the reservation the request was admitted
with; docs/clients.md lists them."""

from __future__ import annotations

import functools
from urllib.parse import quote

from capgate.core.limits import Metric, nano_to_decimal_str
from capgate.core.windows import format_reset_iso
from capgate.providers.base import UpstreamAnswer
from capgate.store.base import Reservation

CACHE_HEADER = "x-capgate-cache"  # on every answer of a cacheable request: hit or miss


def answer_headers(answer: UpstreamAnswer | None, res: Reservation | None) -> dict[str, str]:
    headers = dict(answer.headers) if answer is not None else {}
    if res is not None:
        headers["x-capgate-request-id"] = res.info.request_id
        if res.info.rule is not None:  # a routing rule chose the target (docs/routing.md)
            headers["x-capgate-rule"] = res.info.rule
        if res.fail_open:  # admitted while the store could not be reached: nothing held
            headers["x-capgate-fail-open"] = "true"
        if res.max_output is not None:  # tell the client its max_tokens was lowered
            headers["x-capgate-max-tokens"] = str(res.max_output)
        room = res.headroom
        if room is not None:  # the tightest limit, as it stood when this was admitted
            limit = room.limit
            what = f"{limit.metric.value}/{limit.window.value}"
            if limit.model is not None:
                what += f" ({limit.model})"
            headers["x-capgate-limit"] = (
                f"{room.scope.kind.value}={_header_name(room.scope.name)} {what}"
            )
            amount = room.remaining
            headers["x-capgate-remaining"] = (
                nano_to_decimal_str(amount) if limit.metric is Metric.COST_USD else str(amount)
            )
            headers["x-capgate-reset"] = format_reset_iso(room.resets_at)
    return headers


@functools.lru_cache(maxsize=1024)
def _header_name(name: str) -> str:
    return quote(name, safe="-_.~@+:")  # headers are ASCII; scope names need not be
