// Hook machines: the people (users) whose Claude Code / Codex are gated by capgate's hook,
// their limits, their machines, and the kill switch; install codes below (hook-codes.js).
import { api, get } from "./api.js";
import { h, replace } from "./dom.js";
import { on } from "./events.js";
import { ago, dateTime, isoTime } from "./format.js";
import { codesPanel } from "./hook-codes.js";
import { statusActions } from "./scopes.js";
import { badge, clip, confirmAction, modal, panel, table, toast, usageBars } from "./ui.js";

const AGENTS = { claude: "Claude Code", codex: "Codex" };

export async function hooks(root, cleanup) {
  const peopleEl = h("div", { class: "grid", id: "hook-people" });
  const codesEl = h("div", { id: "hook-codes" });
  replace(root,
    h("p", { class: "muted intro" },
      "People whose Claude Code or Codex asks capgate before every prompt (hook mode). A person is a user: ",
      "their limits count every machine of theirs, and every gateway key that names them."),
    peopleEl, codesEl);

  async function load() {
    const [machines, codes, users] = await Promise.all([
      get("/admin/hook/machines"), get("/admin/hook/codes"), get("/admin/users"),
    ]);
    const machineList = items(machines);
    const codeList = items(codes);
    replace(peopleEl, people(users.items, machineList, codeList, load));
    replace(codesEl, codesPanel(codeList, users.items, load));
  }
  await load();
  // Enrolments, kills, revocations (by anyone, in any process) arrive as audit events.
  let pending = null;
  cleanup(on("audit", () => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; load(); }, 300);
  }));
  cleanup(() => clearTimeout(pending));
}

// The admin API answers hook lists as arrays (or {items}: both are read).
function items(answer) {
  return Array.isArray(answer) ? answer : answer.items || [];
}

function people(users, machines, codes, reload) {
  const byUser = new Map();
  for (const machine of machines) {
    if (!byUser.has(machine.user)) byUser.set(machine.user, []);
    byUser.get(machine.user).push(machine);
  }
  // A person shows once they have a machine, or an install code waiting to be used.
  for (const code of codes) if (code.state === "open" && !byUser.has(code.user)) byUser.set(code.user, []);
  const known = new Map(users.map((u) => [u.name, u]));
  const names = [...byUser.keys()].sort((a, b) => a.localeCompare(b));
  if (!names.length) {
    return panel("People", h("div", { class: "empty" },
      "No machine is enrolled yet. Create an install code below and run its command on the developer's machine."));
  }
  return names.map((name) => person(known.get(name) || { name, status: "active", usage: [], metadata: {} }, byUser.get(name), reload));
}

// A user's page: their hook machines, when they have any.
export async function userMachines(name, reload) {
  const machines = items(await get("/admin/hook/machines")).filter((m) => m.user === name);
  if (!machines.length) return null;
  return panel("Hook machines", machinesTable(machines, reload), {
    flush: true, actions: h("a", { href: "#/hooks", class: "btn btn-small" }, "All hook machines"),
  });
}

function person(user, machines, reload) {
  const name = user.name;
  const actions = h("div", { class: "row actions" });
  if (user.status !== "revoked") {
    actions.append(h("button", {
      type: "button", class: "btn btn-small btn-danger", "data-action": "kill",
      onclick: () => kill(name, reload),
    }, "Kill"));
  }
  if (user.status === "active") actions.append(statusButton(name, "pause", reload));
  else if (user.status === "paused") actions.append(statusButton(name, "resume", reload));
  const loggedOut = user.metadata && user.metadata.hook_logout;
  const title = h("span", { class: "row person-title" },
    h("a", { href: `#/users/${encodeURIComponent(name)}`, class: "strong", title: name }, name),
    badge(user.status),
    loggedOut ? badge("logout on kill", "bad") : null,
    h("span", { class: "muted small" }, `${machines.length} ${machines.length === 1 ? "machine" : "machines"}`));
  const section = panel(title, h("div", { class: "grid person-body" },
    h("div", { class: "person-usage" }, usageBars(user.usage)),
    machinesTable(machines, reload)), { actions });
  section.dataset.person = name;
  return section;
}

