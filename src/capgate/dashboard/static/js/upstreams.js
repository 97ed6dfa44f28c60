// Upstreams: the providers requests go to and the routes to them. The config file's are
// shown read-only; runtime ones can be added, edited and removed. An API key field is
// write-only: the server keeps the key encrypted and shows only its fingerprint. The
// routing rules in force are edited here too (rules.js).
import { api, get } from "./api.js";
import { field, h, replace, select } from "./dom.js";
import { rulesPanel } from "./rules.js";
import { badge, clip, confirmAction, modal, panel, table, toast } from "./ui.js";

const TYPES = ["anthropic", "openai", "openai-compatible", "mock"];
const PROVIDERS = "/admin/routing/providers";
const ROUTES = "/admin/routing/routes";
const RULES = "/admin/routing/rules";

export async function upstreams(root) {
  async function render() {
    const [providers, routes, rules] = await Promise.all([get(PROVIDERS), get(ROUTES), get(RULES)]);
    replace(root,
      providersPanel(providers.items, render),
      routesPanel(routes.items, providers.items, render),
      rulesPanel(rules, render));
  }
  await render();
}

function source(item) {
  if (item.problem) return h("span", { title: item.problem }, badge("not used", "error"));
  return item.source === "config" ? badge("config file", "idle") : badge("runtime", "ok");
}

function providersPanel(items, reload) {
  const add = h("button", { type: "button", class: "btn btn-primary", id: "add-provider" }, "Add provider");
  add.addEventListener("click", async () => {
    if (await providerForm(null)) await reload();
  });
  return panel("Providers", [
    h("p", { class: "muted intro" },
      "Where requests go. The config file's are read-only here; changes reach every server process within a second."),
    table([
      { label: "Name", cell: (p) => clip(p.name, { class: "clip mono" }) },
      { label: "Type", width: "136px", cell: (p) => p.type },
      { label: "Base URL", cell: (p) => clip(p.base_url || "default", { class: "clip mono" }) },
      { label: "API key", width: "150px", cell: (p) => (p.api_key_fingerprint ? h("span", { class: "mono" }, p.api_key_fingerprint) : h("span", { class: "muted" }, "none")) },
      { label: "Source", width: "112px", cell: source },
      { label: "Actions", width: "150px", cell: (p) => (p.source === "runtime" ? providerActions(p, reload) : null) },
    ], items, { empty: "No providers.", rowAttrs: (p) => ({ "data-provider": p.name }), label: "Providers" }),
  ], { actions: add });
}

function providerActions(provider, reload) {
  return h("div", { class: "row" },
    h("button", {
      type: "button", class: "btn btn-small", "data-action": "edit-provider",
      onclick: async () => { if (await providerForm(provider)) await reload(); },
    }, "Edit"),
    removeButton(`provider ${provider.name}`, `${PROVIDERS}/${encodeURIComponent(provider.name)}`, reload, "remove-provider"));
}

function removeButton(what, path, reload, action) {
  return h("button", {
    type: "button", class: "btn btn-small btn-danger", "data-action": action,
    onclick: async () => {
      if (!(await confirmAction(`Remove ${what}?`, "Requests stop going to it within a second.", "Remove", { danger: true }))) return;
      try {
        await api("DELETE", path);
        toast(`Removed ${what}.`);
        await reload();
      } catch (error) {
        toast(error.message, "error");
      }
    },
  }, "Remove");
}

