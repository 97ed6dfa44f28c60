"""The composition root: builds every part from the settings and wires them together.
Nothing else creates stores, providers or apps; no module does work at import time."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from capgate.config import CLI_TYPES, Config, ProviderConfig, sqlite_path
from capgate.core.limits import Limit, Metric, ScopeKind, usd_to_nano
from capgate.core.windows import WindowKind
from capgate.dashboard.app import Dashboard
from capgate.http.admin import AdminAPI
from capgate.http.auth import admin_digest
from capgate.http.gateway import Gateway
from capgate.http.generate import GenerateAPI
from capgate.http.health import Health
from capgate.keys import display_prefix, key_hash, new_key
from capgate.mock.server import create_mock_app
from capgate.providers.base import Provider
from capgate.providers.cli import cli_provider
from capgate.providers.http import HTTPProvider
from capgate.routing import Router
from capgate.runtime import RuntimeSettings
from capgate.store.base import ScopeFields
from capgate.store.sqlite import SQLiteStore

DEMO_PROVIDER = "demo-mock"
DEMO_KEY = "demo"


@dataclass
class Built:
    app: web.Application
    store: SQLiteStore
    generated_admin_key: str | None = None  # shown once when capgate made it
    demo_key: str | None = None
    notes: list[str] = field(default_factory=list)


async def _start_builtin_mock() -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(create_mock_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def _admin_digest(store: SQLiteStore, config: Config, demo: bool) -> tuple[bytes, str | None]:
    """The admin key: from the settings; else the one stored at first start; else (and
    always in demo mode) a new one, stored as a hash and shown once."""
    if config.server.admin_key:
        return admin_digest(config.server.admin_key), None
    stored = await store.get_meta("admin_key_hash")
    if stored and not demo:
        return bytes.fromhex(stored), None
    raw = "sk-cg-admin-" + secrets.token_urlsafe(32)
    digest = admin_digest(raw)
    await store.set_meta("admin_key_hash", digest.hex())
    return digest, raw


async def _demo_key(store: SQLiteStore) -> str:
    """A fresh demo key with a small daily budget (replaced at every demo start, since a
    raw key cannot be shown twice)."""
    names = {scope.name for scope in await store.list_scopes(ScopeKind.KEY)}
    if DEMO_KEY in names:
        await store.delete_scope(ScopeKind.KEY, DEMO_KEY, "demo")
    key_id, raw = new_key()
    limits = (
        Limit(Metric.COST_USD, WindowKind.DAY, usd_to_nano("10.00")),
        Limit(Metric.REQUESTS, WindowKind.MINUTE, 60),
    )
    fields = ScopeFields(limits=limits, metadata={"demo": True})
    await store.create_scope(
        ScopeKind.KEY, DEMO_KEY, fields, scope_id=key_id, secret_hash=key_hash(raw),
        prefix=display_prefix(raw), actor="demo",
    )  # fmt: skip
    return raw


async def build(
    config: Config, *, demo: bool = False, environ: Mapping[str, str] | None = None
) -> Built:
    """Everything, wired. `environ` is what CLI providers' programs inherit (filtered)."""
    settings = config.server
    environ = os.environ if environ is None else environ
    store = SQLiteStore(
        sqlite_path(settings.database_url),
        lease_seconds=settings.lease_seconds,
        busy_timeout_s=settings.store_busy_timeout_s,
    )
    await store.start()
    runners: list[web.AppRunner] = []
    providers: dict[str, Provider] = {}
    provider_configs = list(config.providers)
    if demo and not any(p.type == "mock" for p in provider_configs):
        provider_configs.append(ProviderConfig(name=DEMO_PROVIDER, type="mock"))
    provider_keys = {pc.api_key for pc in provider_configs if pc.api_key}
    for pc in provider_configs:
        if pc.type in CLI_TYPES:  # a local CLI; fails here if its command is missing
            providers[pc.name] = cli_provider(pc, environ, provider_keys)
            continue
        base_url = pc.base_url
        if pc.type == "mock" and base_url is None:
            runner, base_url = await _start_builtin_mock()
            runners.append(runner)
        providers[pc.name] = HTTPProvider(pc, base_url)

    # Prices, credit weights and the default timezone: the config file's, then what an
    # admin changed in the dashboard (stored in the database, followed while running).
    runtime = RuntimeSettings(config)
    await runtime.refresh(store)
    runtime.watch(store)
    configs = {pc.name: pc for pc in provider_configs}
    router = Router(list(config.models), providers, configs, settings)
    gateway = Gateway(store, router, runtime.pricing, settings)
    digest, generated = await _admin_digest(store, config, demo)
    admin = AdminAPI(store, digest, runtime=runtime, routing=router.describe)

    app = web.Application(client_max_size=int(settings.max_request_mb * 1024 * 1024) + 1)
    app.add_routes(gateway.routes())
    app.add_routes(GenerateAPI(gateway, settings).routes())
    app.add_routes(admin.routes())
    app.add_routes(Dashboard(admin.access).routes())
    app.add_routes(Health(store).routes())

    async def end_streams(_: web.Application) -> None:
        await admin.events.close()  # open live feeds would hold the shutdown otherwise

    async def shutdown(_: web.Application) -> None:
        await runtime.close()
        await gateway.drain()
        for provider in providers.values():
            await provider.close()
        for runner in runners:
            await runner.cleanup()
        await store.close()

    app.on_shutdown.append(end_streams)
    app.on_cleanup.append(shutdown)
    built = Built(app, store, generated)
    if demo:
        built.demo_key = await _demo_key(store)
    return built
