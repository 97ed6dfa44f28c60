// Install codes: one-time codes that enrol a developer's machine in hook mode. A new code
// and its two install commands are shown once (capgate keeps only the code's hash).
import { api } from "./api.js";
import { field, h, select } from "./dom.js";
import { dateTime, isoTime } from "./format.js";
import { badge, clip, confirmAction, copyButton, modal, panel, table, toast } from "./ui.js";

const TTLS = [["3600", "1 hour"], ["86400", "24 hours"], ["259200", "3 days"], ["604800", "7 days"]];

export function codesPanel(codes, users, reload) {
  const create = h("button", { type: "button", class: "btn btn-primary", id: "create-code" }, "New install code");
  create.addEventListener("click", async () => {
    const created = await codeForm(users);
    if (!created) return;
    await showCode(created);
    await reload();
  });
  const sorted = [...codes].sort((a, b) => String(isoTime(b.created_at)).localeCompare(String(isoTime(a.created_at))));
  return panel("Install codes", [
    h("p", { class: "muted intro" },
      "A code enrols one machine, once, before it expires. Create a user for the person first (with the limits that apply to all of their machines)."),
    table([
      { label: "Code", width: "96px", cell: (c) => clip(c.id, { class: "clip mono" }) },
      { label: "Person", cell: (c) => clip(c.user) },
      { label: "Created", width: "112px", cell: (c) => when(c.created_at) },
      { label: "Expires", width: "112px", cell: (c) => when(c.expires_at) },
      { label: "State", width: "80px", cell: (c) => badge(c.state) },
      { label: "Machine", cell: (c) => (c.machine ? clip(c.machine, { class: "clip mono" }) : h("span", { class: "muted" }, c.used_at ? "—" : "not used")) },
      { label: "Actions", width: "84px", cell: (c) => deleteButton(c, reload) },
    ], sorted, {
      empty: "No install codes yet.",
      rowAttrs: (c) => ({ "data-code": c.id, "data-user": c.user }),
      label: "Install codes",
    }),
  ], { actions: create });
}

function when(value) {
  const iso = isoTime(value);
  return h("span", { title: iso || "" }, dateTime(iso));
}

function deleteButton(code, reload) {
  return h("button", {
    type: "button", class: "btn btn-small btn-danger", "data-action": "delete-code",
    onclick: async () => {
      const what = code.state === "open" ? "It can no longer be used." : "A machine it enrolled stays enrolled.";
      if (!(await confirmAction(`Delete install code ${code.id}?`, what, "Delete", { danger: true }))) return;
      try {
        await api("DELETE", `/admin/hook/codes/${encodeURIComponent(code.id)}`);
        toast(`Deleted install code ${code.id}.`);
        await reload();
      } catch (error) {
        toast(error.message, "error");
      }
    },
  }, "Delete");
}

// The form: whose machine, how long the code lives, which agents to gate.
function codeForm(users) {
  const active = users.filter((u) => u.status !== "revoked").map((u) => u.name);
  const user = select([["", "Choose a person"], ...active.map((n) => [n, n])], "", { name: "user", required: true });
  const ttl = select(TTLS, "86400", { name: "ttl_s" });
  const claude = h("input", { type: "checkbox", name: "claude", id: "code-claude", checked: true });
  const codex = h("input", { type: "checkbox", name: "codex", id: "code-codex", checked: true });
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const form = h("form", { class: "form-grid", id: "code-form", novalidate: true },
    field("Person", user, active.length ? "The user whose limits the machine counts against." : "No user yet: create one under Users first."),
    field("Valid for", ttl, "Unused codes expire."),
    h("fieldset", { class: "field full checks" }, h("legend", { class: "label" }, "Agents to gate"),
      h("label", { class: "inline-field", for: "code-claude" }, claude, "Claude Code"),
      h("label", { class: "inline-field", for: "code-codex" }, codex, "Codex")),
    error);
  return modal("New install code", (close) => {
    const save = h("button", { type: "submit", class: "btn btn-primary", form: "code-form" }, "Create code");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const agents = [claude.checked ? "claude" : null, codex.checked ? "codex" : null].filter(Boolean);
      const problem = !user.value ? "Choose the person this machine belongs to." : !agents.length ? "Choose at least one agent." : null;
      if (problem) {
        error.textContent = problem;
        error.hidden = false;
        return;
      }
      save.disabled = true;
      try {
        close(await api("POST", "/admin/hook/codes", { user: user.value, ttl_s: Number(ttl.value), agents }));
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
        save.disabled = false;
      }
    });
    return { body: form, actions: [h("button", { type: "button", class: "btn", onclick: () => close(null) }, "Cancel"), save] };
  });
}

function showCode(created) {
  return modal(`Install code for "${created.user}"`, (close) => {
    const input = h("input", { id: "new-code", readonly: true, value: created.code, "aria-label": "The install code" });
    input.addEventListener("focus", () => input.select());
    const install = created.install || {};
    return {
      body: [
        h("div", { class: "callout" },
          `Copy it now: it is shown only once, works once, and expires ${dateTime(isoTime(created.expires_at))}. Run one of the commands below as root on the developer's machine.`),
        h("div", { class: "secret" }, input, copyButton(() => created.code)),
        command("Where capgate is installed", "install-capgate", install.capgate),
        command("Anywhere else (needs only python3 and curl)", "install-curl", install.curl),
        h("p", { class: "muted small" }, "Running Claude Code and Codex sessions pick up the hook when they are restarted."),
      ],
      actions: [h("button", { type: "button", class: "btn btn-primary", onclick: () => close(true) }, "Done")],
    };
  });
}

function command(title, id, text) {
  if (!text) return null;
  return h("div", { class: "field" },
    h("div", { class: "row" }, h("span", { class: "label", id: `${id}-label` }, title), h("span", { class: "spacer" }), copyButton(() => text, "Copy command")),
    h("pre", { class: "snippet", id, "aria-labelledby": `${id}-label` }, text));
}
