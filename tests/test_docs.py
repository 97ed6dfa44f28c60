"""The documentation keeps up with the code: every config key, environment variable, CLI
command and option, admin route and gateway endpoint appears in docs/configuration.md;
the README shows the two commands a new user needs; links between the docs resolve."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel

from capgate import config, provider_config
from capgate.cli.main import app
from capgate.core.limits import Metric
from capgate.core.windows import WindowKind
from capgate.http.admin import CSV_COLUMNS, AdminAPI
from capgate.http.gateway import Gateway
from capgate.live_routing import LiveRouting
from capgate.routing import Router
from capgate.store.records import USAGE_GROUPS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
REFERENCE = DOCS / "configuration.md"

CONFIG_MODELS: list[type[BaseModel]] = [
    config.Config,
    config.ServerConfig,
    provider_config.ProviderConfig,
    config.RouteConfig,
    config.TargetConfig,
    config.PriceConfig,
]


def reference() -> str:
    return REFERENCE.read_text("utf-8")


def code(text: str) -> str:
    """How a name is written in the docs: as inline code."""
    return f"`{text}"


# -- config file and environment -----------------------------------------------------------


@pytest.mark.parametrize("model", CONFIG_MODELS, ids=lambda m: m.__name__)
def test_every_config_key_is_documented(model: type[BaseModel]) -> None:
    text = reference()
    assert code(model.__name__) in text, f"{model.__name__} has no section in {REFERENCE}"
    missing = [name for name in model.model_fields if f"`{name}`" not in text]
    assert not missing, f"{model.__name__} keys missing from {REFERENCE.name}: {missing}"


def test_every_env_setting_is_documented() -> None:
    text = reference()
    missing = [var for var in config.ENV_SETTINGS if f"`{var}`" not in text]
    assert not missing, f"CAPGATE_* variables missing from {REFERENCE.name}: {missing}"


def test_every_capgate_variable_the_code_reads_is_documented() -> None:
    """Also the ones read outside ENV_SETTINGS (CAPGATE_URL, CAPGATE_ADMIN_KEY in the CLI)."""
    found: set[str] = set()
    for path in (ROOT / "src" / "capgate").rglob("*.py"):
        found.update(re.findall(r"\bCAPGATE_[A-Z0-9_]+\b", path.read_text("utf-8")))
    assert {"CAPGATE_URL", "CAPGATE_ADMIN_KEY"} <= found
    text = reference()
    missing = sorted(var for var in found if f"`{var}`" not in text)
    assert not missing, f"variables missing from {REFERENCE.name}: {missing}"


# -- command line ----------------------------------------------------------------------------


def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of the CLI with its full name, depth first."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))


def cli_commands() -> list[tuple[tuple[str, ...], Any]]:
    return list(walk(typer.main.get_command(app), ("capgate",)))


def test_cli_walk_finds_the_commands() -> None:
    names = {" ".join(path) for path, _ in cli_commands()}
    assert {"capgate serve", "capgate keys create", "capgate usage"} <= names


@pytest.mark.parametrize(
    ("path", "command"), cli_commands(), ids=[" ".join(path) for path, _ in cli_commands()]
)
def test_every_cli_command_and_option_is_documented(path: tuple[str, ...], command: Any) -> None:
    text = reference()
    if len(path) > 1:
        assert code(" ".join(path)) in text, f"`{' '.join(path)}` is not in {REFERENCE.name}"
    options = [
        opt
        for param in command.params
        if param.param_type_name == "option"
        for opt in (*param.opts, *param.secondary_opts)
    ]
    missing = [opt for opt in options if code(opt) not in text]
    assert not missing, f"options of `{' '.join(path)}` missing from {REFERENCE.name}: {missing}"


# -- HTTP ------------------------------------------------------------------------------------


def mentions_route(method: str, path: str) -> bool:
    """`METHOD /path` in the reference, not just as the start of a longer path (a
    parameter's regex, `{name:[^/]+}`, is written as `{name}`)."""
    path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)
    pattern = re.escape(f"{method} {path}") + r"(?![\w/{.-])"
    return re.search(pattern, reference()) is not None


