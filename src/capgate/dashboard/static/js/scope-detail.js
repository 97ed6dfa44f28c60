// One key, user, team, org or provider budget: its limits, settings, trend and requests.
import { api, get, query } from "./api.js";
import { timeChart } from "./charts.js";
import { h, replace } from "./dom.js";
import { dateTime, usd, int } from "./format.js";
import { on } from "./events.js";
import { REQUEST_COLUMNS } from "./requests-table.js";
import { SINGULAR, scopeForm } from "./scope-form.js";
import { userMachines } from "./hooks.js";
import { statusActions } from "./scopes.js";
import { rotateButton } from "./key-rotate.js";
import { badge, confirmAction, panel, segmented, table, toast, usageBars } from "./ui.js";

// Which ledger filter selects a scope's requests (orgs have none: they hold teams).
const FILTER = { keys: "key", users: "user", teams: "team", providers: "provider" };

export async function scopeDetail(root, cleanup, params, kind, name) {
  const what = SINGULAR[kind];
  const filter = FILTER[kind];
  let range = "7d";
  let metric = "cost_usd";

  let view = null; // the latest render's redrawing functions
  async function render() {
    const scope = await get(`/admin/${kind}/${encodeURIComponent(name)}`);
    const edit = h("button", { type: "button", class: "btn", "data-action": "edit" }, "Edit");
    edit.addEventListener("click", async () => {
      const saved = await scopeForm(kind, scope);
      if (saved) { toast(`Saved ${what} "${name}".`); await render(); }
    });
    const reset = h("button", { type: "button", class: "btn", "data-action": "reset-usage" }, "Reset usage");
    reset.addEventListener("click", async () => {
      if (!(await confirmAction(`Reset the usage of "${name}"?`, "Settled usage in the current windows goes back to zero. Requests in flight keep what they hold. The ledger is not changed.", "Reset usage"))) return;
      await api("POST", `/admin/${kind}/${encodeURIComponent(name)}/reset-usage`);
      toast("Usage reset.");
      await render();
    });
    const remove = h("button", { type: "button", class: "btn btn-danger", "data-action": "delete" }, "Delete");
    remove.addEventListener("click", async () => {
      if (!(await confirmAction(`Delete ${what} "${name}"?`, "It disappears from lists and its requests are refused; the ledger keeps its entries.", "Delete", { danger: true }))) return;
      await api("DELETE", `/admin/${kind}/${encodeURIComponent(name)}`);
      toast(`Deleted ${what} "${name}".`);
      location.hash = `#/${kind}`;
    });
    const head = h("div", { class: "detail-head" },
      h("a", { href: `#/${kind}`, class: "muted" }, `← ${kind[0].toUpperCase() + kind.slice(1)}`),
      h("h2", { title: name }, name), badge(scope.status), h("span", { class: "spacer" }),
      h("div", { class: "row actions" }, statusActions(kind, scope, render, { small: false }),
        kind === "keys" ? rotateButton(scope, render) : null, edit, reset, remove));

    const trend = h("div");
    const requestsEl = h("div");
    const controls = h("div", { class: "toolbar" },
      segmented([["cost_usd", "Spend"], ["requests", "Requests"]], metric, (v) => { metric = v; drawTrend(); }, "Chart metric"),
      segmented([["24h", "24 hours"], ["7d", "7 days"], ["30d", "30 days"]], range, (v) => { range = v; drawTrend(); }, "Time range"));
    const machines = kind === "users" ? await userMachines(name, render) : null;
    replace(root, head,
      h("div", { class: "grid grid-2" },
        panel("Limits and usage", usageBars(scope.usage)),
        panel("Details", details(kind, scope))),
      machines,
      filter ? panel(`Trend of this ${what}`, trend, { actions: controls }) : null,
      filter ? panel("Recent requests", requestsEl, {
        flush: true,
        actions: h("a", { href: `#/requests?${new URLSearchParams({ [filter]: name })}`, class: "btn btn-small" }, "Open in request log"),
      }) : null);

    async function drawTrend() {
      const spans = { "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };
      const now = Date.now() / 1000;
      const data = await get("/admin/timeseries" + query({ [filter]: name, from: Math.floor(now - spans[range]), to: Math.ceil(now) }));
      const total = data.series[0];
      replace(trend, timeChart(data, metric, { height: 220 }),
        h("p", { class: "legend-note" }, total ? `${int(total.total_requests)} ${total.total_requests === 1 ? "request" : "requests"}, ${usd(total.total_cost_usd)} in this range.` : ""));
    }

    async function drawRequests() {
      const page = await get("/admin/requests" + query({ [filter]: name, limit: 20 }));
      replace(requestsEl, table(REQUEST_COLUMNS, page.items, { empty: `No requests for this ${what} yet.` }));
    }

    view = { drawRequests };
    if (filter) await Promise.all([drawTrend(), drawRequests()]);
  }

  await render();
  if (filter) {
    let pending = null;
    cleanup(on("request", (entry) => {
      if (entry[filter] !== name || pending) return;
      pending = setTimeout(() => { pending = null; view.drawRequests(); }, 500);
    }));
  }
}

function details(kind, scope) {
  const rows = [["Id", h("span", { class: "mono" }, scope.id)]];
  if (scope.prefix) rows.push(["Key", h("span", { class: "mono" }, scope.prefix)]);
  if (kind === "keys") rows.push(["Team", scope.team || "—"], ["User", scope.user || "—"]);
  if (kind === "teams") rows.push(["Org", scope.org || "—"]);
  rows.push(
    ["Models", scope.models.length ? h("div", { class: "chips" }, scope.models.map((m) => h("span", { class: "chip" }, m))) : "every model"],
    ["Schedules", scope.schedules.length ? h("div", {}, scope.schedules.map((s) => h("div", { class: "small" }, `${s.model}: ${s.days} ${s.start}–${s.end} ${s.tz}`))) : "none"],
    ["Timezone", scope.timezone],
    ["Short budget", scope.on_short_budget === "clamp" ? "lower max_tokens to fit" : "refuse"],
  );
  if (kind !== "providers") rows.push(["Prompt logging", scope.log_bodies ? h("span", { "data-field": "log-bodies" }, "on: bodies and answers kept, redacted") : "off"]);
  if (kind === "keys") rows.push(["Expires", scope.expires_at ? dateTime(scope.expires_at) : "never"]);
  if (kind === "keys") {
    rows.push(["Rotated", scope.rotated_at ? dateTime(scope.rotated_at) : "never"]);
    if (scope.old_valid_until) rows.push(["Old secret until", dateTime(scope.old_valid_until)]);
    if (scope.rotate_every) rows.push(["Rotate every", `${scope.rotate_every} (due ${dateTime(scope.rotation_due_at)})`]);
  }
  rows.push(["Created", dateTime(scope.created_at)], ["Updated", dateTime(scope.updated_at)]);
  return h("dl", { class: "kv" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}
