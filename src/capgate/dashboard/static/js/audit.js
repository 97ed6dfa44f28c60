// The audit log: who changed what, when, with the fields that changed.
import { get } from "./api.js";
import { h, replace } from "./dom.js";
import { dateTime } from "./format.js";
import { on } from "./events.js";
import { clip, panel, table } from "./ui.js";

export async function audit(root, cleanup) {
  const body = h("div");
  replace(root, panel("Audit log", body, { flush: true }));
  async function load() {
    const data = await get("/admin/audit?limit=200");
    replace(body, table([
      { label: "When", width: "120px", cell: (a) => dateTime(a.created_at) },
      { label: "Who", width: "96px", cell: (a) => clip(a.actor) },
      { label: "Action", width: "104px", cell: (a) => h("strong", {}, a.action) },
      { label: "Target", width: "30%", cell: (a) => clip(a.target, { class: "clip mono" }) },
      { label: "Changes", cell: (a) => changes(a), cls: "wrap" },
    ], data.items, { empty: "No admin changes yet." }));
  }
  await load();
  cleanup(on("audit", load));
}

const SKIP = new Set(["updated_at", "usage"]);

function changes(item) {
  if (!item.before || !item.after) return h("span", { class: "muted small" }, item.before ? "deleted" : "created");
  const lines = [];
  for (const name of new Set([...Object.keys(item.before), ...Object.keys(item.after)])) {
    if (SKIP.has(name)) continue;
    const was = JSON.stringify(item.before[name]);
    const now = JSON.stringify(item.after[name]);
    if (was !== now) lines.push(h("div", {}, `${name}: `, h("del", {}, short(was)), " → ", h("ins", {}, short(now))));
  }
  return lines.length ? h("div", { class: "diff" }, lines) : h("span", { class: "muted small" }, "no field changed");
}

function short(text) {
  return text && text.length > 120 ? text.slice(0, 117) + "…" : text;
}
