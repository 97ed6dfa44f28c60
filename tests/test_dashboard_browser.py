"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright
offline): log in, see a key made through the API, create a key in the UI and use it,
watch a request arrive in the live feed without reloading, pause a key from the UI and
see its next request refused, export the filtered request log as CSV, and visit every
page without a JavaScript error (a CSP violation is one). Screenshots of each page are
kept in tests/artifacts/."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from conftest import ROOT, Capgate, Upstream, gateway_config, need, start_capgate

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
HAIKU = "claude-haiku-4-5"
TEAM_KEYS = [f"agent-{i:02d}-nightly-evaluation-runner-for-the-research-cluster" for i in range(50)]
PAGES = ["overview", "live", "requests", "keys", "users", "teams", "orgs", "providers",
         "hooks", "upstreams", "settings", "audit", "alerts", "admins"]  # fmt: skip

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # checked by need() below
    sync_playwright = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    need(sync_playwright is not None, "playwright is not installed (pip install -e '.[dev]')")
    need(Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
         "Debian's chromium is not installed (apt-get install chromium)")  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def dash(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    """A server of the module's own, with a little history to show."""
    server = start_capgate(
        tmp_path_factory.mktemp("dash"), gateway_config(upstream),
        env={"CAPGATE_SECRET_KEY": "ab" * 32},  # runtime providers' keys (Upstreams page)
    )  # fmt: skip
    try:
        server.admin("POST", "/admin/orgs", json={"name": "acme", "limits": [
            {"metric": "cost_usd", "window": "month", "max": "200"}]})  # fmt: skip
        server.admin("POST", "/admin/teams", json={"name": "research", "org": "acme", "limits": [
            {"metric": "cost_usd", "window": "day", "max": "0.05"}]})  # fmt: skip
        server.admin("POST", "/admin/users", json={"name": "alice", "limits": [
            {"metric": "requests", "window": "day", "max": 500}]})  # fmt: skip
        # keys may only name teams and users that exist
        for team in ("platform", "ops", "web", "platform-infrastructure-and-developer-experience"):
            server.admin("POST", "/admin/teams", json={"name": team})
        for i in range(len(TEAM_KEYS)):
            user = f"engineer-{i:02d}.with-a-long-address@example-corporation.com"
            server.admin("POST", "/admin/users", json={"name": user})
        keys = {
            "alice-laptop": server.create_key(
                "alice-laptop",
                [{"metric": "cost_usd", "window": "day", "max": "0.02"},
                 {"metric": "requests", "window": "minute", "max": 30}],
                team="research", user="alice",
            ),
            "ci-bot": server.create_key(
                "ci-bot", [{"metric": "tokens", "window": "day", "max": 20000}], team="platform"
            ),
        }  # fmt: skip
        for i in range(12):
            name = "alice-laptop" if i % 3 else "ci-bot"
            model = (HAIKU, "claude-sonnet-4-6")[i % 2]
            ask(server.url, keys[name], model, f"hello mock:words={5 + 7 * i}")
        for i, name in enumerate(TEAM_KEYS):  # a team of 50, to see that the lists still fit
            key = server.create_key(
                name,
                [{"metric": "cost_usd", "window": "day", "max": "2.50"},
                 {"metric": "requests", "window": "minute", "max": 60},
                 {"metric": "output_tokens", "window": "month", "max": 5_000_000,
                  "model": "claude-sonnet-*"}],
                team=("research", "platform-infrastructure-and-developer-experience")[i % 2],
                user=f"engineer-{i:02d}.with-a-long-address@example-corporation.com",
                models=["claude-haiku-*", "claude-sonnet-*"] if i % 3 == 0 else [],
            )  # fmt: skip
            for words in range(i % 4 if i < 12 else 0):
                ask(server.url, key, HAIKU, f"team mock:words={3 + 11 * words + i}")
        yield server
    finally:
        server.close()


class Console:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def __call__(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Browser, dash: Capgate, console: Console) -> Iterator[Page]:
    """A fresh browser context at 1280x800; the test fails on any console error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    opened = context.new_page()
    opened.on("console", console)
    opened.on("pageerror", lambda error: console.errors.append(f"pageerror: {error}"))
    opened.set_default_timeout(10_000)
    try:
        yield opened
    finally:
        context.close()
    assert console.errors == [], console.errors


def ask(url: str, key: str, model: str = HAIKU, text: str = "hi mock:words=3") -> httpx.Response:
    return httpx.post(
        url + "/v1/messages",
        headers={"x-api-key": key},
        json={"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": text}]},
        timeout=30,
    )


def log_in(page: Page, dash: Capgate) -> None:
    page.goto(dash.url + "/dashboard")
    page.get_by_label("Admin key").fill(dash.admin_key)
    page.get_by_role("button", name="Sign in").click()
    page.locator(".stat").first.wait_for()


def go(page: Page, dash: Capgate, route: str) -> None:
    page.goto(f"{dash.url}/dashboard#/{route}")
    page.wait_for_load_state("networkidle")


def shot(page: Page, name: str, full: bool = False) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)


# -- the flows -----------------------------------------------------------------------------


def test_login_refuses_a_wrong_key_then_opens_the_overview(
    page: Page, dash: Capgate, console: Console
) -> None:
    page.goto(dash.url + "/dashboard")
    password = page.get_by_label("Admin key")
    assert password.get_attribute("type") == "password"
    shot(page, "login")
    password.fill("sk-cg-admin-wrong")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Wrong admin key.").wait_for()
    assert page.locator("#shell").is_hidden()
    # Chromium logs the refused login's 401 itself; that one is expected.
    assert console.errors == [
        "error: Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]
    console.errors.clear()
    password.fill(dash.admin_key)
    page.get_by_role("button", name="Sign in").click()
    page.locator(".stat").first.wait_for()
    page.locator(".chart canvas").first.wait_for()
    page.wait_for_load_state("networkidle")
    stats = page.locator(".stats").inner_text()
    spend = dash.admin("GET", "/admin/summary", params={"period": "today"}).json()["cost_usd"]
    assert "Spend today" in stats and f"${spend}" in stats.replace(",", "")
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["capgate_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # invisible to scripts
    shot(page, "overview", full=True)


def test_a_key_created_through_the_api_is_listed(page: Page, dash: Capgate, key_name: str) -> None:
    dash.create_key(key_name, [{"metric": "requests", "window": "day", "max": 7}], team="ops")
    log_in(page, dash)
    go(page, dash, "keys")
    row = page.locator(f'tr[data-name="{key_name}"]')
    text = row.inner_text()
    assert "active" in text and "ops" in text and "0 / 7" in text and "Requests daily" in text
    assert row.get_by_role("progressbar").count() == 1
    shot(page, "keys")


def test_create_a_key_in_the_ui_and_use_it(page: Page, dash: Capgate, key_name: str) -> None:
    log_in(page, dash)
    go(page, dash, "keys")
    page.get_by_role("button", name="New key").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Name", exact=True).fill(key_name)
    dialog.get_by_label("Team", exact=True).fill("web")
    dialog.get_by_role("button", name="+ Add limit").click()
    dialog.get_by_label("Metric", exact=True).select_option("requests")
    dialog.get_by_label("Window", exact=True).fill("day")
    dialog.get_by_label("Maximum", exact=True).fill("2")
    shot(page, "new-key-form")
    dialog.get_by_role("button", name="Create key").click()
    raw = page.locator("#new-key").input_value()
    assert raw.startswith("sk-cg-")
    assert page.get_by_text("shown only once").is_visible()
    # Claude Code takes the key as ANTHROPIC_AUTH_TOKEN: as ANTHROPIC_API_KEY, interactive
    # Claude Code asks "use this API key?" and defaults to No.
    snippet = page.get_by_role("dialog").get_by_label("Shell setup").inner_text()
    assert f"export ANTHROPIC_AUTH_TOKEN={raw}" in snippet and "ANTHROPIC_API_KEY" not in snippet
    assert f"export ANTHROPIC_BASE_URL={dash.url}" in snippet
    shot(page, "new-key-shown")
    page.get_by_role("button", name="Done").click()
    page.locator(f'tr[data-name="{key_name}"]').wait_for()

    with anthropic.Anthropic(base_url=dash.url, api_key=raw, max_retries=0) as client:
        message = client.messages.create(
            model=HAIKU, max_tokens=50, messages=[{"role": "user", "content": "hi mock:words=4"}]
        )
    assert message.usage.output_tokens == 4
    shown = dash.admin("GET", f"/admin/keys/{key_name}").json()
    assert shown["team"] == "web" and shown["limits"] == [
        {"metric": "requests", "window": "day", "max": 2}
    ]
    assert shown["usage"][0]["used"] == 1
    assert [e["outcome"] for e in dash.ledger(key=key_name)] == ["ok"]
    page.reload()
    page.locator(f'tr[data-name="{key_name}"]').get_by_text("1 / 2").wait_for()


def test_live_feed_shows_new_requests_without_reloading(
    page: Page, dash: Capgate, key_name: str
) -> None:
    key = dash.create_key(key_name, [{"metric": "requests", "window": "day", "max": 1}])
    log_in(page, dash)
    go(page, dash, "live")
    page.locator("#live-status.on").wait_for()
    page.evaluate("window.__sameDocument = 42")
    assert ask(dash.url, key, text="live mock:words=6").status_code == 200
    row = page.locator("#live-rows tr", has_text=key_name).first
    row.wait_for(timeout=2000)  # "within a second", with room for a slow machine
    entry = dash.ledger(key=key_name)[0]
    text = row.inner_text()
    assert HAIKU in text and "200" in text and f"${entry['cost_usd']}" in text
    assert f"/ {entry['output_tokens']}" in text
    assert ask(dash.url, key).status_code == 402
    page.locator("#live-rows tr", has_text="refused 402").first.wait_for(timeout=2000)
    assert page.evaluate("window.__sameDocument") == 42  # never reloaded
    page.locator("#live-audit li", has_text=f"key:{key_name}").first.wait_for()
    shot(page, "live")


def test_pause_a_key_in_the_ui_and_its_next_request_is_refused(
    page: Page, dash: Capgate, key_name: str
) -> None:
    key = dash.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "1"}])
    assert ask(dash.url, key).status_code == 200
    log_in(page, dash)
    go(page, dash, f"keys/{key_name}")
    page.locator("#page .chart").first.wait_for()
    page.locator("[data-action=pause]").click()
    confirm = page.get_by_role("dialog")
    assert "refused until you resume" in confirm.inner_text()
    confirm.get_by_role("button", name="Pause").click()
    page.locator(".detail-head .badge-paused").wait_for()
    refused = ask(dash.url, key)
    assert refused.status_code == 403 and "paused" in refused.json()["error"]["message"]
    assert dash.admin("GET", f"/admin/keys/{key_name}").json()["status"] == "paused"
    page.locator("#page tr", has_text="paused").first.wait_for()  # the recent requests table
    shot(page, "key-detail", full=True)
    page.locator("[data-action=resume]").click()
    page.get_by_role("dialog").get_by_role("button", name="Resume").click()
    page.locator(".detail-head .badge-active").wait_for()
    assert ask(dash.url, key).status_code == 200


def test_export_csv_holds_exactly_the_filtered_requests(
    page: Page, dash: Capgate, key_name: str
) -> None:
    key = dash.create_key(key_name, [{"metric": "requests", "window": "day", "max": 3}])
    for words in (2, 4, 6, 8):
        ask(dash.url, key, text=f"csv mock:words={words}")
    log_in(page, dash)
    go(page, dash, "requests")
    page.get_by_label("Key", exact=True).fill(key_name)
    page.get_by_label("Outcome", exact=True).select_option("ok")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(f"**key={key_name}**")
    page.locator("#page .pager", has_text="3 requests").wait_for()
    expected = dash.ledger(key=key_name, outcome="ok")
    assert len(expected) == 3
    assert page.locator("#page tbody tr").count() == 3
    shot(page, "requests")
    with page.expect_download() as info:
        page.locator("#export-csv").click()
    download = info.value
    assert download.suggested_filename == "capgate-requests.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text("utf-8"))))
    assert [r["id"] for r in rows] == [str(e["id"]) for e in expected]
    assert {r["key"] for r in rows} == {key_name} and {r["outcome"] for r in rows} == {"ok"}
    assert [r["cost_usd"] for r in rows] == [e["cost_usd"] for e in expected]
    assert [int(r["output_tokens"]) for r in rows] == [6, 4, 2]  # the fourth was refused


def test_settings_can_be_changed_in_the_ui(page: Page, dash: Capgate) -> None:
    log_in(page, dash)
    go(page, dash, "settings")
    page.get_by_role("combobox", name="Default timezone").fill("Europe/Berlin")
    page.get_by_role("button", name="Save", exact=True).click()
    page.get_by_text("changed here").first.wait_for()
    assert dash.admin("GET", "/admin/settings").json()["timezone"] == "Europe/Berlin"
    shot(page, "settings", full=True)
    page.get_by_role("button", name="Use the config file's").click()
    page.get_by_text("changed here").wait_for(state="detached")
    assert dash.admin("GET", "/admin/settings").json()["timezone"] == "UTC"


def test_a_provider_and_route_are_added_edited_and_removed_in_the_ui(
    page: Page, dash: Capgate
) -> None:
    log_in(page, dash)
    go(page, dash, "upstreams")
    page.locator("#add-provider").click()
    form = page.locator("#provider-form")
    form.get_by_label("Name").fill("ui-upstream")
    form.get_by_label("Type").select_option("openai-compatible")
    form.get_by_label("API key").fill("ui-secret-1")
    form.get_by_label("Base URL").fill("https://llm.example.com/v1")
    page.get_by_role("button", name="Add provider", exact=True).last.click()
    row = page.locator('tr[data-provider="ui-upstream"]')
    row.get_by_text("sha256:").wait_for()
    assert "ui-secret-1" not in page.content()
    # Edit: the key field is empty (write-only); left empty, the key stays.
    row.locator('[data-action="edit-provider"]').click()
    assert page.locator("#provider-form").get_by_label("API key").input_value() == ""
    page.locator("#provider-form").get_by_label("Timeout (s)").fill("90")
    page.get_by_role("button", name="Save", exact=True).click()
    page.locator("#provider-form").wait_for(state="detached")
    shown = dash.admin("GET", "/admin/routing/providers/ui-upstream").json()
    assert shown["timeout_s"] == 90 and shown["api_key_fingerprint"].startswith("sha256:")
    # A route to it, then both removed (the route first: a used provider is kept).
    page.locator("#add-route").click()
    page.locator("#route-form").get_by_label("Model name or glob").fill("ui-model-*")
    page.locator("#route-form").get_by_label("Provider").select_option("ui-upstream")
    page.get_by_role("button", name="Add route", exact=True).last.click()
    page.locator('tr[data-route="ui-model-*"]').wait_for()
    shot(page, "upstreams", full=True)
    for selector, action in (('tr[data-route="ui-model-*"]', "remove-route"),
                             ('tr[data-provider="ui-upstream"]', "remove-provider")):  # fmt: skip
        page.locator(selector).locator(f'[data-action="{action}"]').click()
        page.locator('[data-confirm="yes"]').click()
        page.locator(selector).wait_for(state="detached")
    assert all(p["name"] != "ui-upstream" for p in
               dash.admin("GET", "/admin/routing/providers").json()["items"])  # fmt: skip


# Every table, cell, button, link and field of a page inside its card, every card inside
# the window, and no table scrolled sideways (a scrolled column is out of view too).
FITS = """() => {
  const problems = [];
  const vw = document.documentElement.clientWidth;
  const shown = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const name = (el) => `${el.tagName.toLowerCase()}${el.className && typeof el.className === "string"
    ? "." + el.className.trim().split(/\\s+/).join(".") : ""} "${(el.textContent || "").trim().slice(0, 40)}"`;
  const within = (r, box) => r.left >= box.left - 1 && r.right <= box.right + 1;
  for (const card of document.querySelectorAll("#page .panel")) {
    if (!shown(card)) continue;
    const box = card.getBoundingClientRect();
    if (box.left < -1 || box.right > vw + 1) problems.push("card outside the window: " + name(card));
    for (const wrap of card.querySelectorAll(".table-wrap")) {
      if (wrap.scrollWidth > wrap.clientWidth + 1) {
        problems.push(`table scrolls sideways, ${wrap.scrollWidth} > ${wrap.clientWidth} px: ` + name(wrap.querySelector("thead") || wrap));
      }
    }
    for (const el of card.querySelectorAll("table, th, td, button, a, input, select, .badge, [role=progressbar], .num")) {
      if (!shown(el)) continue;
      const r = el.getBoundingClientRect();
      if (!within(r, box) || r.right > vw + 1) problems.push("cut off by its card or the window: " + name(el));
      const cell = el.parentElement?.closest("td, th");
      if (cell && !within(r, cell.getBoundingClientRect())) problems.push("sticks out of its cell: " + name(el));
      if ((el.tagName === "TD" || el.tagName === "TH") && el.scrollWidth > el.clientWidth + 1) {
        problems.push(`wider than its cell, ${el.scrollWidth} > ${el.clientWidth} px: ` + name(el));
      }
    }
  }
  return problems;
}"""


@pytest.mark.parametrize("width", [1280, 1024])
def test_every_page_renders_without_errors(
    browser: Browser, dash: Capgate, page: Page, width: int
) -> None:
    """Every page at 1280 and 1024 px with a team of 50 keys (long names, three limits
    each): nothing cut off, nothing out of view, no error, no unlabelled field."""
    page.set_viewport_size({"width": width, "height": 800})
    log_in(page, dash)
    entry = dash.ledger(key="alice-laptop")[0]
    routes = [*PAGES, "keys/alice-laptop", f"keys/{TEAM_KEYS[0]}", "teams/research",
              f"requests/{entry['request_id']}"]  # fmt: skip
    for route in routes:
        go(page, dash, route)
        page.locator("#page .panel").first.wait_for()
        if route in ("keys", "overview", "live", "requests"):
            page.locator("#page table").first.wait_for()
        assert page.locator("#page [role=alert]").count() == 0, route
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{route} is wider than the window at {width}px"
        problems = page.evaluate(FITS)
        assert problems == [], f"{route} at {width}px: {problems[:8]}"
        unlabelled = page.evaluate(
            """[...document.querySelectorAll('#page input, #page select')].filter(
                (el) => !el.labels?.length && !el.getAttribute('aria-label')).length"""
        )
        assert unlabelled == 0, route
        if width == 1280:
            shot(page, "page-" + route.replace("/", "-"))
    go(page, dash, "keys")
    page.locator("#page tbody tr").nth(51).wait_for()
    shot(page, f"keys-{width}", full=True)
    if width == 1024:
        go(page, dash, "overview")
        shot(page, "overview-1024", full=True)


def test_sign_out(page: Page, dash: Capgate) -> None:
    log_in(page, dash)
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Admin key").wait_for()
    assert page.request.get(dash.url + "/admin/keys").status == 401
    page.reload()
    page.get_by_label("Admin key").wait_for()


def test_edit_limits_models_and_schedules_in_the_ui(
    page: Page, dash: Capgate, console: Console, key_name: str
) -> None:
    dash.create_key(key_name, [{"metric": "requests", "window": "day", "max": 3}], team="ops")
    log_in(page, dash)
    go(page, dash, f"keys/{key_name}")
    page.locator("[data-action=edit]").click()
    dialog = page.get_by_role("dialog")
    assert dialog.get_by_label("Name", exact=True).is_disabled()
    dialog.get_by_label("Maximum", exact=True).fill("9")
    dialog.get_by_label("Allowed models").fill("claude-haiku-*, gpt-5-mini")
    dialog.get_by_role("button", name="+ Add schedule").click()
    dialog.get_by_label("Days", exact=True).fill("mon-fri")
    dialog.get_by_label("Team", exact=True).fill("")
    dialog.get_by_role("button", name="Save changes").click()
    page.locator("#page .usage", has_text="0 / 9").wait_for()
    shown = dash.admin("GET", f"/admin/keys/{key_name}").json()
    assert shown["limits"] == [{"metric": "requests", "window": "day", "max": 9}]
    assert shown["models"] == ["claude-haiku-*", "gpt-5-mini"] and shown["team"] is None
    assert shown["schedules"] == [
        {"model": "*", "days": "mon,tue,wed,thu,fri", "start": "09:00", "end": "18:00", "tz": "UTC"}
    ]
    # A bad value is refused in the form, naming the field, and changes nothing.
    page.locator("[data-action=edit]").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Window", exact=True).fill("fortnight")
    dialog.get_by_role("button", name="Save changes").click()
    dialog.get_by_role("alert").filter(has_text="window").wait_for()
    assert console.errors == [  # Chromium's own log line for the refused request
        "error: Failed to load resource: the server responded with a status of 400 (Bad Request)"
    ]
    console.errors.clear()
    dialog.get_by_role("button", name="Cancel").click()
    assert dash.admin("GET", f"/admin/keys/{key_name}").json()["limits"][0]["window"] == "day"


def test_keys_list_searches_sorts_and_shows_spend_and_last_use(page: Page, dash: Capgate) -> None:
    log_in(page, dash)
    go(page, dash, "keys")
    rows = page.locator("#page tbody tr")
    rows.nth(51).wait_for()
    listed = dash.admin("GET", "/admin/keys").json()["items"]
    assert rows.count() == len(listed) >= 52

    def names() -> list[str]:
        return [str(n) for n in rows.evaluate_all("(rows) => rows.map((r) => r.dataset.name)")]

    search = page.get_by_label("Search keys by name, team or user")
    search.fill("agent-0")
    assert names() == TEAM_KEYS[:10]
    search.fill("PLATFORM-infra")  # the team, any case
    assert names() == TEAM_KEYS[1::2]
    search.fill("engineer-07.with")  # the user
    assert names() == [TEAM_KEYS[7]]
    page.get_by_text("1 of").wait_for()
    search.fill("")

    # Spend today, biggest first, exactly as the API has it; ties by name.
    page.get_by_role("button", name="Sort by today").click()
    by_spend = sorted(listed, key=lambda k: (-Decimal(k["spend"]["today"]), k["name"]))
    assert names() == [k["name"] for k in by_spend]
    assert page.locator("th[aria-sort=descending]").inner_text().startswith("Today")
    top = by_spend[0]
    assert Decimal(top["spend"]["today"]) > 0
    first = rows.first
    shown = first.locator("[data-spend=today]").inner_text()
    assert Decimal(shown.lstrip("$").replace(",", "")) == Decimal(top["spend"]["today"])
    assert first.locator("[data-spend=month]").inner_text().lstrip("$").replace(",", "") != ""
    page.get_by_role("button", name="Sort by today").click()  # again: smallest first
    assert names()[-1] == top["name"]

    page.get_by_role("button", name="Sort by name").click()
    assert names() == sorted(k["name"] for k in listed)
    page.get_by_role("button", name="Sort by name").click()
    assert names() == sorted((k["name"] for k in listed), reverse=True)

    page.get_by_role("button", name="Sort by last used").click()
    used = [k for k in listed if k["last_used_at"]]
    newest = max(used, key=lambda k: k["last_used_at"])
    assert names()[0] == newest["name"]
    assert page.locator(f'tr[data-name="{TEAM_KEYS[40]}"]').get_by_text("never").is_visible()
    assert "ago" in rows.first.inner_text() or "just now" in rows.first.inner_text()


def test_find_a_clamped_request_by_its_id(
    page: Page, dash: Capgate, console: Console, key_name: str
) -> None:
    key = dash.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "0.10"}])
    answer = httpx.post(
        dash.url + "/v1/messages",
        headers={"x-api-key": key},
        json={"model": "claude-sonnet-4-6", "max_tokens": 64_000,
              "messages": [{"role": "user", "content": "long mock:words=20000"}]},
        timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["x-capgate-request-id"]
    clamped = int(answer.headers["x-capgate-max-tokens"])
    ask(dash.url, key, text="another mock:words=2")
    log_in(page, dash)
    go(page, dash, "requests")
    page.get_by_label("Request id", exact=True).fill(request_id)
    page.get_by_role("button", name="Apply").click()
    page.locator("#page .pager", has_text="1 requests").wait_for()
    row = page.locator("#page tbody tr")
    assert row.count() == 1 and f"max_tokens lowered to {clamped:,}" in row.inner_text()
    row.get_by_role("link").first.click()
    page.wait_for_url(f"**#/requests/{request_id}")
    detail = page.locator("#page .kv")
    detail.wait_for()
    assert request_id in detail.inner_text()
    assert page.locator("[data-field=max_tokens_clamped]").inner_text() == (
        f"lowered to {clamped:,} to fit the budget"
    )
    assert "Flags\nnone" in detail.inner_text()
    shot(page, "request-detail")
    go(page, dash, "requests/no-such-request")
    page.locator("#page [role=alert]", has_text="no-such-request").wait_for()
    assert console.errors == [  # Chromium's own log line for the 404
        "error: Failed to load resource: the server responded with a status of 404 (Not Found)"
    ]
    console.errors.clear()


def test_overview_splits_refusals_by_reason(page: Page, dash: Capgate, key_name: str) -> None:
    only_gpt = dash.create_key(key_name, models=["gpt-*"])
    assert ask(dash.url, only_gpt).status_code == 403
    log_in(page, dash)
    page.locator("[data-reason=model_not_allowed]").wait_for()
    reasons = dash.admin("GET", "/admin/summary", params={"period": "today"}).json()[
        "refusals_by_reason"
    ]
    shown = page.locator("[data-reason]").evaluate_all(
        "(els) => els.map((el) => [el.dataset.reason, el.textContent])"
    )
    assert [r for r, _ in shown] == list(reasons)
    assert [int(text.split()[0]) for _, text in shown] == list(reasons.values())
    assert (
        page.locator("[data-reason=model_not_allowed]").inner_text().endswith("model not allowed")
    )


def test_chart_axis_amounts_under_a_cent_never_print_the_same(page: Page, dash: Capgate) -> None:
    log_in(page, dash)
    labels = page.evaluate(
        """async () => {
          const { axisUsdLabels } = await import("/dashboard/static/js/format.js");
          return [
            axisUsdLabels([0, 0.005, 0.01, 0.015, 0.02]),
            axisUsdLabels([0.0042, 0.0043, 0.0044]),
            axisUsdLabels([0, 0.5, 1, 1.5]),
            axisUsdLabels([0, 20, 40, 60]),
            axisUsdLabels([0, 0.000001, 0.000002]),
          ];
        }"""
    )
    assert labels == [
        ["$0", "$0.005", "$0.010", "$0.015", "$0.020"],
        ["$0.0042", "$0.0043", "$0.0044"],
        ["$0", "$0.50", "$1.00", "$1.50"],
        ["$0", "$20", "$40", "$60"],
        ["$0", "$0.000001", "$0.000002"],
    ]


def test_an_owner_makes_a_team_admin_who_sees_only_their_team(page: Page, dash: Capgate) -> None:
    """The Admins page (owners), then a login by name and password: a team admin (of two
    teams: the overview sums both) sees their teams' pages and keys only, and every page
    they see loads without an error."""
    assert dash.admin("POST", "/admin/teams", json={"name": "design"}).status_code == 201
    log_in(page, dash)
    go(page, dash, "admins")
    page.get_by_role("button", name="New admin").click()
    page.get_by_label("Name", exact=True).fill("lead-ui")
    page.locator("#admin-role").select_option("team-admin")
    page.get_by_label("Teams").fill("research, design")
    page.get_by_label("Password (12 characters or more)").fill("a long enough password")
    page.get_by_role("button", name="Create").click()
    page.locator('tr[data-name="lead-ui"]').wait_for()
    shot(page, "admins")
    page.get_by_role("button", name="Sign out").click()
    page.locator("#login-name").fill("lead-ui")
    page.get_by_label("Password or admin key").fill("a long enough password")
    page.get_by_role("button", name="Sign in").click()
    page.locator(".stat").first.wait_for()
    assert "team-admin" in page.locator("#whoami").inner_text()
    visible = page.evaluate(
        "[...document.querySelectorAll('.nav a')].filter((a) => !a.parentElement.hidden)"
        ".map((a) => a.dataset.page)"
    )
    assert visible == ["overview", "live", "requests", "keys", "users", "teams"]
    go(page, dash, "keys")
    page.locator('tr[data-name="alice-laptop"]').wait_for()
    names = page.evaluate(
        "[...document.querySelectorAll('#page tr[data-name]')].map((r) => r.dataset.name)"
    )
    assert "ci-bot" not in names and len(names) == 1 + len(TEAM_KEYS) // 2
    for route in visible:
        go(page, dash, route)
        page.locator("#page .panel").first.wait_for()
        assert page.locator("#page [role=alert]").count() == 0, route


def test_rotate_a_key_in_the_ui_shows_the_new_secret_once(
    page: Page, dash: Capgate, key_name: str
) -> None:
    old = dash.create_key(key_name)
    assert ask(dash.url, old).status_code == 200
    log_in(page, dash)
    go(page, dash, f"keys/{key_name}")
    page.locator("[data-action=rotate]").click()
    dialog = page.get_by_role("dialog")
    assert "shown once" in dialog.inner_text()
    dialog.get_by_label("Old secret keeps working").select_option("3600")
    dialog.get_by_role("button", name="Rotate").click()
    new = page.locator("#rotated-key").input_value()
    assert new.startswith("sk-cg-") and new != old and new[:18] == old[:18]
    assert "The old secret works until" in page.get_by_role("dialog").inner_text()
    page.get_by_role("dialog").get_by_role("button", name="Done").click()
    page.locator("dd", has_text="Old secret until").or_(
        page.locator("dt", has_text="Old secret until")
    ).first.wait_for()
    assert ask(dash.url, new).status_code == 200
    assert ask(dash.url, old).status_code == 200  # an hour of grace
    shown = dash.admin("GET", f"/admin/keys/{key_name}").json()
    assert shown["rotated_at"] is not None and "key" not in shown
    assert new not in page.content()  # shown once: gone with its dialog
