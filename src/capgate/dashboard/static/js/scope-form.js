// The create / edit form of a key, user, team, org or provider budget, in a dialog.
import { api } from "./api.js";
import { field, h, select } from "./dom.js";
import { modal } from "./ui.js";

const METRICS = [
  ["cost_usd", "Cost (USD)"], ["requests", "Requests"], ["tokens", "Tokens"], ["input_tokens", "Input tokens"],
  ["output_tokens", "Output tokens"], ["credits", "Credits"], ["concurrent", "Concurrent"],
];
const WINDOWS = ["minute", "hour", "day", "week", "month", "total", "rolling-24h", "rolling-7d", "rolling-30d"];
export const SINGULAR = { keys: "key", users: "user", teams: "team", orgs: "org", providers: "provider" };
const MEMBERSHIP = { keys: ["team", "user"], teams: ["org"] };

// Opens the form; resolves with the API's answer (null when cancelled).
export function scopeForm(kind, existing = null) {
  const what = SINGULAR[kind];
  const name = h("input", { name: "name", required: true, value: existing ? existing.name : "", disabled: Boolean(existing), autocomplete: "off", maxlength: "200" });
  const members = {};
  for (const member of MEMBERSHIP[kind] || []) {
    members[member] = h("input", { name: member, value: existing?.[member] || "", autocomplete: "off" });
  }
  const limits = rowsEditor("limit", ["Metric", "Window", "Max", "Only for models (glob)"], existing?.limits || [], limitRow, { metric: "cost_usd", window: "day", max: "" });
  const schedules = rowsEditor("schedule", ["Models (glob)", "Days", "Start", "End", "Timezone"], existing?.schedules || [], scheduleRow, { model: "*", days: "mon-fri", start: "09:00", end: "18:00", tz: "UTC" });
  const models = h("input", { name: "models", value: (existing?.models || []).join(", "), placeholder: "every model", autocomplete: "off" });
  const timezone = h("input", { name: "timezone", value: existing?.timezone || "", placeholder: "server default", list: "tz-list", autocomplete: "off" });
  const expires = h("input", { name: "expires_at", type: "datetime-local", value: toLocal(existing?.expires_at) });
  const short = select([["clamp", "Lower max_tokens to fit (clamp)"], ["reject", "Refuse the request (reject)"]], existing?.on_short_budget || "clamp", { name: "on_short_budget" });
  const logs = kind === "providers" ? null : select([["false", "No (the default)"], ["true", "Yes, redacted (see Security in the docs)"]], existing?.log_bodies ? "true" : "false", { name: "log_bodies" });
  const error = h("p", { class: "form-error", role: "alert", hidden: true });

  const form = h("form", { class: "form-grid", id: "scope-form", novalidate: true },
    field("Name", name, existing ? "Names cannot change." : null),
    ...Object.entries(members).map(([member, input]) => field(member[0].toUpperCase() + member.slice(1), input, `Optional: the ${member} this ${what} belongs to.`)),
    h("div", { class: "field full" }, h("span", { class: "label", id: "limits-label" }, "Limits"), limits.el),
    field("Allowed models", models, "Comma-separated globs, e.g. claude-*, gpt-5-mini. Empty: every model.", "full"),
    h("div", { class: "field full" }, h("span", { class: "label" }, "Schedules (when the matching models may be used)"), schedules.el),
    field("Timezone of calendar windows", timezone),
    kind === "keys" ? field("Expires", expires, "Optional.") : null,
    field("When the budget cannot pay max_tokens", short, null, "full"),
    logs ? field("Log prompts and answers", logs, `Every request that counts against this ${what} keeps its body and answer, redacted, for the retention period.`, "full") : null,
    error, timezoneList(), windowList());

  return modal(existing ? `Edit ${what} "${existing.name}"` : `New ${what}`, (close) => {
    const save = h("button", { type: "submit", class: "btn btn-primary", form: "scope-form" }, existing ? "Save changes" : `Create ${what}`);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const body = {
        limits: limits.values().filter((l) => l.max !== "").map(limitValue),
        models: models.value.split(",").map((m) => m.trim()).filter(Boolean),
        schedules: schedules.values(),
        on_short_budget: short.value,
      };
      if (logs && (existing || logs.value === "true")) body.log_bodies = logs.value === "true";
      if (!existing) body.name = name.value.trim();
      if (timezone.value.trim()) body.timezone = timezone.value.trim();
      for (const [member, input] of Object.entries(members)) {
        const value = input.value.trim();
        if (value) body[member] = value;
        else if (existing && existing[member]) body[member] = null;
      }
      if (kind === "keys") {
        if (expires.value) body.expires_at = new Date(expires.value).toISOString();
        else if (existing && existing.expires_at) body.expires_at = null;
      }
      save.disabled = true;
      try {
        const answer = existing
          ? await api("PATCH", `/admin/${kind}/${encodeURIComponent(existing.name)}`, body)
          : await api("POST", `/admin/${kind}`, body);
        close(answer);
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
        save.disabled = false;
      }
    });
    return {
      body: form,
      actions: [h("button", { type: "button", class: "btn", onclick: () => close(null) }, "Cancel"), save],
    };
  });
}

