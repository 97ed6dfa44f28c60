"""The composition root: builds every part from the settings and wires them together.
Nothing else creates stores, providers or apps; no module does work at import time."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from capgate import demo_secrets
from capgate.alerts.watcher import AlertWatcher
from capgate.bodylog.redact import Redactor, compile_custom
from capgate.bodylog.service import BodyLog
from capgate.cache.exact import ExactCache
from capgate.cache.service import ResponseCache
from capgate.cache.similar import SemanticAnswers
from capgate.config import Config, ConfigError, ServerConfig, is_postgres, sqlite_path
from capgate.core.limits import Limit, Metric, ScopeKind, Status, usd_to_nano
from capgate.core.windows import WindowKind
from capgate.dashboard.app import Dashboard
from capgate.demo_secrets import secrets_path
from capgate.http.admin import AdminAPI
from capgate.http.auth import PreviousAdminKey, admin_digest
from capgate.http.client_address import parse_networks
from capgate.http.door import Handler
from capgate.http.edge import json_errors
from capgate.http.extensions import Extensions
from capgate.http.gateway import Gateway
from capgate.http.generate import GenerateAPI
from capgate.http.health import Health
from capgate.http.hook import HookAPI
from capgate.http.hook_extra import HookExtras
from capgate.http.metrics import MetricsAPI
from capgate.keys import display_prefix, key_hash, key_id_of, matches, new_key
from capgate.live_routing import LiveRouting
from capgate.logs import logged_admin_routes
from capgate.metrics import Metrics
from capgate.mock.server import create_mock_app
from capgate.provider_config import CLI_TYPES, CLOUD_TYPES, ProviderConfig
from capgate.providers.base import Provider
from capgate.providers.cli import cli_provider
from capgate.providers.cloud import cloud_provider
from capgate.providers.http import HTTPProvider
from capgate.retention import LedgerPruner
from capgate.routing import Router
from capgate.rules.live import LiveRules
from capgate.rules.parse import parse_rules
from capgate.rules.policy import rule_policies
from capgate.runtime import RuntimeSettings
from capgate.secret_box import load_key
from capgate.store.base import ScopeFields, Store
from capgate.store.pg import PostgresStore, state_dir_of
from capgate.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from capgate.traces import Traces

DEMO_PROVIDER = "demo-mock"
DEMO_KEY = "demo"


@dataclass
class Keys:
    """The admin key and the demo key, decided once per start: by `build`, or by the parent
    of `serve --workers` before its workers start (each worker is handed the digest)."""

    admin_digest: bytes
    generated_admin_key: str | None = None  # shown when capgate made (or kept) it
    demo_key: str | None = None
    notes: list[str] = field(default_factory=list)  # what a demo start replaced
    secrets_file: Path | None = None  # where a demo start keeps its raw keys


@dataclass
class Built:
    app: web.Application
    store: Store
    keys: Keys
    metrics: Metrics | None = None  # this process's request metrics, when they are on
    gateway: dict[str, Handler] = field(default_factory=dict)  # for the fast path, by path


async def _start_builtin_mock() -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(create_mock_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def _admin_digest(
    store: Store, config: Config, demo: bool, kept: dict[str, str], notes: list[str]
) -> tuple[bytes, str | None]:
    """The admin key: from the settings; else the one stored at first start; in demo mode
    the one kept in the secrets file while it still matches (or the database is new); else
    a new one, stored as a hash and shown (in demo mode also kept in the secrets file)."""
    if config.server.admin_key:
        return admin_digest(config.server.admin_key), None
    stored = await store.get_meta("admin_key_hash")
    if stored and not demo:
        return bytes.fromhex(stored), None
    raw = kept.get("admin_key")
    if raw and (not stored or admin_digest(raw).hex() == stored):
        await store.set_meta("admin_key_hash", admin_digest(raw).hex())  # a new database
        return admin_digest(raw), raw
    if stored:
        why = "it was not in the secrets file" if not raw else "the secrets file held another"
        notes.append(
            f"The admin key was REPLACED ({why}): the old one and its dashboard sessions no "
            "longer work. Export the new CAPGATE_ADMIN_KEY below."
        )
    raw = "sk-cg-admin-" + secrets.token_urlsafe(32)
    digest = admin_digest(raw)
    await store.set_meta("admin_key_hash", digest.hex())
    if demo:
        kept["admin_key"] = raw
    return digest, raw


async def _demo_key(store: Store, kept: dict[str, str], notes: list[str]) -> str:
    """The demo key kept in the secrets file while it is still the active `demo` key (made
    again in a new database); else a fresh one with a small daily budget, since a raw key
    cannot be read back."""
    raw = kept.get("demo_key")
    key_id = key_id_of(raw) if raw else None
    entry = store.key_by_id(key_id) if key_id else None
    if raw and entry is not None:
        scope, secret_hash = entry
        if scope.name == DEMO_KEY and scope.status is Status.ACTIVE and matches(raw, secret_hash):
            return raw
    names = {scope.name for scope in await store.list_scopes(ScopeKind.KEY)}
    if DEMO_KEY in names:
        await store.delete_scope(ScopeKind.KEY, DEMO_KEY, "demo")
        why = "it was not in the secrets file" if not raw else "the kept one is no longer active"
        notes.append(f"The demo key was REPLACED ({why}). Export the new CAPGATE_KEY below.")
    elif raw and key_id and not names:  # a new database: the kept key is made again
        return await _create_demo_key(store, kept, key_id, raw)
    key_id, raw = new_key()
    return await _create_demo_key(store, kept, key_id, raw)


async def _create_demo_key(store: Store, kept: dict[str, str], key_id: str, raw: str) -> str:
    limits = (
        Limit(Metric.COST_USD, WindowKind.DAY, usd_to_nano("10.00")),
        Limit(Metric.REQUESTS, WindowKind.MINUTE, 60),
    )
    fields = ScopeFields(limits=limits, metadata={"demo": True})
    await store.create_scope(
        ScopeKind.KEY, DEMO_KEY, fields, scope_id=key_id, secret_hash=key_hash(raw),
        prefix=display_prefix(raw), actor="demo",
    )  # fmt: skip
    kept["demo_key"] = raw
    return raw


def new_store(settings: ServerConfig) -> Store:
    """The engine `database_url` names (not started)."""
    if is_postgres(settings.database_url):
        return PostgresStore(
            settings.database_url,
            lease_seconds=settings.lease_seconds,
            pool_size=settings.pg_pool_size,
            state_dir=settings.state_dir,
            statement_timeout_s=settings.pg_statement_timeout_s,
        )
    return SQLiteStore(
        sqlite_path(settings.database_url),
        lease_seconds=settings.lease_seconds,
        busy_timeout_s=settings.store_busy_timeout_s,
    )


def _local_base(settings: ServerConfig) -> str:
    """Where files kept beside the database go (the demo secrets): beside the SQLite
    file, or in the state directory for PostgreSQL."""
    if is_postgres(settings.database_url):
        return str(state_dir_of(settings.database_url, settings.state_dir) / "capgate")
    return sqlite_path(settings.database_url)


async def open_store(config: Config) -> Store:
    """The store, started: migrated, this process's lease and journal claimed."""
    store = new_store(config.server)
    await store.start()
    return store


