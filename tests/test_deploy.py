"""The deployment files in deploy/: the systemd unit passes `systemd-analyze verify` and
its security review; the container file and compose example only copy files that exist,
install with the same script CI uses, and ask the health endpoints. (No container engine
runs on these machines: the image build itself is not tested here; building a wheel from
exactly what the image copies is.)"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from capgate.http.settler import DRAIN_SECONDS as _DRAIN_SECONDS
from conftest import ROOT, need

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "capgate.service"
CONTAINERFILE = DEPLOY / "Containerfile"
COMPOSE = DEPLOY / "compose.yaml"
IN_FLIGHT_SECONDS = 60  # aiohttp's runner waits this long for in-flight answers at shutdown


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text("utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, value = line.split("=", 1)
            settings.setdefault(name.strip(), []).append(value.strip())
    return settings


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", text)
    assert match, text
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def runnable_unit(tmp_path: Path) -> Path:
    """The unit with its ExecStart pointed at this checkout's capgate (verify checks
    that the program exists and is executable)."""
    capgate = Path(sys.executable).parent / "capgate"
    assert capgate.exists(), capgate
    text = UNIT.read_text("utf-8").replace("/opt/capgate/.venv/bin/capgate", str(capgate))
    path = tmp_path / "capgate.service"
    path.write_text(text)
    return path


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze (apt package systemd)")
    done = subprocess.run(
        ["systemd-analyze", "verify", str(runnable_unit(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze (apt package systemd)")
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(runnable_unit(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    level = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", done.stdout)
    assert level, done.stdout
    assert float(level.group(1)) <= 2.0 and level.group(2) == "OK", level.group(0)


def test_the_unit_runs_capgate_as_a_service_should() -> None:
    s = unit_settings()
    for name, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "capgate"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ]:
        assert s.get(name) == [value], (name, s.get(name))
    assert s["EnvironmentFile"] == ["/etc/capgate/capgate.env"]
    # The database lives in the state directory; secrets never on the command line.
    assert "CAPGATE_DATABASE_URL=sqlite:////var/lib/capgate/capgate.db" in s["Environment"]
    (exec_start,) = s["ExecStart"]
    assert shlex.split(exec_start)[:2] == ["/opt/capgate/.venv/bin/capgate", "serve"]
    assert "KEY" not in exec_start.upper()
    # systemd must not SIGKILL capgate while it drains.
    assert seconds(s["TimeoutStopSec"][0]) > IN_FLIGHT_SECONDS + _DRAIN_SECONDS


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text("utf-8"))
    steps = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, args = line.strip().partition(" ")
            steps.append((instruction.upper(), args.strip()))
    return steps


def copied_sources() -> list[str]:
    sources = []
    for instruction, args in containerfile():
        if instruction in ("COPY", "ADD"):
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def test_the_container_file_copies_only_files_that_exist() -> None:
    sources = copied_sources()
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"deploy/Containerfile copies {source}, which is missing"
    # What pip needs to build capgate is among them (pyproject's readme and license).
    pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
    needed = ["pyproject.toml", "src/", "bin/"]
    needed += re.findall(r'^readme = "([^"]+)"', pyproject, re.MULTILINE)
    needed += re.findall(r'^license-files = \["([^"]+)"\]', pyproject, re.MULTILINE)
    assert sorted(set(needed)) == sorted(set(needed) & set(sources)), sources


def test_the_container_installs_with_the_script_ci_uses() -> None:
    runs = [args for instruction, args in containerfile() if instruction == "RUN"]
    assert any(re.search(r"\bbin/_setup\.sh run\b", run) for run in runs), runs
    # ... the script bin/test (run by CI) and bin/capgate source.
    assert 'source "$(dirname "$0")/_setup.sh" dev' in (ROOT / "bin/test").read_text("utf-8")
    assert 'source "$(dirname "$0")/_setup.sh" run' in (ROOT / "bin/capgate").read_text("utf-8")
    assert re.search(r"^exec bin/test\b", (ROOT / ".ci/run").read_text("utf-8"), re.MULTILINE)
    steps = dict(containerfile())
    assert steps["WORKDIR"] == "/opt/capgate"
    assert '"/opt/capgate/.venv/bin/capgate"' in steps["ENTRYPOINT"]  # where _setup.sh installs
    assert "/health" in steps["HEALTHCHECK"]
    assert steps["VOLUME"] == "/var/lib/capgate"
    assert "sqlite:////var/lib/capgate/capgate.db" in steps["ENV"]


def test_what_the_image_copies_builds_capgate(tmp_path: Path) -> None:
    """The build the image's RUN step does, from only the copied files (no engine here)."""
    context = tmp_path / "context"
    for source in copied_sources():
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, context / source)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "w"),
         str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "w").glob("capgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"capgate/data/pricing.yaml", "capgate/cli/db.py", "capgate/store/backup.py"} <= names
    assert any(n.startswith("capgate/dashboard/static/") for n in names)


def test_the_compose_example_builds_that_file_and_asks_readiness() -> None:
    compose = yaml.safe_load(COMPOSE.read_text("utf-8"))
    service = compose["services"]["capgate"]
    build = service["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == CONTAINERFILE
    assert any("/health/ready" in part for part in service["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/capgate") for v in service["volumes"])
    assert "capgate-data" in compose["volumes"]
    assert seconds(service["stop_grace_period"]) > IN_FLIGHT_SECONDS + _DRAIN_SECONDS
    for mounted in service["volumes"]:
        if mounted.startswith("./"):  # the file the docs tell you to copy must exist as example
            example = mounted.split(":")[0].removeprefix("./").replace(".yaml", ".example.yaml")
            assert (DEPLOY / example).exists(), example
    assert (DEPLOY / service["env_file"].replace(".env", ".env.example")).exists()


@pytest.mark.parametrize(
    "needle",
    [
        "proxy_buffering off",
        "proxy_read_timeout",
        "cannot run on these machines",
        "systemd-analyze verify",
        "capgate db backup",
        "capgate db restore",
        "/health/ready",
    ],
)
def test_operations_doc_covers_it(needle: str) -> None:
    assert needle in (ROOT / "docs" / "operations.md").read_text("utf-8")


def test_ci_installs_systemd_analyze() -> None:
    script = (ROOT / ".ci" / "run").read_text("utf-8")
    assert re.search(r"command -v systemd-analyze .*\n.*apt-get install -y -qq systemd", script)
