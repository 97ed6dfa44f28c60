// Routing rules (docs/routing.md): the ordered list in force, the config file's or one set
// at runtime, edited whole as YAML or JSON. The server checks it as it checks the config
// file (an error names the rule and the field, and nothing changes); every server process
// follows a change within a second.
import { api } from "./api.js";
import { field, h } from "./dom.js";
import { dateTime, isoTime } from "./format.js";
import { badge, confirmAction, panel, toast } from "./ui.js";

const RULES = "/admin/routing/rules";

function origin(shown) {
  const parts = shown.source === "runtime"
    ? [badge("runtime", "ok"), ` set by ${shown.changed_by} at ${dateTime(isoTime(shown.changed_at))}`]
    : [badge("config file", "idle"), " the config file's rules"];
  return h("p", { id: "rules-origin" }, ...parts, ` · ${shown.rules.length} rule${shown.rules.length === 1 ? "" : "s"}`,
    shown.problem ? h("span", { class: "form-error" }, ` · ${shown.problem}`) : null);
}

export function rulesPanel(shown, reload) {
  const written = JSON.stringify(shown.rules, null, 2);
  const text = h("textarea", {
    id: "rules-text", name: "rules", class: "mono", spellcheck: "false",
    rows: String(Math.min(24, Math.max(8, written.split("\n").length + 1))),
  }, written);
  // An alert only while it has something to say (the page is checked for none).
  const error = h("p", { class: "form-error", id: "rules-error", hidden: true });
  const save = h("button", { type: "button", class: "btn btn-primary", id: "save-rules" }, "Save rules");
  save.addEventListener("click", async () => {
    error.hidden = true;
    error.removeAttribute("role");
    save.disabled = true;
    try {
      await api("PUT", RULES, text.value, "application/yaml");
      toast("Saved the routing rules.");
      await reload();
    } catch (failure) {
      error.textContent = failure.message;
      error.setAttribute("role", "alert");
      error.hidden = false;
      save.disabled = false;
    }
  });
  const reset = h("button", { type: "button", class: "btn", id: "reset-rules", hidden: shown.source !== "runtime" },
    "Back to the config file's");
  reset.addEventListener("click", async () => {
    if (!(await confirmAction("Back to the config file's rules?", "The rules set here are removed; every process follows within a second.", "Reset"))) return;
    try {
      await api("DELETE", RULES);
      toast("The config file's rules are in force.");
      await reload();
    } catch (failure) {
      toast(failure.message, "error");
    }
  });
  return panel("Routing rules", [
    h("p", { class: "muted intro" },
      "Tried in order; the first rule whose conditions all hold decides. Saving replaces the whole list."),
    origin(shown),
    h("div", { class: "field" },
      field("Rules (YAML or JSON)", text, "A list of {name, when, then}, or a mapping with rules: as in the config file."),
      error),
    h("div", { class: "row" }, save, reset),
  ]);
}
