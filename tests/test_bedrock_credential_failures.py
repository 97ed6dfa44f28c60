"""AWS credentials that cannot be had (issue #17 part 4, review fixes): a hung
`credential_process` is killed, a missing source is asked once per backoff, clients get a
generic 503 while the details go to the server's log, any source's failure is a 503 (not
a 500), and a `credential_process` that is not a command line stops the start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import pytest
from aiohttp import web

from capgate.providers import aws_sources
from capgate.providers.aws_sources import CredentialError, ProcessSource
from cloudmocks import CloudMock
from conftest import ADMIN_KEY, Capgate
from test_bedrock_credentials import Mocks, _start

GENERIC = 'AWS credentials are unavailable for provider "bedrock"'
_HANGS = """import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _hung_fetch(tmp: Path, cancel: bool) -> tuple[int, BaseException]:
    """A `credential_process` that never answers: the fetch cancelled (else timed out)
    once it runs. Returns its pid and what the fetch raised."""
    pid_file = tmp / "pid"
    (tmp / "hangs.py").write_text(_HANGS)
    source = ProcessSource(f"{sys.executable} {tmp / 'hangs.py'} {pid_file}", "hung")
    task = asyncio.create_task(source.fetch())
    async with asyncio.timeout(20):
        while not pid_file.exists() or not pid_file.read_text():
            await asyncio.sleep(0.02)
    pid = int(pid_file.read_text())
    if cancel:
        task.cancel()
    try:
        await task
    except BaseException as exc:  # the test looks at it
        return pid, exc
    raise AssertionError("the fetch of a hung process returned")


@pytest.mark.parametrize("cancel", [True, False], ids=["cancelled", "timed-out"])
def test_a_hung_credential_process_is_killed_and_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancel: bool
) -> None:
    monkeypatch.setattr(aws_sources, "PROCESS_TIMEOUT_S", 0.5 if not cancel else 60.0)
    pid, raised = asyncio.run(_hung_fetch(tmp_path, cancel))
    try:
        assert not _alive(pid)  # killed, and reaped (no zombie left to find)
    finally:
        if _alive(pid):
            os.kill(pid, 9)
    if cancel:
        assert isinstance(raised, asyncio.CancelledError)
    else:
        assert isinstance(raised, CredentialError) and "no answer in 0.5 s" in str(raised)


def test_a_credential_process_reads_no_stdin(tmp_path: Path) -> None:
    """Its stdin is /dev/null, not the server's: one that reads it does not hang."""
    script = tmp_path / "creds.py"
    script.write_text(
        "import os, sys, json\n"
        "assert os.path.samestat(os.fstat(0), os.stat(os.devnull)), 'stdin is not /dev/null'\n"
        "sys.stdin.read()\n"
        'print(json.dumps({"Version": 1, "AccessKeyId": "AKIAX", "SecretAccessKey": "s"}))\n'
    )
    read, write = os.pipe()  # the test's own stdin: a pipe nobody closes
    saved = os.dup(0)
    os.dup2(read, 0)
    try:
        source = ProcessSource(f"{sys.executable} {script}", "stdin")
        fetched = asyncio.run(asyncio.wait_for(source.fetch(), 20))
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read, write):
            os.close(fd)
    assert fetched.credentials.access_key_id == "AKIAX" and fetched.expires is None


@pytest.fixture
def mocks() -> Iterator[Mocks]:
    made = Mocks()
    with made.creds, made.bedrock:
        yield made


def _refused(gw: Capgate, key: str) -> anthropic.APIStatusError:
    with (
        anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0) as client,
        pytest.raises(anthropic.APIStatusError) as caught,
    ):
        client.messages.create(
            model="bedrock", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
    return caught.value


DENIED = "not authorized: arn:aws:iam::123456789012:role/capgate-prod"


async def _denied(request: web.Request) -> web.Response:
    request.app[ASKED].append(request.path)
    return web.json_response({"message": DENIED}, status=403)


ASKED = web.AppKey("asked", list[str])


def test_without_credentials_the_source_is_asked_once_per_backoff(
    tmp_path: Path, key_name: str
) -> None:
    app = web.Application()
    app[ASKED] = []
    app.router.add_get("/v2/credentials/{id}", _denied)
    container, mocks = CloudMock(app), Mocks()
    with container, mocks.bedrock:
        env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": container.url + "/v2/credentials/mock"}
        gw, log = _start(tmp_path, mocks, env)
        try:
            key = gw.create_key(key_name)
            with ThreadPoolExecutor(4) as pool:  # at once: one fetch for all
                refused = list(pool.map(lambda _: _refused(gw, key), range(4)))
            refused += [_refused(gw, key) for _ in range(4)]  # then: failing fast
            asked, sent = list(app[ASKED]), mocks.bedrock.requests()
        finally:
            gw.close()
    assert [r.status_code for r in refused] == [503] * 8
    assert {r.body["error"]["message"] for r in refused} == {GENERIC}  # type: ignore[index]
    assert asked == ["/v2/credentials/mock"] and sent == []
    text = log.read_text()
    assert "from the container credentials endpoint could not be had" in text
    assert "403" in text and DENIED in text


async def _not_text(request: web.Request) -> web.Response:
    return web.Response(body=b"\xff\xfe\xfa token")


def test_a_source_failing_unexpectedly_is_a_503_not_a_500(tmp_path: Path, key_name: str) -> None:
    app = web.Application()
    app.router.add_put("/latest/api/token", _not_text)
    imds, mocks = CloudMock(app), Mocks()
    with imds, mocks.creds, mocks.bedrock:
        env = {"AWS_EC2_METADATA_DISABLED": "false",
               "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}  # fmt: skip
        gw, log = _start(tmp_path, mocks, env)
        try:
            refused = _refused(gw, gw.create_key(key_name))
            time.sleep(0.2)
        finally:
            gw.close()
    assert refused.status_code == 503
    assert refused.body["error"]["message"] == GENERIC  # type: ignore[index]
    text = log.read_text()
    assert "EC2 instance metadata (IMDSv2): an answer that is not UTF-8 text" in text
    assert "Traceback" not in text and "never retrieved" not in text


def test_a_credential_process_that_is_no_command_line_stops_the_start(tmp_path: Path) -> None:
    aws = tmp_path / "aws-config"
    aws.write_text("[profile broken]\ncredential_process = /bin/creds --name 'unbalanced\n")
    config = tmp_path / "capgate.yaml"
    config.write_text(
        "providers:\n"
        "  - {name: bedrock, type: bedrock, api: converse, region: us-west-2,"
        " aws_profile: broken}\n"
        "models:\n"
        "  - {match: bedrock, targets: [{provider: bedrock, model: us.amazon.nova-lite-v1:0}]}\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "AWS_CONFIG_FILE": str(aws),
           "AWS_EC2_METADATA_DISABLED": "true", "CAPGATE_ADMIN_KEY": ADMIN_KEY}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--config", str(config), "--port", "0",
         "--database-url", f"sqlite:///{tmp_path / 'capgate.db'}"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "bad configuration" in result.stderr
    assert "providers.bedrock: credential_process of profile 'broken'" in result.stderr
    assert "No closing quotation" in result.stderr and "Traceback" not in result.stderr
