// Overview: spend today and this month, health, budgets, the chart, top lists.
import { get, query } from "./api.js";
import { timeChart } from "./charts.js";
import { h, replace, select, field } from "./dom.js";
import { compareDecimal, int, ms, percent, usd } from "./format.js";
import { on } from "./events.js";
import { scoped } from "./role.js";
import { errorBox, panel, segmented, stat, table, usageRow } from "./ui.js";

const RANGES = [["1h", "1 hour"], ["24h", "24 hours"], ["7d", "7 days"], ["30d", "30 days"]];
const SPANS = { "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };
const GROUPS = [["", "Total"], ["key", "Key"], ["team", "Team"], ["user", "User"], ["model", "Model"], ["provider", "Provider"]];

export async function overview(root, cleanup) {
  const state = { range: "24h", group: "", metric: "cost_usd" };
  const statsEl = h("div", { class: "stats" });
  const chartEl = h("div");
  const tops = [h("div"), h("div"), h("div"), h("div")];
  const budgetsEl = h("div");
  const groupSelect = select(GROUPS, state.group, { "aria-label": "Group the chart by" });
  groupSelect.addEventListener("change", () => { state.group = groupSelect.value; drawChart(); });
  const controls = h("div", { class: "toolbar" },
    segmented([["cost_usd", "Spend"], ["requests", "Requests"]], state.metric, (v) => { state.metric = v; drawChart(); }, "Chart metric"),
    segmented(RANGES, state.range, (v) => { state.range = v; drawChart(); drawTops(); }, "Time range"),
    field("Group by", groupSelect, null, "inline-field"));
  replace(root,
    statsEl,
    panel("Spend and requests over time", chartEl, { actions: controls }),
    h("div", { class: "grid grid-2" },
      panel("Budgets closest to their limit", budgetsEl, { flush: true }),
      h("div", { class: "grid" }, tops[0], tops[1])),
    h("div", { class: "grid grid-2" }, tops[2], tops[3]));

  async function drawStats() {
    const [today, month] = await Promise.all([get("/admin/summary?period=today"), get("/admin/summary?period=month")]);
    replace(statsEl,
      stat("Spend today", usd(today.cost_usd), `${int(today.requests)} requests`),
      stat("Spend this month", usd(month.cost_usd), `${int(month.requests)} requests`),
      savedStat(month),
      stat("Refusals today", int(today.refused), refusalSub(today)),
      stat("Error rate today", percent(today.error_rate), `${int(today.errors)} failed upstream`),
      stat("Latency p50 / p95", `${ms(today.latency_ms.p50)}`, `p95 ${ms(today.latency_ms.p95)} · today`),
      stat("Active keys today", int(today.keys), `timezone ${today.timezone}`));
  }

  async function drawChart() {
    const now = Date.now() / 1000;
    const params = { from: Math.floor(now - SPANS[state.range]), to: Math.ceil(now), group_by: state.group, top: 6 };
    try {
      const data = await get("/admin/timeseries" + query(params));
      replace(chartEl, timeChart(data, state.metric), h("p", { class: "legend-note" },
        `${data.step === "minute" ? "Per minute" : data.step === "hour" ? "Per hour" : "Per day"}, ${data.timezone}. Hover for exact values.`));
    } catch (error) {
      replace(chartEl, errorBox(error));
    }
  }

  async function drawTops() {
    if (scoped()) return; // a team admin: usage sums span every team
    const since = Math.floor(Date.now() / 1000 - SPANS[state.range]);
    const lists = [["key", "Top keys"], ["model", "Top models"], ["team", "Top teams"], ["user", "Top users"]];
    const answers = await Promise.all(lists.map(([group]) => get(`/admin/usage${query({ group_by: group, from: since })}`)));
    lists.forEach(([group, title], i) => {
      replace(tops[i], panel(`${title} · last ${RANGES.find(([r]) => r === state.range)[1]}`, topTable(group, answers[i].items.slice(0, 5)), { flush: true }));
    });
  }

  async function drawBudgets() {
    const kinds = scoped() ? ["teams", "users", "keys"] : ["orgs", "teams", "users", "providers", "keys"];
    const answers = await Promise.all(kinds.map((kind) => get(`/admin/${kind}`)));
    const rows = [];
    answers.forEach((answer, i) => {
      for (const scope of answer.items) {
        for (const usage of scope.usage) rows.push({ kind: kinds[i], scope, usage, share: share(usage) });
      }
    });
    rows.sort((a, b) => b.share - a.share);
    replace(budgetsEl, table([
      { label: "Scope", width: "38%", cell: (r) => h("a", { href: `#/${r.kind}/${encodeURIComponent(r.scope.name)}`, class: "clip", title: r.scope.name }, `${r.kind.slice(0, -1)} ${r.scope.name}`) },
      { label: "Limit", cell: (r) => usageRow(r.usage), cls: "wide" },
    ], rows.slice(0, 8), { empty: "No limits yet. Create a key with a limit to see it here." }));
  }

  await Promise.all([drawStats(), drawChart(), drawTops(), drawBudgets()]).catch((error) => root.prepend(errorBox(error)));

  let pending = null;
  cleanup(on("request", () => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; drawStats(); }, 1000);
  }));
}

const REASONS = {
  budget: "budget", rate_limit: "rate limit", paused: "paused", revoked: "revoked",
  expired: "expired", model_not_allowed: "model not allowed", outside_schedule: "schedule",
};

// Why requests were refused, most first: "2 budget · 1 rate limit".
function refusalSub(summary) {
  if (!summary.requests) return "no requests yet";
  const reasons = Object.entries(summary.refusals_by_reason || {});
  if (!reasons.length) return `${percent(0)} of requests`;
  return h("span", { class: "reasons", "data-reasons": "" }, reasons.map(([reason, count], i) => [
    i ? " · " : "",
    h("span", { "data-reason": reason }, `${int(count)} ${REASONS[reason] || reason.replaceAll("_", " ")}`),
  ]));
}

// What the response cache saved this month: what its hits would have cost upstream.
function savedStat(month) {
  const el = stat("Saved by caching", usd(month.saved_usd),
    month.cache_hits ? `${int(month.cache_hits)} cache hits this month` : "no cache hits this month");
  el.dataset.stat = "saved";
  return el;
}

function share(usage) {
  const max = Number(usage.max);
  return max > 0 ? Number(usage.used) / max : 0;
}

function topTable(group, items) {
  return table([
    { label: group[0].toUpperCase() + group.slice(1), cell: (r) => nameCell(group, r[group]) },
    { label: "Requests", width: "84px", cell: (r) => int(r.requests), num: true },
    { label: "Spend", width: "112px", cell: (r) => usd(r.cost_usd), num: true },
  ], items.sort((a, b) => compareDecimal(b.cost_usd, a.cost_usd)), { empty: "No requests in this range." });
}

function nameCell(group, name) {
  if (name === null || name === undefined) return h("span", { class: "muted" }, "(none)");
  if (group === "key") return h("a", { href: `#/keys/${encodeURIComponent(name)}`, class: "clip", title: name }, name);
  return h("a", { href: `#/requests?${new URLSearchParams({ [group]: name })}`, class: "clip", title: name }, name);
}
