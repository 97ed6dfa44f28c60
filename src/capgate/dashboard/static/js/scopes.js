// Keys, users, teams, orgs and provider budgets: the list, and the actions on one.
import { api, get } from "./api.js";
import { h, replace } from "./dom.js";
import { dateTime } from "./format.js";
import { SINGULAR, scopeForm } from "./scope-form.js";
import { badge, confirmAction, copyButton, modal, panel, table, toast, usageBars } from "./ui.js";

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
  const create = h("button", { type: "button", class: "btn btn-primary", id: "create-scope" }, `New ${what}`);
  create.addEventListener("click", async () => {
    const created = await scopeForm(kind);
    if (!created) return;
    if (kind === "keys") await showNewKey(created);
    else toast(`Created ${what} "${created.name}".`);
    await load();
  });
  replace(root, panel(kind[0].toUpperCase() + kind.slice(1), [h("p", { class: "muted intro" }, INTRO[kind]), listEl], { actions: create }));

  async function load() {
    const data = await get(`/admin/${kind}`);
    replace(listEl, table(columns(kind, load), data.items, {
      empty: `No ${kind} yet. “New ${what}” creates one.`,
      rowAttrs: (scope) => ({ "data-name": scope.name }),
    }));
  }
  await load();
}

function columns(kind, reload) {
  const out = [
    { label: "Name", cell: (s) => h("div", {}, h("a", { href: `#/${kind}/${encodeURIComponent(s.name)}`, class: "strong" }, s.name), s.prefix ? h("div", { class: "mono muted small" }, s.prefix) : null) },
    { label: "Status", cell: (s) => badge(s.status) },
  ];
  if (kind === "keys") out.push({ label: "Team / user", cell: (s) => [s.team || "—", " / ", s.user || "—"] });
  if (kind === "teams") out.push({ label: "Org", cell: (s) => s.org || "—" });
  out.push(
    { label: "Usage", cell: (s) => usageBars(s.usage) },
    { label: "Models", cell: (s) => (s.models.length ? h("div", { class: "chips" }, s.models.map((m) => h("span", { class: "chip" }, m))) : h("span", { class: "muted" }, "all")) },
    { label: "Created", cell: (s) => dateTime(s.created_at), cls: "nowrap" },
    { label: "Actions", cell: (s) => statusActions(kind, s, reload) });
  return out;
}

// Pause / resume and revoke, each after a confirmation: the kill switch.
export function statusActions(kind, scope, after, { small = true } = {}) {
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
  const row = h("div", { class: "row" });
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
        h("p", { class: "muted small" }, "Use it as ANTHROPIC_API_KEY (with ANTHROPIC_BASE_URL set to this server) or as an OpenAI SDK api_key."),
      ],
      actions: [h("button", { type: "button", class: "btn btn-primary", onclick: () => close(true) }, "Done")],
    };
  });
}
