// Live feed: requests and refusals as they happen (hook mode's prompts, refusals and model
// calls among them), and admin actions, without reloading.
import { get } from "./api.js";
import { scoped } from "./role.js";
import { auditDetail, auditVerb } from "./audit-words.js";
import { h, replace } from "./dom.js";
import { on } from "./events.js";
import { when } from "./format.js";
import { REQUEST_COLUMNS } from "./requests-table.js";
import { colgroup, panel, segmented, tableHead, tableRow } from "./ui.js";

const MAX_ROWS = 200;

export async function live(root, cleanup) {
  let paused = false;
  let onlyRefusals = false;
  const body = h("tbody", { id: "live-rows" });
  const audit = h("ul", { class: "audit-feed", id: "live-audit" });
  const empty = h("div", { class: "empty" }, "Waiting for requests… they appear here within a second.");
  const tableEl = h("div", { class: "table-wrap" }, h("table", { "aria-label": "Live requests", class: "fixed" },
    colgroup(REQUEST_COLUMNS), tableHead(REQUEST_COLUMNS), body));
  const controls = h("div", { class: "toolbar" },
    segmented([["all", "All"], ["refused", "Refusals only"]], "all", (v) => { onlyRefusals = v === "refused"; }, "Show"),
    segmented([["run", "Running"], ["pause", "Paused"]], "run", (v) => { paused = v === "pause"; }, "Feed"));
  replace(root,
    panel("Requests", [empty, tableEl], { actions: controls, flush: true }),
    panel("Admin actions", audit, { flush: false }));

  function add(entry, flash) {
    if (paused || (onlyRefusals && entry.outcome !== "refused")) return;
    empty.hidden = true;
    const row = tableRow(REQUEST_COLUMNS, entry, null);
    row.dataset.id = String(entry.id);
    if (flash) row.classList.add("flash");
    body.prepend(row);
    while (body.children.length > MAX_ROWS) body.lastElementChild.remove();
  }

  function addAudit(item) {
    audit.prepend(h("li", {},
      h("time", { datetime: item.created_at }, when(item.created_at)), " ",
      h("strong", {}, item.actor), ` ${auditVerb(item)} `, h("span", { class: "mono" }, item.target),
      auditDetail(item) ? h("span", { class: "muted" }, ` ${auditDetail(item)}`) : null));
    while (audit.children.length > 50) audit.lastElementChild.remove();
  }

  const recent = await get("/admin/requests?limit=25");
  for (const entry of recent.items.reverse()) add(entry, false);
  const log = scoped() ? { items: [] } : await get("/admin/audit?limit=10");
  for (const item of log.items.reverse()) addAudit(item);
  if (!log.items.length) audit.append(h("li", { class: "muted" }, "No admin actions yet."));
  cleanup(on("request", (entry) => add(entry, true)));
  cleanup(on("audit", addAudit));
}
