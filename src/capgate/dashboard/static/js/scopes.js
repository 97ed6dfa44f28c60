// Keys, users, teams, orgs and provider budgets: the list, and the actions on one.
import { api, get } from "./api.js";
import { h, replace } from "./dom.js";
import { ago, compareDecimal, dateTime, usd } from "./format.js";
import { SINGULAR, scopeForm } from "./scope-form.js";
import { badge, clip, confirmAction, copyButton, modal, panel, table, toast, usageBars } from "./ui.js";

const INTRO = {
  keys: "Virtual keys: one per person, project or agent. Their requests count against their limits, and against their user, team and org.",
  users: "A user's limits apply to every key that names the user.",
  teams: "A team's limits apply to every key that names the team; a team may belong to an org.",
  orgs: "An org's limits apply to every team in it, and so to their keys.",
  providers: "Provider budgets: limits on everything routed to a provider. Name them like the provider in the config.",
};

export async function scopes(root, cleanup, params, kind) {
  const what = SINGULAR[kind];
  const listEl = h("div");
  const state = { search: params.get("q") || "", sort: "name", descending: false, items: [] };
  const create = h("button", { type: "button", class: "btn btn-primary", id: "create-scope" }, `New ${what}`);
  create.addEventListener("click", async () => {
    const created = await scopeForm(kind);
    if (!created) return;
    if (kind === "keys") await showNewKey(created);
    else toast(`Created ${what} "${created.name}".`);
    await load();
  });
  const search = h("input", {
    type: "search", id: "scope-search", value: state.search, autocomplete: "off",
    placeholder: kind === "keys" ? "Name, team or user" : "Name",
    "aria-label": kind === "keys" ? "Search keys by name, team or user" : `Search ${kind} by name`,
  });
  const count = h("span", { class: "muted small", role: "status" });
  search.addEventListener("input", () => { state.search = search.value; draw(); });
  const toolbar = h("div", { class: "toolbar list-toolbar" }, search, count);
  replace(root, panel(kind[0].toUpperCase() + kind.slice(1), [h("p", { class: "muted intro" }, INTRO[kind]), toolbar, listEl], { actions: create }));

  async function load() {
    state.items = (await get(`/admin/${kind}`)).items;
    draw();
  }

  function draw() {
    const shown = sortScopes(filterScopes(state.items, state.search), state.sort, state.descending);
    count.textContent = shown.length === state.items.length
      ? `${state.items.length} ${state.items.length === 1 ? what : kind}`
      : `${shown.length} of ${state.items.length} ${kind}`;
    const onSort = (by) => {
      state.descending = state.sort === by ? !state.descending : DESCENDING_FIRST.has(by);
      state.sort = by;
      draw();
    };
    replace(listEl, table(columns(kind, load, state, onSort), shown, {
      empty: state.items.length ? `No ${kind} match “${state.search}”.` : `No ${kind} yet. “New ${what}” creates one.`,
      rowAttrs: (scope) => ({ "data-name": scope.name }),
      label: kind[0].toUpperCase() + kind.slice(1),
    }));
  }
  await load();
}

// Sorts that show the biggest or newest first on their first click.
const DESCENDING_FIRST = new Set(["today", "month", "last_used", "created"]);

function filterScopes(items, text) {
  const needle = text.trim().toLowerCase();
  if (!needle) return items;
  return items.filter((s) => [s.name, s.team, s.user, s.org].some((v) => v && v.toLowerCase().includes(needle)));
}

const SORT_KEYS = {
  name: (s) => s.name,
  team: (s) => `${s.team || "\uffff"}\u0000${s.user || "\uffff"}`,
  org: (s) => s.org || "\uffff",
  status: (s) => s.status,
  last_used: (s) => s.last_used_at || "",
  created: (s) => s.created_at || "",
};

export function sortScopes(items, by, descending) {
  const compare = by === "today" || by === "month"
    ? (a, b) => compareDecimal(a.spend?.[by] ?? "0", b.spend?.[by] ?? "0")
    : (a, b) => {
      const x = SORT_KEYS[by](a);
      const y = SORT_KEYS[by](b);
      return x < y ? -1 : x > y ? 1 : 0;
    };
  const sign = descending ? -1 : 1;
  return [...items].sort((a, b) => sign * compare(a, b) || a.name.localeCompare(b.name));
}

function sortButton(state, onSort, by, text) {
  const active = state.sort === by;
  const arrow = active ? (state.descending ? " ↓" : " ↑") : "";
  return h("button", {
    type: "button", class: "sort" + (active ? " active" : ""), "data-sort": by,
    "aria-label": `Sort by ${text.toLowerCase()}${active ? (state.descending ? ", descending" : ", ascending") : ""}`,
    onclick: () => onSort(by),
  }, text + arrow);
}

function sortHead(state, onSort, ...buttons) {
  return h("div", { class: "sort-head" }, buttons.map(([by, text]) => sortButton(state, onSort, by, text)));
}

function ariaSort(state, ...names) {
  if (!names.includes(state.sort)) return null;
  return state.descending ? "descending" : "ascending";
}

