"""Configuration: a bad file stops `capgate serve` at once with a message naming the bad
key; `${VAR}` substitution; and the precedence flags > CAPGATE_* environment > file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from capgate.config import (
    Config,
    ConfigError,
    load_config,
    parse_config,
    with_overrides,
)
from conftest import ROOT, Upstream, gateway_config, start_capgate

GOOD_PROVIDER = {
    "name": "anthropic",
    "type": "anthropic",
    "base_url": "http://127.0.0.1:9",
    "api_key": "k",
}


def serve(tmp_path: Path, text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`capgate serve` on `text` as its config file (its timeout: one that would hang)."""
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--config", str(config), "--port", "0",
         "--database-url", f"sqlite:///{tmp_path / 'capgate.db'}", *extra],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=30, check=False,
    )  # fmt: skip


def dump(data: Any) -> str:
    return yaml.safe_dump(data)


BAD_CONFIGS = [
    pytest.param(
        dump({"providers": [GOOD_PROVIDER], "bogus": 1}),
        ["bogus", "unknown key"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        dump({"providers": [{**GOOD_PROVIDER, "colour": "red"}]}),
        ["providers[0].colour", "unknown key"],
        id="unknown-provider-field",
    ),
    pytest.param(
        dump({"providers": [GOOD_PROVIDER, {"name": "g", "type": "gemini"}]}),
        ["providers[1].type"],
        id="bad-provider-type",
    ),
    pytest.param(
        dump({"providers": [{**GOOD_PROVIDER, "type": "claude-cli", "max_concurrency": 0}]}),
        ["providers[0].max_concurrency"],
        id="cli-without-concurrency",
    ),
    pytest.param(
        dump({"providers": [{"type": "anthropic"}]}),
        ["providers[0].name"],
        id="provider-without-name",
    ),
    pytest.param(
        dump({"providers": [{**GOOD_PROVIDER, "connect_timeout_s": -1}]}),
        ["providers[0].connect_timeout_s"],
        id="negative-timeout",
    ),
    pytest.param(
        dump(
            {
                "providers": [GOOD_PROVIDER],
                "models": [{"match": "claude-*", "targets": [{"provider": "nope"}]}],
            }
        ),
        ["models[0].targets[0].provider", "nope"],
        id="route-to-missing-provider",
    ),
    pytest.param(
        dump({"providers": [GOOD_PROVIDER, GOOD_PROVIDER]}),
        ["providers", "used twice"],
        id="duplicate-provider",
    ),
    pytest.param(
        dump({"providers": [{**GOOD_PROVIDER, "api_key": "${CAPGATE_TEST_SURELY_UNSET_VAR}"}]}),
        ["providers[0].api_key", "CAPGATE_TEST_SURELY_UNSET_VAR"],
        id="missing-env-var",
    ),
    pytest.param(
        "providers: [\n  - name: a\n    type: [unclosed\n", ["not valid YAML"], id="invalid-yaml"
    ),
    pytest.param("- just\n- a list\n", ["mapping"], id="top-level-list"),
    pytest.param(
        dump({"server": {"timezone": "Mars/Olympus"}}),
        ["server.timezone", "Mars/Olympus"],
        id="bad-timezone",
    ),
    pytest.param(
        dump({"server": {"max_request_mb": 0}}), ["server.max_request_mb"], id="zero-max-request"
    ),
    pytest.param(dump({"server": {"port": 70000}}), ["server.port"], id="bad-port"),
    pytest.param(
        dump({"server": {"listen": 1}}), ["server.listen", "unknown key"], id="unknown-server-key"
    ),
    pytest.param(
        dump({"pricing": {"m": {"input": "1"}}}), ["pricing.m.output"], id="price-missing-output"
    ),
    pytest.param(
        dump({"providers": [{**GOOD_PROVIDER, "base_url": "ftp://files.example.com/v1"}]}),
        ["providers[0].base_url", "http:// or https://"],
        id="ftp-base-url",
    ),
    pytest.param(
        dump({"providers": [{**GOOD_PROVIDER, "headers": {"x-a": "1\r\nx-b: 2"}}]}),
        ["providers[0].headers", "line break"],
        id="header-smuggling",
    ),
    pytest.param(
        dump({"server": {"secret_key_file": "/nonexistent/capgate.key"}}),
        ["secret_key_file", "cannot read"],
        id="missing-secret-key-file",
    ),
]


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("base_url", "ftp://h/x", "http:// or https://"),
        ("base_url", "https://u:p@h", "credentials"),
        ("base_url", "https://h/v1?x=1", "query"),
        ("base_url", "https://h/v1#f", "fragment"),
        ("base_url", "https:///v1", "host"),
        ("base_url", "https://h:99999", "valid URL"),
        ("base_url", "http://h /v1", "spaces"),
        ("headers", {"bad name": "v"}, "header name"),
        ("headers", {"Content-Length": "1"}, "capgate sets"),
        ("headers", {"x": "a\nb"}, "line break"),
        ("api_key", " padded ", "printable"),
    ],
)
def test_provider_fields_are_checked_at_load(field: str, value: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=rf"providers\[0\]\.{field}: .*{words}"):
        parse_config({"providers": [{**GOOD_PROVIDER, field: value}]}, {})
    fine = {**GOOD_PROVIDER, "base_url": "https://[::1]:8443/v1/", "headers": {"X-Team": "a b"}}
    assert parse_config({"providers": [fine]}, {}).providers[0].url == "https://[::1]:8443/v1"