function limitValue(limit) {
  const out = { metric: limit.metric, window: limit.window, max: limit.metric === "cost_usd" ? limit.max : Number(limit.max) };
  if (limit.model) out.model = limit.model;
  return out;
}

function limitRow(value) {
  const metric = select(METRICS, value.metric, { "aria-label": "Metric" });
  const window = h("input", { value: value.window, list: "window-list", "aria-label": "Window", autocomplete: "off" });
  const max = h("input", { value: value.max === undefined ? "" : String(value.max), inputmode: "decimal", "aria-label": "Maximum", placeholder: "e.g. 5" });
  const model = h("input", { value: value.model || "", "aria-label": "Only for models", placeholder: "all models", autocomplete: "off" });
  return {
    controls: [metric, window, max, model],
    value: () => ({ metric: metric.value, window: window.value.trim(), max: max.value.trim(), model: model.value.trim() }),
  };
}

function scheduleRow(value) {
  const model = h("input", { value: value.model || "*", "aria-label": "Models" });
  const days = h("input", { value: value.days || "daily", "aria-label": "Days", placeholder: "mon-fri" });
  const start = h("input", { type: "time", value: value.start || "09:00", "aria-label": "Start" });
  const end = h("input", { type: "time", value: value.end || "18:00", "aria-label": "End" });
  const tz = h("input", { value: value.tz || "UTC", "aria-label": "Timezone", list: "tz-list" });
  return {
    controls: [model, days, start, end, tz],
    value: () => ({ model: model.value.trim() || "*", days: days.value.trim() || "daily", start: start.value, end: end.value, tz: tz.value.trim() || "UTC" }),
  };
}

// Rows of inputs with add / remove buttons.
export function rowsEditor(cls, headings, initial, makeRow, blank) {
  const rows = [];
  const list = h("div", { class: "editor-rows" });
  const head = h("div", { class: `editor-row ${cls} editor-head`, "aria-hidden": "true" }, headings.map((t) => h("span", {}, t)), h("span"));
  const add = (value) => {
    const row = makeRow(value);
    const remove = h("button", { type: "button", class: "btn btn-ghost btn-icon", "aria-label": "Remove row", title: "Remove" }, "✕");
    const el = h("div", { class: `editor-row ${cls}` }, row.controls, remove);
    const entry = { row, el };
    remove.addEventListener("click", () => { rows.splice(rows.indexOf(entry), 1); el.remove(); sync(); });
    rows.push(entry);
    list.append(el);
    sync();
  };
  const empty = h("p", { class: "muted small" }, "None.");
  const sync = () => { head.hidden = rows.length === 0; empty.hidden = rows.length > 0; };
  for (const value of initial) add(value);
  sync();
  const addButton = h("button", { type: "button", class: "btn btn-small" }, `+ Add ${cls}`);
  addButton.addEventListener("click", () => add({ ...blank }));
  return {
    el: h("div", { class: "editor-rows" }, head, empty, list, h("div", {}, addButton)),
    values: () => rows.map((r) => r.row.value()),
  };
}

function windowList() {
  return h("datalist", { id: "window-list" }, WINDOWS.map((w) => h("option", { value: w })));
}

export function timezoneList() {
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : ["UTC"];
  return h("datalist", { id: "tz-list" }, ["UTC", ...zones].map((z) => h("option", { value: z })));
}

function toLocal(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}