// Add (provider null) or edit a runtime provider. The key field starts empty: left empty
// on an edit, the stored key stays.
function providerForm(provider) {
  const editing = provider !== null;
  const name = h("input", { name: "name", value: editing ? provider.name : "", required: true, disabled: editing, autocomplete: "off" });
  const type = select(TYPES.map((t) => [t, t]), editing ? provider.type : "openai-compatible", { name: "type", disabled: editing });
  const baseUrl = h("input", { name: "base_url", value: editing ? provider.base_url || "" : "", placeholder: "https://host/v1", autocomplete: "off" });
  const key = h("input", { name: "api_key", type: "password", autocomplete: "new-password", placeholder: editing && provider.api_key_fingerprint ? `unchanged (${provider.api_key_fingerprint})` : "" });
  const timeout = h("input", { name: "timeout_s", type: "number", min: "1", value: editing ? provider.timeout_s : 600 });
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const form = h("form", { class: "form-grid", id: "provider-form", novalidate: true },
    field("Name", name), field("Type", type),
    field("Base URL", baseUrl, "http(s)://host[:port][/path]; OpenAI types end in /v1.", "full"),
    field("API key", key, editing ? "Leave empty to keep the stored key." : "Stored encrypted; never shown again.", "full"),
    field("Timeout (s)", timeout, "For a whole attempt, the answer included."),
    error);
  return modal(editing ? `Edit provider ${provider.name}` : "Add provider", (close) => {
    const save = h("button", { type: "submit", class: "btn btn-primary", form: "provider-form" }, editing ? "Save" : "Add provider");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const body = { base_url: baseUrl.value.trim() || null, timeout_s: Number(timeout.value) };
      if (key.value) body.api_key = key.value;
      save.disabled = true;
      try {
        if (editing) await api("PATCH", `${PROVIDERS}/${encodeURIComponent(provider.name)}`, body);
        else await api("POST", PROVIDERS, { name: name.value.trim(), type: type.value, ...body });
        key.value = "";
        toast(editing ? `Saved provider ${provider.name}.` : `Added provider ${name.value.trim()}.`);
        close(true);
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
        save.disabled = false;
      }
    });
    return { body: form, actions: [h("button", { type: "button", class: "btn", onclick: () => close(null) }, "Cancel"), save] };
  });
}

function targets(route) {
  return [...route.targets, ...route.fallbacks]
    .map((t) => (t.model ? `${t.provider}:${t.model}` : t.provider)).join(", ");
}

function routesPanel(items, providers, reload) {
  const add = h("button", { type: "button", class: "btn btn-primary", id: "add-route" }, "Add route");
  add.addEventListener("click", async () => {
    if (await routeForm(providers)) await reload();
  });
  return panel("Routes", [
    h("p", { class: "muted intro" }, "Matched in this order: the config file's first, then the runtime ones as they were added."),
    table([
      { label: "Match", cell: (r) => clip(r.match, { class: "clip mono" }) },
      { label: "Targets, then fallbacks", cell: (r) => clip(targets(r), { class: "clip mono" }) },
      { label: "Source", width: "112px", cell: source },
      { label: "Actions", width: "96px", cell: (r) => (r.source === "runtime" ? removeButton(`route ${r.match}`, `${ROUTES}/${encodeURIComponent(r.match)}`, reload, "remove-route") : null) },
    ], items, { empty: "No routes: every model goes to the first provider of its format.", rowAttrs: (r) => ({ "data-route": r.match }), label: "Routes" }),
  ], { actions: add });
}

function routeForm(providers) {
  const match = h("input", { name: "match", required: true, placeholder: "llama-*", autocomplete: "off" });
  const provider = select(providers.filter((p) => !p.problem).map((p) => [p.name, p.name]), "", { name: "provider" });
  const model = h("input", { name: "model", placeholder: "the asked model", autocomplete: "off" });
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const form = h("form", { class: "form-grid", id: "route-form", novalidate: true },
    field("Model name or glob", match), field("Provider", provider),
    field("Upstream model", model, "Empty: the asked name is passed through.", "full"), error);
  return modal("Add route", (close) => {
    const save = h("button", { type: "submit", class: "btn btn-primary", form: "route-form" }, "Add route");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const target = { provider: provider.value };
      if (model.value.trim()) target.model = model.value.trim();
      save.disabled = true;
      try {
        await api("POST", ROUTES, { match: match.value.trim(), targets: [target] });
        toast(`Added route ${match.value.trim()}.`);
        close(true);
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
        save.disabled = false;
      }
    });
    return { body: form, actions: [h("button", { type: "button", class: "btn", onclick: () => close(null) }, "Cancel"), save] };
  });
}