function machinesTable(machines, reload) {
  return table([
    {
      label: "Machine", width: "24%",
      cell: (m) => [
        h("a", { href: `#/keys/${encodeURIComponent(m.name)}`, class: "clip strong", title: m.name }, m.name),
        h("div", { class: "row name-meta" }, badge(m.status)),
      ],
    },
    { label: "Host / OS user", cell: (m) => [clip(m.hostname, { class: "clip mono" }), h("div", { class: "muted small" }, clip(`${m.os_user || "—"} · ${m.os || "—"}`))] },
    { label: "Agents", width: "96px", cell: (m) => h("div", { class: "small" }, (m.agents || []).map((a) => h("div", {}, AGENTS[a] || a))) },
    { label: "Hook", width: "64px", cell: (m) => clip(m.hook_version, { class: "clip mono small" }) },
    { label: "Last seen", width: "92px", cell: (m) => lastSeen(m) },
    { label: "State", width: "112px", cell: (m) => state(m) },
    { label: "Actions", width: "84px", cell: (m) => statusActions("keys", m, reload, { stacked: true }) },
  ], machines, {
    empty: "No machine yet: the install code has not been used.",
    rowAttrs: (m) => ({ "data-machine": m.name }),
    label: "Machines",
  });
}

function lastSeen(machine) {
  const seen = isoTime(machine.last_seen);
  return h("span", { title: seen || "never seen" }, seen ? ago(seen) : "never");
}

function state(machine) {
  const tampered = isoTime(machine.tampered_at);
  if (tampered) {
    const files = (machine.tamper_files || []).join(", ");
    return [h("span", { title: files ? `restored: ${files}` : "restored" }, badge("tampered")), h("div", { class: "muted small", title: tampered }, `restored ${dateTime(tampered)}`)];
  }
  const installed = isoTime(machine.installed_at);
  return [badge("installed"), h("div", { class: "muted small", title: installed || "" }, dateTime(installed))];
}

// The kill switch: pause the person now (next prompt and next tool call refused on every
// machine of theirs) and, if asked, log their Claude Code out.
async function kill(name, reload) {
  const choice = await modal(`Kill "${name}"?`, (close) => {
    const logout = h("input", { type: "checkbox", id: "kill-logout", name: "logout" });
    return {
      body: [
        h("p", {}, `Every machine of ${name} refuses the next prompt, and running sessions stop at their next tool call, until you resume the person.`),
        h("label", { class: "inline-field", for: "kill-logout" }, logout,
          "Also log Claude Code out on their machines (claude auth logout)"),
      ],
      actions: [
        h("button", { type: "button", class: "btn", onclick: () => close(null) }, "Cancel"),
        h("button", {
          type: "button", class: "btn btn-danger solid", "data-confirm": "yes",
          onclick: () => close({ logout: logout.checked }),
        }, "Kill"),
      ],
    };
  });
  if (!choice) return;
  try {
    await api("POST", `/admin/users/${encodeURIComponent(name)}/kill`, choice);
    toast(`Killed "${name}"${choice.logout ? ": their Claude Code will be logged out" : ""}.`);
    await reload();
  } catch (error) {
    toast(error.message, "error");
  }
}

const STATUS_TEXT = {
  pause: ["Pause", "Every machine of {name} refuses the next prompt, and running sessions stop at their next tool call, until you resume the person. Their gateway keys are refused too."],
  resume: ["Resume", "{name}'s prompts are admitted again, within their limits (and a logout mark from a kill is cleared)."],
};

function statusButton(name, action, reload) {
  const [label, text] = STATUS_TEXT[action];
  return h("button", {
    type: "button", class: "btn btn-small", "data-action": action,
    onclick: async () => {
      if (!(await confirmAction(`${label} "${name}"?`, text.replace("{name}", name), label))) return;
      try {
        await api("POST", `/admin/users/${encodeURIComponent(name)}/${action}`);
        toast(`User "${name}": ${action}d.`);
        await reload();
      } catch (error) {
        toast(error.message, "error");
      }
    },
  }, label);
}
