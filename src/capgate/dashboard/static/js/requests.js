// Request log: filters (a request id among them: the x-capgate-request-id its client got),
// paging, and a CSV export of exactly what is filtered.
import { get, query } from "./api.js";
import { field, h, replace, select } from "./dom.js";
import { REQUEST_COLUMNS } from "./requests-table.js";
import { errorBox, panel, table } from "./ui.js";

const TEXT_FILTERS = [["request_id", "Request id"], ["key", "Key"], ["team", "Team"], ["user", "User"], ["model", "Model"], ["provider", "Provider"]];
const OUTCOMES = [["", "Any outcome"], ["ok", "ok"], ["refused", "refused"], ["error", "error"], ["cancelled", "cancelled"], ["lease_expired", "lease expired"]];
const PAGE = 50;

export async function requests(root, cleanup, params) {
  const filters = Object.fromEntries(params.entries());
  const inputs = {};
  for (const [name, label] of TEXT_FILTERS) {
    inputs[name] = h("input", { type: "search", name, value: filters[name] || "", placeholder: name === "request_id" ? "x-capgate-request-id" : "any", autocomplete: "off" });
    inputs[name].dataset.label = label;
  }
  inputs.outcome = select(OUTCOMES, filters.outcome || "", { name: "outcome" });
  inputs.status = h("input", { type: "number", name: "status", value: filters.status || "", placeholder: "e.g. 402", min: "0", max: "999" });
  inputs.from = h("input", { type: "datetime-local", name: "from", value: toLocal(filters.from) });
  inputs.to = h("input", { type: "datetime-local", name: "to", value: toLocal(filters.to) });

  const form = h("form", { class: "filters", "aria-label": "Filter requests" },
    TEXT_FILTERS.map(([name, label]) => field(label, inputs[name])),
    field("Outcome", inputs.outcome), field("HTTP status", inputs.status),
    field("From", inputs.from), field("To", inputs.to),
    h("div", { class: "row" },
      h("button", { type: "submit", class: "btn btn-primary" }, "Apply"),
      h("a", { class: "btn btn-ghost", href: "#/requests" }, "Clear")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = {};
    for (const [name, input] of Object.entries(inputs)) {
      let value = input.value.trim();
      if ((name === "from" || name === "to") && value) value = new Date(value).toISOString();
      if (value) next[name] = value;
    }
    location.hash = "#/requests" + query(next);
  });

  const active = {};
  for (const name of [...TEXT_FILTERS.map(([n]) => n), "outcome", "status", "from", "to"]) {
    if (filters[name]) active[name] = filters[name];
  }
  const exportLink = h("a", {
    class: "btn", id: "export-csv", download: "capgate-requests.csv",
    href: "/admin/requests" + query({ ...active, format: "csv", limit: "all" }),
  }, "Export CSV");
  const results = h("div");
  const cursors = [null];
  replace(root,
    panel("Filters", form),
    panel("Requests", results, { actions: h("div", { class: "toolbar" }, h("span", { class: "muted small" }, "The export holds every request these filters select."), exportLink), flush: true }));

  async function load(index) {
    try {
      const page = await get("/admin/requests" + query({ ...active, limit: PAGE, cursor: cursors[index] }));
      if (page.next_cursor) cursors[index + 1] = page.next_cursor;
      const prev = h("button", { type: "button", class: "btn btn-small", disabled: index === 0, onclick: () => load(index - 1) }, "← Newer");
      const next = h("button", { type: "button", class: "btn btn-small", disabled: !page.next_cursor, onclick: () => load(index + 1) }, "Older →");
      replace(results,
        table(REQUEST_COLUMNS, page.items, { empty: "No requests match these filters." }),
        h("div", { class: "pager" }, h("span", { class: "muted small" }, `Page ${index + 1} · ${page.items.length} requests`), h("div", { class: "row" }, prev, next)));
    } catch (error) {
      replace(results, errorBox(error));
    }
  }
  await load(0);
}

function toLocal(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 16);
}
