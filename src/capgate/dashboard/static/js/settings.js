// Settings: price overrides, credit weights and the default timezone, changed at runtime.
import { api, get } from "./api.js";
import { field, h, replace } from "./dom.js";
import { rowsEditor, timezoneList } from "./scope-form.js";
import { badge, panel, toast } from "./ui.js";

export async function settings(root) {
  async function render() {
    const current = await get("/admin/settings");
    const source = (name) => (current.sources[name] === "dashboard"
      ? badge("changed here", "warn")
      : badge("from the config file", "idle"));

    async function save(changes, button) {
      button.disabled = true;
      try {
        await api("PATCH", "/admin/settings", changes);
        toast("Settings saved. Every server process applies them within a second.");
        await render();
      } catch (error) {
        toast(error.message, "error");
        button.disabled = false;
      }
    }
    const revert = (name) => {
      if (current.sources[name] !== "dashboard") return null;
      const button = h("button", { type: "button", class: "btn btn-ghost" }, "Use the config file's");
      button.addEventListener("click", () => save({ [name]: null }, button));
      return button;
    };

    const tz = h("input", { id: "setting-timezone", value: current.timezone, list: "tz-list", autocomplete: "off" });
    const tzSave = h("button", { type: "submit", class: "btn btn-primary" }, "Save");
    const tzForm = h("form", { class: "grid" },
      h("div", { class: "row setting-row" }, field("Default timezone", tz), tzSave, revert("timezone")),
      h("p", { class: "muted small" }, "For new keys, users, teams and orgs created without one, and for “today” and “this month” on the overview."),
      timezoneList());
    tzForm.addEventListener("submit", (event) => { event.preventDefault(); save({ timezone: tz.value.trim() }, tzSave); });

    const weights = rowsEditor("weight", ["Model glob", "Credits per request"], Object.entries(current.credit_weights).map(([glob, weight]) => ({ glob, weight })), weightRow, { glob: "", weight: 1 });
    const weightSave = h("button", { type: "button", class: "btn btn-primary" }, "Save credit weights");
    weightSave.addEventListener("click", () => {
      const map = {};
      for (const { glob, weight } of weights.values()) if (glob) map[glob] = Number(weight);
      save({ credit_weights: map }, weightSave);
    });

    const prices = rowsEditor("price", ["Model or glob", "Input", "Output", "Cache write", "Cache read"], Object.entries(current.pricing).map(([model, p]) => ({ model, ...p })), priceRow, { model: "", input: "", output: "" });
    const priceSave = h("button", { type: "button", class: "btn btn-primary" }, "Save prices");
    priceSave.addEventListener("click", () => {
      const map = {};
      for (const p of prices.values()) {
        if (!p.model) continue;
        const entry = { input: p.input, output: p.output };
        if (p.cache_write) entry.cache_write = p.cache_write;
        if (p.cache_read) entry.cache_read = p.cache_read;
        map[p.model] = entry;
      }
      save({ pricing: map }, priceSave);
    });

    replace(root,
      h("div", { class: "callout info" }, "Changes here are stored in the database and take effect at once, in every server process sharing it; they override the config file until you switch back. Each change is in the audit log."),
      panel("Default timezone", tzForm, { actions: source("timezone") }),
      panel("Credit weights", [
        h("p", { class: "muted small" }, "A credits limit counts this many credits per request of a model; the first matching glob wins, any other model counts 1."),
        weights.el, h("div", { class: "row" }, weightSave, revert("credit_weights")),
      ], { actions: source("credit_weights") }),
      panel("Price overrides", [
        h("p", { class: "muted small" }, `USD per million tokens, at most 6 decimals. These win over the bundled price table (version ${current.pricing_version}). A model with no price at all is refused.`),
        prices.el, h("div", { class: "row" }, priceSave, revert("pricing")),
      ], { actions: source("pricing") }));
  }
  await render();
}

function weightRow(value) {
  const glob = h("input", { value: value.glob, "aria-label": "Model glob", placeholder: "*opus*" });
  const weight = h("input", { type: "number", min: "0", step: "1", value: String(value.weight), "aria-label": "Credits per request" });
  return { controls: [glob, weight], value: () => ({ glob: glob.value.trim(), weight: weight.value }) };
}

function priceRow(value) {
  const make = (key, label) => h("input", { value: value[key] || "", "aria-label": label, inputmode: "decimal" });
  const model = h("input", { value: value.model, "aria-label": "Model or glob", placeholder: "my-local-model" });
  const input = make("input", "Input price"), output = make("output", "Output price");
  const write = make("cache_write", "Cache write price"), read = make("cache_read", "Cache read price");
  return {
    controls: [model, input, output, write, read],
    value: () => ({ model: model.value.trim(), input: input.value.trim(), output: output.value.trim(), cache_write: write.value.trim(), cache_read: read.value.trim() }),
  };
}
