"""`GET|PATCH /admin/settings`: price overrides, credit weights, the default timezone and
the alerts' defaults, changed while the server runs (see `capgate.runtime`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from capgate.errors import InvalidRequest
from capgate.http.admin_io import json_response, read_body

if TYPE_CHECKING:
    from capgate.http.admin import AdminAPI

Amount = StrictStr | StrictInt | StrictFloat


class PriceIn(BaseModel):
    """USD per million tokens, at most 6 decimals."""

    model_config = ConfigDict(extra="forbid")
    input: Amount
    output: Amount
    cache_write: Amount | None = None
    cache_write_1h: Amount | None = None
    cache_read: Amount | None = None

    def entry(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.model_dump().items() if v is not None}


class SettingsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pricing: dict[str, PriceIn] | None = Field(
        None,
        description="model name or glob -> price; replaces the whole map; null: the config file's",
    )
    credit_weights: dict[str, StrictInt] | None = Field(
        None,
        description="model glob -> credits per request, first match wins; null: the config file's",
    )
    timezone: str | None = Field(
        None, description="IANA name: the default timezone of new scopes and of the overview"
    )

    alert_rules: list[dict[str, Any]] | None = Field(
        None, description="the server's default alert rules; null: the config file's"
    )
    alerts_allow_private_targets: bool | None = Field(
        None, description="webhooks may point at private or loopback addresses"
    )

    def changes(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.model_fields_set:
            value = getattr(self, name)
            if name == "pricing" and value is not None:
                value = {model: price.entry() for model, price in value.items()}
            out[name] = value
        return out


class SettingsRoutes:
    def __init__(self, api: AdminAPI) -> None:
        self.api = api

    def _answer(self) -> web.Response:
        runtime = self.api.runtime
        return json_response(
            {
                **runtime.effective(),
                "sources": runtime.sources(),
                "pricing_version": runtime.pricing.version,
            }
        )

    async def show(self, request: web.Request) -> web.Response:
        await self.api.runtime.refresh(self.api.store)
        return self._answer()

    async def update(self, request: web.Request) -> web.Response:
        body: SettingsUpdate = await read_body(request, SettingsUpdate)
        try:
            await self.api.runtime.change(self.api.store, body.changes(), request["actor"])
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        return self._answer()