async def decide_keys(store: Store, config: Config, *, demo: bool) -> Keys:
    """The admin key, and in demo mode the demo key, kept in the secrets file."""
    secrets_file = secrets_path(_local_base(config.server)) if demo else None
    kept = demo_secrets.load(secrets_file)
    notes: list[str] = []
    digest, generated = await _admin_digest(store, config, demo, kept, notes)
    demo_key = await _demo_key(store, kept, notes) if demo else None
    if demo:
        demo_secrets.save(secrets_file, kept)
    return Keys(digest, generated, demo_key, notes, secrets_file)


def _traces(settings: ServerConfig) -> Traces | None:
    """OpenTelemetry tracing when `otel_endpoint` is set. Its module (and OpenTelemetry)
    is imported only then: with tracing off, the server never loads it."""
    if settings.otel_endpoint is None:
        return None
    try:
        from capgate.traces import Traces  # the optional extra capgate[otel]
    except ImportError as exc:
        raise ConfigError(
            f"otel_endpoint is set, but OpenTelemetry cannot be imported ({exc.name}): "
            "pip install 'capgate[otel]'"
        ) from None
    return Traces(settings.otel_endpoint, settings.otel_sample_ratio)


async def build(
    config: Config,
    *,
    demo: bool = False,
    environ: Mapping[str, str] | None = None,
    keys: Keys | None = None,
) -> Built:
    """Everything, wired. `environ` is what CLI providers' programs inherit (filtered);
    `keys` were decided by the parent of `serve --workers` (else they are decided here)."""
    settings = config.server
    environ = os.environ if environ is None else environ
    box = load_key(environ, settings.secret_key_file)  # a bad key stops the start here
    store = await open_store(config)
    runners: list[web.AppRunner] = []
    providers: dict[str, Provider] = {}
    provider_configs = list(config.providers)
    if demo and not any(p.type == "mock" for p in provider_configs):
        provider_configs.append(ProviderConfig(name=DEMO_PROVIDER, type="mock"))
    provider_keys = {
        secret
        for pc in provider_configs
        for secret in (pc.api_key, pc.aws_secret_access_key, pc.aws_session_token)
        if secret
    }  # kept from the CLIs' environment
    for pc in provider_configs:
        if pc.type in CLI_TYPES:  # a local CLI; fails here if its command is missing
            providers[pc.name] = cli_provider(pc, environ, provider_keys)
            continue
        if pc.type in CLOUD_TYPES:  # Bedrock, Vertex AI, Azure OpenAI
            providers[pc.name] = cloud_provider(pc, environ)
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
    # Routing rules (docs/routing.md): the file's, or those an admin set at runtime; no
    # policy at all while there are none.
    rules = LiveRules(
        config.rules,
        lambda data, serves: parse_rules(data, serves, settings.timezone),
        lambda compiled: rule_policies(compiled, router, store, settings.default_max_tokens),
    )
    # Providers and routes an admin added at runtime, after the file's (live_routing.py).
    live = LiveRouting(configs, providers, list(config.models), router, box, rules)
    await live.refresh(store)
    live.watch(store)
    metrics = Metrics() if settings.metrics_enabled else None
    traces = _traces(settings)
    body_log = BodyLog(
        store, Redactor(compile_custom(settings.redact_patterns)),
        settings.body_log_max_bytes, settings.body_retention_days, settings.log_bodies,
    )  # fmt: skip
    if metrics is not None:
        metrics.body_log = body_log.results
    answers = _answer_cache(store, settings)
    gateway = Gateway(
        store, router, runtime.pricing, settings, metrics=metrics, traces=traces,
        body_log=body_log, extensions=Extensions(policies=rules.policies, cache=answers),
    )  # fmt: skip
    rules.bind(gateway.adopt_policies)
    keys = keys or await decide_keys(store, config, demo=demo)
    admin = AdminAPI(
        store, keys.admin_digest, runtime=runtime, routing=router.describe,
        min_clamped_tokens=settings.min_clamped_tokens, public_url=settings.public_url,
        trusted_proxies=parse_networks(settings.trusted_proxies), live=live,
        previous_admin=PreviousAdminKey.of(settings),
    )  # fmt: skip
    hook = HookAPI(store, runtime.pricing, settings)
    hook_extras = HookExtras(hook)

    app = web.Application(
        client_max_size=int(settings.max_request_mb * 1024 * 1024) + 1, middlewares=[json_errors]
    )
    app.add_routes(gateway.routes())
    app.add_routes(GenerateAPI(gateway, settings).routes())
    app.add_routes(logged_admin_routes(admin.routes()))
    app.add_routes(Dashboard(admin.access).routes())
    app.add_routes(Health(store).routes())
    app.add_routes(hook.routes())
    app.add_routes(hook_extras.routes())
    app.on_startup.append(hook_extras.start)  # the lease expiry
    if metrics is not None:
        api = MetricsAPI(
            metrics, store, router.breakers, settings.metrics_token, settings.metrics_key_series
        )
        app.add_routes(api.routes())

    async def end_streams(_: web.Application) -> None:
        await admin.events.close()  # open live feeds would hold the shutdown otherwise

    async def shutdown(_: web.Application) -> None:
        if alerts is not None:
            await alerts.close()
        await runtime.close()
        await hook_extras.close()
        await gateway.drain()
        answers.close()
        await live.close()
        await body_log.close()  # after the drain: the last requests' bodies are queued
        if pruner is not None:
            await pruner.close()
        if traces is not None:  # after the drain: settlements end their spans
            await traces.close()
        for provider in providers.values():
            await provider.close()
        for runner in runners:
            await runner.cleanup()
        await store.close()

    # Alerts: a background task per process, off the request path (docs/operations.md).
    alerts = None
    if settings.alerts_enabled:
        alerts = AlertWatcher(
            store, router.breakers.state, runtime.effective, settings.alerts_interval_s,
            settings.alerts_max_attempts, settings.alerts_retry_base_s,
        )  # fmt: skip
        alerts.start()
    body_log.start()  # the writer and the retention job (hourly)
    pruner = None
    if settings.ledger_retention_days is not None:
        pruner = LedgerPruner(store, settings.ledger_retention_days, settings.ledger_archive_dir)
        pruner.start()

    app.on_shutdown.append(end_streams)
    app.on_cleanup.append(shutdown)
    return Built(app, store, keys, metrics, gateway.handlers())


def _answer_cache(store: Store, settings: ServerConfig) -> ExactCache:
    """The response cache (docs/cache.md): every process its own, used by the scopes
    that set `cache` (one attribute read per request for the others)."""
    similar = SemanticAnswers(
        settings.semantic_threshold, settings.semantic_max_entries,
        settings.semantic_max_temperature,
    )  # fmt: skip  # loads nothing until a scope's cache sets `semantic`
    memory = ResponseCache(int(settings.cache_max_mb * 1024 * 1024), similar=similar)
    return ExactCache(memory, store.scopes_above, lambda: store.named_cache)
