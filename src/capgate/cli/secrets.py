"""`capgate secrets new-key|rotate-key`: the secret key that encrypts the provider API keys
stored at runtime (docs/security.md#provider-api-keys-at-rest). `rotate-key` works on the
database itself, like `capgate db`: the old key as the server gets it
(`CAPGATE_SECRET_KEY` or `server.secret_key_file`), the new one from a file."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import typer

from capgate.bootstrap import new_store
from capgate.cli.db import ConfigOption, DatabaseOption
from capgate.config import ConfigError, ServerConfig, load_config, with_overrides
from capgate.secret_box import (
    Sealed,
    SecretBox,
    SecretUnreadable,
    load_key,
    new_key_text,
    read_key_file,
)
from capgate.store.routing_rows import StoredProvider

app = typer.Typer(help="The secret key of the provider API keys stored at runtime.")


@app.command("new-key")
def new_key() -> None:
    """Print a new random secret key (32 bytes, base64) for CAPGATE_SECRET_KEY or a file."""
    print(new_key_text())


async def _rotate(settings: ServerConfig, old: SecretBox, new: SecretBox) -> int:
    store = new_store(settings)
    await store.start()
    try:

        def reseal(provider: StoredProvider) -> Sealed:
            assert provider.secret is not None
            return new.seal(provider.name, old.open(provider.name, provider.secret))

        return await store.reseal_provider_secrets(reseal, "cli")
    finally:
        await store.close()


@app.command("rotate-key")
def rotate_key(
    new_key_file: Annotated[
        str, typer.Option("--new-key-file", help="file holding the new key (base64 or hex)")
    ],
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Re-encrypt every stored provider API key with a new secret key, in one transaction.
    Then restart every capgate process with the new key (CAPGATE_SECRET_KEY or
    server.secret_key_file): the old key is no longer used."""
    try:
        cfg = with_overrides(load_config(config), os.environ, {"database_url": database_url})
        old = load_key(os.environ, cfg.server.secret_key_file)
        if old is None:
            raise ConfigError(
                "no current secret key: set CAPGATE_SECRET_KEY or server.secret_key_file"
            )
        new = SecretBox(read_key_file(new_key_file, "--new-key-file"))
    except ConfigError as exc:
        typer.secho(f"capgate: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    if new.key_id == old.key_id:
        typer.secho("capgate: the new key is the current one", fg="red", err=True)
        raise typer.Exit(2)
    try:
        count = asyncio.run(_rotate(cfg.server, old, new))
    except SecretUnreadable as exc:
        typer.secho(f"capgate: {exc}; nothing was changed", fg="red", err=True)
        raise typer.Exit(1) from None
    print(f"re-encrypted {count} provider API key(s) with key {new.key_id}")
    print("now restart capgate with the new key (CAPGATE_SECRET_KEY or server.secret_key_file)")
