// Admins (owners only): named admins, their roles and teams; make, disable, remove.
import { api, get } from "./api.js";
import { h, replace } from "./dom.js";
import { dateTime } from "./format.js";
import { badge, confirmAction, modal, panel, table, toast } from "./ui.js";

const ROLES = ["owner", "admin", "viewer", "team-admin"];

export async function admins(root) {
  const listEl = h("div");
  const create = h("button", { type: "button", class: "btn btn-primary", id: "create-admin" }, "New admin");
  create.addEventListener("click", async () => {
    if (await adminForm()) await load();
  });
  replace(root, panel("Admins", [
    h("p", { class: "muted intro" }, "Named admins sign in with their name and password. Owners manage admins; admins manage everything else; viewers read; team admins manage only their teams' keys. The admin key stays the owner's break-glass credential."),
    listEl,
  ], { actions: create }));

  async function load() {
    const data = await get("/admin/admins");
    replace(listEl, table([
      { label: "Name", cell: (a) => h("strong", {}, a.name) },
      { label: "Role", width: "120px", cell: (a) => a.role },
      { label: "Teams", cell: (a) => a.teams.join(", ") || "—" },
      { label: "Status", width: "100px", cell: (a) => badge(a.status, a.status === "active" ? "active" : "paused") },
      { label: "Created", width: "140px", cell: (a) => dateTime(a.created_at) },
      { label: "", width: "200px", cell: (a) => actions(a, load) },
    ], data.items, { empty: "No named admins yet: only the admin key.", rowAttrs: (a) => ({ "data-name": a.name }) }));
  }
  await load();
}

function actions(admin, reload) {
  const path = `/admin/admins/${encodeURIComponent(admin.name)}`;
  const toggle = h("button", { type: "button", class: "btn btn-small", "data-action": "toggle" }, admin.status === "active" ? "Disable" : "Enable");
  toggle.addEventListener("click", async () => {
    await api("PATCH", path, { status: admin.status === "active" ? "disabled" : "active" });
    await reload();
  });
  const remove = h("button", { type: "button", class: "btn btn-small btn-danger", "data-action": "remove" }, "Remove");
  remove.addEventListener("click", async () => {
    if (!await confirmAction("Remove admin", `Remove ${admin.name}, their tokens and sessions?`, "Remove", { danger: true })) return;
    await api("DELETE", path);
    toast(`Removed ${admin.name}.`);
    await reload();
  });
  return h("div", { class: "row-actions" }, toggle, " ", remove);
}

function adminForm() {
  return modal("New admin", (close) => {
    const name = h("input", { id: "admin-name", required: true, autocomplete: "off" });
    const role = h("select", { id: "admin-role" }, ROLES.map((r) => h("option", { value: r }, r)));
    const teams = h("input", { id: "admin-teams", placeholder: "team-admin only: comma-separated", autocomplete: "off" });
    const password = h("input", { id: "admin-password", type: "password", autocomplete: "new-password", minlength: "12" });
    const error = h("p", { class: "form-error", role: "alert", hidden: true });
    async function submit(event) {
      event.preventDefault();
      const body = {
        name: name.value.trim(), role: role.value,
        teams: teams.value.split(",").map((t) => t.trim()).filter(Boolean),
      };
      if (password.value) body.password = password.value;
      try {
        await api("POST", "/admin/admins", body);
        toast(`Created admin "${body.name}".`);
        close(true);
      } catch (e) {
        error.hidden = false;
        error.textContent = e.message;
      }
    }
    const form = h("form", { class: "form", novalidate: true, onsubmit: submit },
      h("label", { for: "admin-name" }, "Name"), name,
      h("label", { for: "admin-role" }, "Role"), role,
      h("label", { for: "admin-teams" }, "Teams"), teams,
      h("label", { for: "admin-password" }, "Password (12 characters or more)"), password,
      error);
    return {
      body: form,
      actions: [
        h("button", { type: "button", class: "btn", onclick: () => close(false) }, "Cancel"),
        h("button", { type: "button", class: "btn btn-primary", id: "admin-create", onclick: submit }, "Create"),
      ],
    };
  });
}