// Fixed widths for the short columns; the rest share what is left (see ui.table).
function columns(kind, reload, state, onSort) {
  const out = [{
    label: "Name", width: kind === "keys" ? "20%" : "28%", ariaSort: ariaSort(state, "name", "status"),
    head: sortHead(state, onSort, ["name", "Name"], ["status", "Status"]),
    cell: (s) => [
      h("a", { href: `#/${kind}/${encodeURIComponent(s.name)}`, class: "clip strong", title: s.name }, s.name),
      h("div", { class: "row name-meta" }, badge(s.status),
        s.metadata?.hook ? h("a", { href: "#/hooks", class: "badge badge-idle", title: "A machine in hook mode: see Hook machines" }, "hook") : null,
        s.prefix ? h("span", { class: "mono muted small clip" }, s.prefix) : null),
    ],
  }];
  if (kind === "keys") {
    out.push({
      label: "Team / user", width: "12%", ariaSort: ariaSort(state, "team"),
      head: sortHead(state, onSort, ["team", "Team / user"]),
      cell: (s) => [clip(s.team), h("div", { class: "muted small" }, clip(s.user))],
    });
  }
  if (kind === "teams") {
    out.push({ label: "Org", width: "18%", ariaSort: ariaSort(state, "org"), head: sortHead(state, onSort, ["org", "Org"]), cell: (s) => clip(s.org) });
  }
  out.push({ label: "Limits", cell: (s) => [usageBars(s.usage, { compact: kind === "keys" }), models(s)] });
  if (kind === "keys") {
    out.push({
      label: "Spend", width: "132px", num: true, ariaSort: ariaSort(state, "today", "month"),
      head: sortHead(state, onSort, ["today", "Today"], ["month", "Month"]),
      cell: (s) => [
        h("div", { class: "amount", title: `spent today (${s.spend.timezone})`, "data-spend": "today" }, usd(s.spend.today)),
        h("div", { class: "muted small", title: `spent this month (${s.spend.timezone})` }, h("span", { class: "amount", "data-spend": "month" }, usd(s.spend.month)), " month"),
      ],
    });
  }
  out.push({
    label: kind === "keys" ? "Last used" : "Created", width: "104px",
    ariaSort: ariaSort(state, "last_used", "created"),
    head: kind === "keys" ? sortHead(state, onSort, ["last_used", "Last used"], ["created", "Created"]) : sortHead(state, onSort, ["created", "Created"]),
    cell: (s) => kind === "keys"
      ? [h("div", { title: s.last_used_at || "never used" }, s.last_used_at ? ago(s.last_used_at) : "never"),
        h("div", { class: "muted small", title: s.created_at }, "created ", dateTime(s.created_at))]
      : h("span", { title: s.created_at }, dateTime(s.created_at)),
  });
  out.push({ label: "Actions", width: "84px", cell: (s) => statusActions(kind, s, reload, { stacked: true }) });
  return out;
}

function models(scope) {
  if (!scope.models.length) return null;
  return h("div", { class: "chips models-line" }, scope.models.map((m) => h("span", { class: "chip clip", title: m }, m)));
}

// Pause / resume and revoke, each after a confirmation: the kill switch.
export function statusActions(kind, scope, after, { small = true, stacked = false } = {}) {
  const what = SINGULAR[kind];
  const name = scope.name;
  const act = async (action, title, message, label, danger) => {
    if (!(await confirmAction(title, message, label, { danger }))) return;
    try {
      await api("POST", `/admin/${kind}/${encodeURIComponent(name)}/${action}`);
      toast(`${what[0].toUpperCase() + what.slice(1)} "${name}": ${action === "reset-usage" ? "usage reset" : action + "d"}.`);
      await after();
    } catch (error) {
      toast(error.message, "error");
    }
  };
  if (scope.status === "revoked") return h("span", { class: "muted small" }, "revoked for good");
  const row = h("div", { class: stacked ? "stack-actions" : "row" });
  if (scope.status === "active") {
    row.append(h("button", {
      type: "button", class: small ? "btn btn-small" : "btn", "data-action": "pause",
      onclick: () => act("pause", `Pause ${what} "${name}"?`, `Every request that counts against this ${what} is refused until you resume it.`, "Pause", false),
    }, "Pause"));
  } else {
    row.append(h("button", {
      type: "button", class: small ? "btn btn-small" : "btn", "data-action": "resume",
      onclick: () => act("resume", `Resume ${what} "${name}"?`, "Its requests are admitted again, within its limits.", "Resume", false),
    }, "Resume"));
  }
  row.append(h("button", {
    type: "button", class: small ? "btn btn-small btn-danger" : "btn btn-danger", "data-action": "revoke",
    onclick: () => act("revoke", `Revoke ${what} "${name}"?`, "Revocation is final: it cannot be resumed. Every request that counts against it is refused from now on.", "Revoke for good", true),
  }, "Revoke"));
  return row;
}

export function showNewKey(created) {
  return modal(`Key "${created.name}" created`, (close) => {
    const input = h("input", { id: "new-key", readonly: true, value: created.key, "aria-label": "The new key" });
    input.addEventListener("focus", () => input.select());
    return {
      body: [
        h("div", { class: "callout" }, "Copy this key now. It is shown only once: capgate keeps only its hash."),
        h("div", { class: "secret" }, input, copyButton(() => created.key)),
        h("p", { class: "muted small" },
          "Claude Code: set ", h("code", {}, "ANTHROPIC_AUTH_TOKEN"), " to this key and ", h("code", {}, "ANTHROPIC_BASE_URL"), ` to ${location.origin}. `,
          "(Not ANTHROPIC_API_KEY: interactive Claude Code would ask whether to use it, and default to No.)"),
        h("pre", { class: "snippet", "aria-label": "Shell setup" }, `export ANTHROPIC_BASE_URL=${location.origin}\nexport ANTHROPIC_AUTH_TOKEN=${created.key}`),
        h("p", { class: "muted small" }, "SDKs: the key is the api_key (Anthropic or OpenAI SDK) with this server as the base URL (", h("code", {}, `${location.origin}/v1`), " for OpenAI)."),
      ],
      actions: [h("button", { type: "button", class: "btn btn-primary", onclick: () => close(true) }, "Done")],
    };
  });
}