def test_every_admin_route_is_documented() -> None:
    live = LiveRouting({}, {}, [], Router([], {}, {}), None)
    routes = AdminAPI(store=None, admin_digest=b"x", live=live).routes()  # type: ignore[arg-type]
    assert routes
    missing = [f"{r.method} {r.path}" for r in routes if not mentions_route(r.method, r.path)]
    assert not missing, f"admin routes missing from {REFERENCE.name}: {missing}"


def test_every_gateway_endpoint_is_documented() -> None:
    gateway = Gateway(
        store=None, router=Router([], {}, {}), pricing=None, settings=config.ServerConfig()
    )  # type: ignore[arg-type]
    routes = gateway.routes()
    assert routes
    missing = [f"{r.method} {r.path}" for r in routes if not mentions_route(r.method, r.path)]
    assert not missing, f"gateway endpoints missing from {REFERENCE.name}: {missing}"


@pytest.mark.parametrize(
    ("what", "names"),
    [
        ("metrics", [m.value for m in Metric]),
        ("windows", [w.value for w in WindowKind]),
        ("usage groups", list(USAGE_GROUPS)),
        ("ledger fields", list(CSV_COLUMNS)),
    ],
)
def test_admin_api_vocabulary_is_documented(what: str, names: list[str]) -> None:
    text = reference()
    missing = [name for name in names if f"`{name}`" not in text]
    assert not missing, f"{what} missing from {REFERENCE.name}: {missing}"


# -- README and CI -------------------------------------------------------------------------


def test_readme_has_the_two_commands() -> None:
    text = README.read_text("utf-8")
    assert "bin/capgate serve --demo" in text
    assert re.search(r"^bin/test$", text, re.MULTILINE), (
        "README must show `bin/test` on its own line"
    )


def test_ci_runs_bin_test() -> None:
    script = (ROOT / ".ci" / "run").read_text("utf-8")
    commands = [line.strip() for line in script.splitlines() if not line.strip().startswith("#")]
    assert any(re.match(r"^(exec\s+)?bin/test(\s|$)", line) for line in commands), script


def test_the_scripts_exist() -> None:
    for script in ("bin/capgate", "bin/test", ".ci/run"):
        assert (ROOT / script).is_file(), script


# -- links -----------------------------------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text("utf-8"), flags=re.MULTILINE | re.DOTALL)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_the_docs_exist() -> None:
    names = {p.name for p in DOCS.glob("*.md")}
    assert {
        "configuration.md",
        "budgets.md",
        "clients.md",
        "dependencies.md",
        "architecture.md",
    } <= names


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_links_resolve(path: Path) -> None:
    broken = []
    for target in _LINK.findall(path.read_text("utf-8")):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists() or (
            anchor and linked.suffix == ".md" and anchor not in anchors(linked)
        ):
            broken.append(target)
    assert not broken, f"broken links in {path.name}: {broken}"


# -- architecture ----------------------------------------------------------------------------

ARCHITECTURE = DOCS / "architecture.md"
_PY_NAME = re.compile(r"[\w*]+\.py\b")


def _named_in_architecture() -> list[str]:
    """File names (and globs such as `translate*.py`) the architecture doc mentions."""
    return _PY_NAME.findall(ARCHITECTURE.read_text("utf-8"))


def _mentioned(name: str, named: list[str]) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, pattern) for pattern in named)


def test_architecture_names_every_module() -> None:
    """docs/architecture.md stays true to the code: each module of the package is named
    there (a new module without a line in the map fails here)."""
    named = _named_in_architecture()
    package = ROOT / "src" / "capgate"
    missing = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py") and not _mentioned(path.name, named)
    )
    assert not missing, f"modules missing from docs/architecture.md: {missing}"


def test_architecture_names_only_modules_that_exist() -> None:
    package = ROOT / "src" / "capgate"
    existing = {p.name for p in package.rglob("*.py")} | {
        p.name for p in (ROOT / "tests").glob("*.py")
    }
    from fnmatch import fnmatch

    stale = sorted(
        {n for n in _named_in_architecture() if not any(fnmatch(e, n) for e in existing)}
    )
    assert not stale, f"docs/architecture.md names files that do not exist: {stale}"


def test_architecture_lists_every_test_file() -> None:
    named = _named_in_architecture()
    missing = sorted(
        p.name for p in (ROOT / "tests").glob("test_*.py") if not _mentioned(p.name, named)
    )
    assert not missing, f"test files missing from docs/architecture.md's table: {missing}"
