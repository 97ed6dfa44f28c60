// The columns of a ledger entry, shared by the live feed, the request log and detail pages.
import { h } from "./dom.js";
import { int, ms, usd, when } from "./format.js";
import { outcomeBadge } from "./ui.js";

export const REQUEST_COLUMNS = [
  { label: "Time", cell: (e) => h("time", { datetime: e.created_at, title: e.created_at }, when(e.created_at)) },
  { label: "Key", cell: (e) => (e.key ? h("a", { href: `#/keys/${encodeURIComponent(e.key)}` }, e.key) : "—") },
  { label: "Team", cell: (e) => e.team || h("span", { class: "muted" }, "—") },
  { label: "Model", cell: (e) => h("span", { class: "mono" }, e.model || "—") },
  { label: "Provider", cell: (e) => e.provider || "—" },
  { label: "Status", cell: (e) => outcomeBadge(e) },
  { label: "Tokens in / out", cell: (e) => `${int(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens)} / ${int(e.output_tokens)}`, num: true },
  { label: "Cost", cell: (e) => usd(e.cost_usd), num: true },
  { label: "Latency", cell: (e) => ms(e.latency_ms), num: true },
  { label: "Note", cell: (e) => note(e), cls: "note small" },
];

function note(entry) {
  if (entry.refusal) return h("span", { title: entry.refusal.message }, entry.refusal.message);
  if (entry.error) return h("span", { class: "muted", title: entry.error }, entry.error);
  return h("span", { class: "muted" }, "—");
}
