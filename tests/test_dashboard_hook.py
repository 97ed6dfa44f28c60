"""Hook mode in the dashboard, in a real headless Chromium: create an install code in the
UI (shown once, with its two install commands), enrol a machine through the HTTP API as
the hook's installer does (POST /hook/v1/enrol), see the person and the machine, kill the
person and see them paused (and their next prompt refused), resume, revoke the machine,
delete a code; and the live feed with the hook's prompts, refusals and the kill."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from conftest import Capgate, Upstream, gateway_config, start_capgate
from test_dashboard_browser import ARTIFACTS, FITS, Console, browser  # noqa: F401

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

LIMITS = [
    {"metric": "requests", "window": "day", "max": 20},
    {"metric": "cost_usd", "window": "month", "max": "5"},
    {"metric": "credits", "window": "week", "max": 300, "model": "claude-opus-*"},
]


@pytest.fixture(scope="module")
def hookdash(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    server = start_capgate(tmp_path_factory.mktemp("hookdash"), gateway_config(upstream))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Browser, hookdash: Capgate, console: Console) -> Iterator[Page]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    opened.on("console", console)
    opened.on("pageerror", lambda error: console.errors.append(f"pageerror: {error}"))
    opened.set_default_timeout(10_000)
    try:
        yield opened
    finally:
        context.close()
    assert console.errors == [], console.errors


def log_in(page: Page, server: Capgate, route: str) -> None:
    page.goto(server.url + "/dashboard")
    page.get_by_label("Admin key").fill(server.admin_key)
    page.get_by_role("button", name="Sign in").click()
    page.locator(".stat").first.wait_for()
    page.goto(f"{server.url}/dashboard#/{route}")
    page.wait_for_load_state("networkidle")


def person(server: Capgate, name: str) -> None:
    created = server.admin("POST", "/admin/users", json={"name": name, "limits": LIMITS})
    assert created.status_code == 201, created.text


def enrol(server: Capgate, code: str, hostname: str) -> dict[str, Any]:
    """What the hook's installer does with a code."""
    answer = httpx.post(
        server.url + "/hook/v1/enrol",
        json={"code": code, "hostname": hostname, "os": "linux", "os_user": "dev",
              "agents": ["claude"], "hook_version": "0.9.1"},
        timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def gate(server: Capgate, token: str, prompt: str, session: str = "s-1") -> dict[str, Any]:
    """What the hook asks before a prompt (UserPromptSubmit)."""
    answer = httpx.post(
        server.url + "/hook/v1/gate",
        headers={"authorization": f"Bearer {token}"},
        json={"agent": "claude", "session_id": session, "prompt_id": prompt,
              "model": "claude-sonnet-4-6", "model_source": "event", "hook_version": "0.9.1"},
        timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def shot(page: Page, name: str, full: bool = True) -> None:
    """Into tests/artifacts/ (docs/images/hooks.png and hook-code.png are copies of these)."""
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)


def test_install_code_enrol_kill_resume_revoke(
    page: Page, hookdash: Capgate, console: Console, key_name: str
) -> None:
    name = f"dev-{key_name}"
    person(hookdash, name)
    log_in(page, hookdash, "hooks")
    assert page.locator(f'[data-person="{name}"]').count() == 0  # no machine, no code yet

    # A code made in the UI: shown once, with both install commands.
    page.get_by_role("button", name="New install code").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Person").select_option(name)
    dialog.get_by_label("Valid for").select_option(label="24 hours")
    dialog.get_by_label("Codex").uncheck()
    dialog.get_by_role("button", name="Create code").click()
    code = page.locator("#new-code").input_value()
    assert code.startswith("cgi-") and len(code) == 4 + 32
    assert "shown only once" in page.get_by_role("dialog").inner_text()
    assert page.get_by_role("dialog").get_by_role("button", name="Copy command").count() == 2
    install = page.locator("#install-capgate").inner_text()
    assert f"capgate hook install --server {hookdash.url} --code {code}" in install
    curl = page.locator("#install-curl").inner_text()
    assert f"curl -fsSL {hookdash.url}/hook/install" in curl and code in curl
    shot(page, "hook-code", full=False)
    page.get_by_role("button", name="Done").click()

    listed = hookdash.admin("GET", "/admin/hook/codes").json()
    (mine,) = [c for c in listed if c["user"] == name]
    assert mine["state"] == "open" and code not in str(listed)  # the code itself never again
    row = page.locator(f'tr[data-code="{mine["id"]}"]')
    assert "open" in row.inner_text() and name in row.inner_text()
    page.locator(f'[data-person="{name}"]').wait_for()  # an open code shows the person

    # The machine enrols through the HTTP API; the page shows it without a reload.
    page.evaluate("window.__sameDocument = 7")
    machine = enrol(hookdash, code, "devbox-1")
    assert machine["user"] == name
    line = page.locator(f'tr[data-machine="{machine["machine"]}"]')
    line.wait_for()
    text = line.inner_text()
    assert "devbox-1" in text and "dev" in text and "Claude Code" in text and "Codex" not in text
    assert "0.9.1" in text and "installed" in text and "active" in text
    page.locator(f'tr[data-code="{mine["id"]}"]', has_text="used").wait_for()
    assert page.evaluate("window.__sameDocument") == 7

    # A prompt admitted and ended: the person's bars count it.
    assert gate(hookdash, machine["token"], "p-1")["decision"] == "allow"
    ended = httpx.post(
        hookdash.url + "/hook/v1/report",
        headers={"authorization": f"Bearer {machine['token']}"},
        json={"agent": "claude", "session_id": "s-1", "calls": [], "ended_prompts": ["p-1"],
              "session_end": False},
        timeout=30,
    )  # fmt: skip
    assert ended.status_code == 200, ended.text
    page.reload()
    card = page.locator(f'[data-person="{name}"]')
    card.get_by_role("progressbar", name="Requests daily: 1 / 20").wait_for()

    # Kill with logout: paused, marked, and the next prompt is refused.
    card.locator("[data-action=kill]").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Also log Claude Code out").check()
    dialog.get_by_role("button", name="Kill").click()
    card.locator(".badge-paused").first.wait_for()
    card.get_by_text("logout on kill").wait_for()
    shown = hookdash.admin("GET", f"/admin/users/{name}").json()
    assert shown["status"] == "paused" and shown["metadata"]["hook_logout"] is True
    refused = gate(hookdash, machine["token"], "p-2")
    assert refused["decision"] == "block" and refused["logout"] is True
    assert page.evaluate(FITS) == []
    shot(page, "hooks")

    # Resume: active, the mark gone, prompts admitted again.
    card.locator("[data-action=resume]").first.click()
    page.get_by_role("dialog").get_by_role("button", name="Resume").click()
    card.locator(".panel-head .badge-active").wait_for()
    assert card.get_by_text("logout on kill").count() == 0
    assert not hookdash.admin("GET", f"/admin/users/{name}").json()["metadata"].get("hook_logout")
    assert gate(hookdash, machine["token"], "p-3")["decision"] == "allow"

    # Revoke the machine: its token is refused from now on.
    line.locator("[data-action=revoke]").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke for good").click()
    line.get_by_text("revoked for good").wait_for()
    after = httpx.post(
        hookdash.url + "/hook/v1/gate",
        headers={"authorization": f"Bearer {machine['token']}"},
        json={"agent": "claude", "session_id": "s-1", "prompt_id": "p-4", "model": None,
              "model_source": None, "hook_version": "0.9.1"},
        timeout=30,
    )  # fmt: skip
    assert after.status_code == 401

    # A second code, deleted in the UI, can no longer enrol.
    second = hookdash.admin("POST", "/admin/hook/codes", json={"user": name, "ttl_s": 3600})
    assert second.status_code == 201, second.text
    page.reload()
    row = page.locator(f'tr[data-code="{second.json()["id"]}"]')
    row.locator("[data-action=delete-code]").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    row.wait_for(state="detached")
    late = httpx.post(
        hookdash.url + "/hook/v1/enrol",
        json={"code": second.json()["code"], "hostname": "devbox-2", "os": "linux",
              "os_user": "dev", "agents": ["claude"], "hook_version": "0.9.1"},
        timeout=30,
    )  # fmt: skip
    assert late.status_code == 401
    # The machine is a key too: the keys list marks it and links here.
    page.goto(f"{hookdash.url}/dashboard#/keys")
    page.locator(f'tr[data-name="{machine["machine"]}"] a.badge', has_text="hook").wait_for()
    # And the person's page lists their machines.
    page.goto(f"{hookdash.url}/dashboard#/users/{name}")
    page.locator(f'#page tr[data-machine="{machine["machine"]}"]', has_text="revoked").wait_for()


def test_live_feed_shows_prompts_refusals_and_the_kill(
    page: Page, hookdash: Capgate, key_name: str
) -> None:
    name = f"live-{key_name}"
    person(hookdash, name)
    code = hookdash.admin("POST", "/admin/hook/codes", json={"user": name}).json()["code"]
    machine = enrol(hookdash, code, "feedbox")
    log_in(page, hookdash, "live")
    page.locator("#live-status.on").wait_for()
    audit = page.locator("#live-audit")
    audit.locator("li", has_text="enrolled the machine").first.wait_for()

    # A prompt admitted, then its model call reported: both arrive in the feed.
    assert gate(hookdash, machine["token"], "p-live-1", session="sess-live")["decision"] == "allow"
    call = {"id": f"req-{key_name}", "message_id": f"msg-{key_name}", "prompt_id": "p-live-1",
            "model": "claude-sonnet-4-6", "input": 1200, "output": 300, "cache_read": 5000,
            "cache_write": 2000, "cache_write_1h": 0}  # fmt: skip
    reported = httpx.post(
        hookdash.url + "/hook/v1/report",
        headers={"authorization": f"Bearer {machine['token']}"},
        json={"agent": "claude", "session_id": "sess-live", "calls": [call],
              "ended_prompts": [], "session_end": False},
        timeout=30,
    )  # fmt: skip
    assert reported.status_code == 200 and reported.json()["recorded"] == 1, reported.text
    rows = page.locator("#live-rows tr", has_text=machine["machine"])
    prompt = rows.filter(has=page.locator(".badge", has_text="prompt")).first
    prompt.wait_for(timeout=3000)
    assert "claude-sonnet-4-6" in prompt.inner_text()
    model_call = rows.filter(has=page.locator(".badge", has_text="model call")).first
    model_call.wait_for(timeout=3000)
    calls = [e for e in hookdash.ledger(key=machine["machine"]) if e["endpoint"] == "hook/call"]
    assert len(calls) == 1 and f"${calls[0]['cost_usd']}" in model_call.inner_text()
    assert "8,200 / 300" in model_call.inner_text()  # input + cache read + cache write / output

    killed = hookdash.admin("POST", f"/admin/users/{name}/kill", json={"logout": True})
    assert killed.status_code == 200, killed.text
    audit.locator("li", has_text=f"killed user:{name}").wait_for()
    assert "logs their Claude Code out" in audit.locator("li", has_text="killed").first.inner_text()
    assert gate(hookdash, machine["token"], "p-live-2", session="sess-live")["decision"] == "block"
    refusal = rows.filter(has=page.locator(".badge", has_text="prompt refused")).first
    refusal.wait_for(timeout=3000)
    assert "paused by an administrator" in refusal.inner_text()
    shot(page, "live-hook")

    # The admitted prompt's page: its session and prompt ids (never the prompt's text).
    (admitted,) = [e for e in hookdash.ledger(key=machine["machine"]) if e["prompt"] == "p-live-1"
                   and e["endpoint"] == "hook/prompt"]  # fmt: skip
    page.locator(f'#live-rows a[href="#/requests/{admitted["request_id"]}"]').click()
    detail = page.locator("#page .kv")
    detail.wait_for()
    assert page.locator("[data-field=session]").inner_text() == "sess-live"
    assert page.locator("[data-field=prompt]").inner_text() == "p-live-1"
    assert "hook/prompt" in detail.inner_text()
    hookdash.admin("POST", f"/admin/users/{name}/resume")


@pytest.mark.parametrize("width", [1280, 1024])
def test_the_hook_page_fits(page: Page, hookdash: Capgate, width: int, key_name: str) -> None:
    """With long names: nothing cut off, nothing out of view, every field labelled; the
    person's own page too."""
    name = f"engineer-{key_name}.with-a-long-address@example-corporation.com"
    person(hookdash, name)
    for host in ("build-agent-with-a-long-hostname.eu-central.internal", "laptop"):
        code = hookdash.admin("POST", "/admin/hook/codes", json={"user": name}).json()["code"]
        enrol(hookdash, code, host)
    hookdash.admin("POST", "/admin/hook/codes", json={"user": name})
    page.set_viewport_size({"width": width, "height": 800})
    log_in(page, hookdash, "hooks")
    page.locator(f'[data-person="{name}"] tr[data-machine]').nth(1).wait_for()
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    assert page.evaluate(FITS) == []
    page.get_by_role("button", name="New install code").click()
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('dialog input, dialog select')].filter(
            (el) => !el.labels?.length && !el.getAttribute('aria-label')).length"""
    )
    assert unlabelled == 0
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    shot(page, f"hooks-{width}")
    page.goto(f"{hookdash.url}/dashboard#/users/{name}")
    page.locator("#page tr[data-machine]").nth(1).wait_for()
    page.wait_for_load_state("networkidle")
    assert page.evaluate(FITS) == []