@pytest.mark.parametrize(("text", "words"), BAD_CONFIGS)
def test_serve_refuses_bad_config(tmp_path: Path, text: str, words: list[str]) -> None:
    result = serve(tmp_path, text)
    assert result.returncode != 0, (result.stdout, result.stderr)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "bad configuration" in output
    for word in words:
        assert word in output, output
    assert "listening" not in output


def test_serve_refuses_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGATE_")}
    result = subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--config", str(missing), "--port", "0"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert str(missing) in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_bad_timezone_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "good.yaml"
    config.write_text(dump({"providers": [GOOD_PROVIDER]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGATE_")}
    env["CAPGATE_TIMEZONE"] = "Nowhere/Special"
    result = subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--config", str(config), "--port", "0"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "server.timezone" in result.stderr and "Nowhere/Special" in result.stderr


def test_cross_reference_error_reads_cleanly() -> None:
    data = {
        "providers": [GOOD_PROVIDER],
        "models": [{"match": "x", "targets": [{"provider": "nope"}]}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(data, {}, "f.yaml")
    assert str(err.value).startswith("f.yaml: models[0].targets[0].provider:"), str(err.value)


# -- in-process: substitution and precedence -----------------------------------------------


def provider_with_key(api_key: str, base_url: str = "http://127.0.0.1:9") -> dict[str, Any]:
    return {
        "providers": [{"name": "a", "type": "anthropic", "base_url": base_url, "api_key": api_key}]
    }


@pytest.mark.parametrize(
    ("api_key", "env", "expected"),
    [
        ("${UP_KEY}", {"UP_KEY": "secret-1"}, "secret-1"),
        ("${UP_KEY:-fallback}", {"UP_KEY": "secret-2"}, "secret-2"),
        ("${UP_KEY:-fallback}", {}, "fallback"),
        ("${UP_KEY:-}", {}, ""),
        ("Bearer ${UP_KEY}!", {"UP_KEY": "x"}, "Bearer x!"),
        ("${A}${B:-b}", {"A": "a"}, "ab"),
        ("$UP_KEY", {"UP_KEY": "no"}, "$UP_KEY"),  # only ${...} is substituted
        ("${UP_KEY}", {"UP_KEY": "${OTHER}", "OTHER": "no"}, "${OTHER}"),  # no recursion
    ],
)
def test_env_substitution(api_key: str, env: dict[str, str], expected: str) -> None:
    config = parse_config(provider_with_key(api_key), env)
    assert config.providers[0].api_key == expected


def test_env_substitution_missing_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"providers\[0\]\.api_key.*UP_KEY"):
        parse_config(provider_with_key("${UP_KEY}"), {})


def test_env_substitution_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "server:\n  timezone: ${TZ_NAME:-UTC}\n"
        "providers:\n  - name: a\n    type: anthropic\n    base_url: ${BASE}\n"
        "    api_key: ${KEY}\n    headers:\n      x-team: ${TEAM:-none}\n"
    )
    env = {"BASE": "http://127.0.0.1:1234", "KEY": "k-1", "TZ_NAME": "Europe/Berlin"}
    config = load_config(str(path), env)
    provider = config.providers[0]
    assert (provider.base_url, provider.api_key) == ("http://127.0.0.1:1234", "k-1")
    assert provider.headers == {"x-team": "none"}
    assert config.server.timezone == "Europe/Berlin"


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("bogus: 1\n")
    with pytest.raises(ConfigError, match=rf"{path}.*bogus: unknown key"):
        load_config(str(path), {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"), {})
    assert load_config(None, {}) == Config()


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("")
    config = load_config(str(path), {})
    assert config.server.port == 4000 and config.server.default_max_tokens == 4096
    assert config.server.max_request_mb == 32 and config.server.timezone == "UTC"


def test_precedence_flags_over_env_over_file() -> None:
    file = parse_config(
        {
            "server": {
                "port": 1111,
                "host": "127.0.0.2",
                "default_max_tokens": 100,
                "timezone": "Europe/Berlin",
            }
        },
        {},
    )
    assert file.server.port == 1111
    env = {"CAPGATE_PORT": "2222", "CAPGATE_DEFAULT_MAX_TOKENS": "200", "CAPGATE_HOST": ""}
    # Environment over the file; an empty variable does not count.
    merged = with_overrides(file, env, {})
    assert merged.server.port == 2222 and merged.server.default_max_tokens == 200
    assert merged.server.host == "127.0.0.2" and merged.server.timezone == "Europe/Berlin"
    # Flags over both; a flag left as None does not count.
    merged = with_overrides(
        file, env, {"port": 3333, "host": None, "database_url": "sqlite:///x.db"}
    )
    assert merged.server.port == 3333 and merged.server.host == "127.0.0.2"
    assert merged.server.default_max_tokens == 200
    assert merged.server.database_url == "sqlite:///x.db"
    # The file's providers and routes survive the merge; the original is unchanged.
    assert file.server.port == 1111


def test_env_settings_are_typed_and_validated() -> None:
    base = parse_config({}, {})
    merged = with_overrides(
        base,
        {
            "CAPGATE_MAX_REQUEST_MB": "0.5",
            "CAPGATE_ALLOW_UNPRICED_MODELS": "true",
            "CAPGATE_ADMIN_KEY": "sk-x",
        },
        {},
    )
    assert merged.server.max_request_mb == 0.5
    assert merged.server.allow_unpriced_models is True
    assert merged.server.admin_key == "sk-x"
    with pytest.raises(ConfigError, match=r"server\.port"):
        with_overrides(base, {"CAPGATE_PORT": "eighty"}, {})
    with pytest.raises(ConfigError, match=r"server\.max_request_mb"):
        with_overrides(base, {"CAPGATE_MAX_REQUEST_MB": "-1"}, {})


def test_precedence_in_a_running_server(upstream: Upstream, tmp_path: Path) -> None:
    """The file says default_max_tokens 111, the environment 222: a request without
    max_tokens is reserved (and forwarded) with 222, and the flag --port wins over
    CAPGATE_PORT."""
    import httpx

    config = gateway_config(upstream, server={"default_max_tokens": 111, "port": 1})
    server = start_capgate(
        tmp_path, config, env={"CAPGATE_DEFAULT_MAX_TOKENS": "222", "CAPGATE_PORT": "2"}
    )
    try:
        assert not server.url.endswith((":1", ":2"))  # --port 0 (a flag) won
        key = server.create_key(
            "precedence", [{"metric": "output_tokens", "window": "day", "max": 10_000}]
        )
        response = httpx.post(
            server.url + "/v1/messages",
            json={
                "model": "claude-haiku-4-5",
                "messages": [{"role": "user", "content": "hi mock:words=300"}],
            },
            headers={"x-api-key": key},
            timeout=30,
            trust_env=False,
        )
        assert response.status_code == 200, response.text
        # The mock cuts the answer at the max_tokens it received.
        assert response.json()["usage"]["output_tokens"] == 222
        assert response.json()["stop_reason"] == "max_tokens"
    finally:
        server.close()
