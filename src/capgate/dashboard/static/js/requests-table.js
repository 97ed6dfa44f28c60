// The columns of a ledger entry, shared by the live feed, the request log and detail pages,
// and the page of one entry (`#/requests/<request id>`).
import { ApiError, get } from "./api.js";
import { h, replace } from "./dom.js";
import { dateTime, int, ms, usd, when } from "./format.js";
import { badge, clip, outcomeBadge, panel } from "./ui.js";

// Fixed widths for the short columns; key, model and the note share the rest, cut with an
// ellipsis when narrow, so the table never grows past its card (1024 px windows included).
export const REQUEST_COLUMNS = [
  { label: "Time", width: "104px", cell: (e) => h("a", { href: entryHref(e), title: `${e.created_at} · request ${e.request_id}`, class: "entry-link" }, h("time", { datetime: e.created_at }, when(e.created_at))) },
  { label: "Key / team", cell: (e) => [e.key ? keyLink(e.key) : clip(null), h("div", { class: "muted small" }, clip(e.team))] },
  { label: "Model / provider", cell: (e) => [clip(e.model, { class: "clip mono" }), h("div", { class: "muted small" }, clip(e.provider))] },
  { label: "Status", width: "22%", cell: (e) => [outcomeBadge(e), note(e)] },
  { label: "Tokens in / out", width: "112px", cell: (e) => `${int(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens)} / ${int(e.output_tokens)}`, num: true },
  { label: "Cost", width: "100px", cell: (e) => usd(e.cost_usd), num: true },
  { label: "Latency", width: "72px", cell: (e) => (isHook(e) ? "—" : ms(e.latency_ms)), num: true },
];

// Hook mode's entries (prompts and reported model calls) did not pass through capgate:
// they have no latency of capgate's.
function isHook(entry) {
  return String(entry.endpoint).startsWith("hook/");
}

function entryHref(entry) {
  return `#/requests/${encodeURIComponent(entry.request_id)}`;
}

function keyLink(name) {
  return h("a", { href: `#/keys/${encodeURIComponent(name)}`, class: "clip", title: name }, name);
}

function note(entry) {
  let text = null;
  let cls = "muted small";
  if (entry.refusal) { text = entry.refusal.message; cls = "small"; }
  else if (entry.error) text = entry.error;
  else if (entry.max_tokens_clamped !== null && entry.max_tokens_clamped !== undefined) text = `max_tokens lowered to ${int(entry.max_tokens_clamped)}`;
  if (entry.cache === "hit") text = [`cache hit · saved ${usd(entry.saved_usd)}`, text].filter(Boolean).join(" · ");
  if (entry.flags && entry.flags.length) text = [entry.flags.join(", "), text].filter(Boolean).join(" · ");
  return text ? h("div", { class: cls }, clip(text)) : null;
}

// One ledger entry in full: found by the request id its client got in x-capgate-request-id.
export async function requestDetail(root, cleanup, requestId) {
  const entry = await get(`/admin/requests/${encodeURIComponent(requestId)}`);
  const rows = [
    ["Request id", h("span", { class: "mono" }, entry.request_id)],
    ["Time", h("time", { datetime: entry.created_at }, `${dateTime(entry.created_at)} (${entry.created_at})`)],
    ["Key", entry.key ? keyLink(entry.key) : "—"],
    ["Team / user", `${entry.team || "—"} / ${entry.user || "—"}`],
    ["Model", h("span", { class: "mono" }, entry.model || "—")],
    ["Provider", `${entry.provider || "—"} · ${entry.upstream_model || "—"}`],
    ["Endpoint", h("span", { class: "mono" }, `${entry.endpoint}${entry.stream ? " (stream)" : ""}`)],
    ["Outcome", outcomeBadge(entry)],
    ["max_tokens", entry.max_tokens_clamped === null ? "as sent (not lowered)" : h("span", { "data-field": "max_tokens_clamped" }, `lowered to ${int(entry.max_tokens_clamped)} to fit the budget`)],
    ["Flags", entry.flags.length ? h("div", { class: "chips", "data-field": "flags" }, entry.flags.map((f) => badge(f, "warn"))) : "none"],
    ["Tokens", `${int(entry.input_tokens)} in · ${int(entry.output_tokens)} out · ${int(entry.cache_read_tokens)} cache read · ${int(entry.cache_write_tokens)} cache write`],
    ["Cost", usd(entry.cost_usd)],
    ["Latency", `${ms(entry.latency_ms)} · first token ${ms(entry.ttft_ms)} · ${entry.attempts} ${entry.attempts === 1 ? "attempt" : "attempts"}`],
  ];
  if (entry.cache) rows.push(["Response cache", h("span", { "data-field": "cache" }, entry.cache === "hit" ? `hit: answered from the cache, nothing forwarded · saved ${usd(entry.saved_usd)}` : "miss: forwarded, its answer kept")]);
  if (entry.session) rows.push(["Session id", h("span", { class: "mono", "data-field": "session" }, entry.session)]);
  if (entry.prompt) rows.push(["Prompt id", h("span", { class: "mono", "data-field": "prompt" }, entry.prompt)]);
  if (entry.rule) rows.push(["Routing rule", h("span", { class: "mono", "data-field": "rule" }, entry.rule)]);
  if (entry.refusal) rows.push(["Refusal", `${entry.refusal.code}: ${entry.refusal.message}`]);
  if (entry.error) rows.push(["Error", entry.error]);
  const bodies = h("div", { "data-field": "body-log" }, h("p", { class: "muted small" }, "Loading…"));
  replace(root, panel(`Request ${entry.request_id}`,
    h("dl", { class: "kv" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    { actions: h("a", { class: "btn btn-small", href: "#/requests" }, "← Request log") }),
    panel("Prompt and answer", bodies));
  await showBody(bodies, entry.request_id);
}

// The logged body and answer (redacted), when the request's scopes log bodies and this
// session may read them; otherwise why not.
async function showBody(el, requestId) {
  let body;
  try {
    body = await get(`/admin/requests/${encodeURIComponent(requestId)}/body`);
  } catch (error) {
    const why = error instanceof ApiError && error.status === 403
      ? "Not shown: this login may not read logged prompts and answers."
      : `Not shown: ${error.message}`;
    replace(el, h("p", { class: "muted", "data-state": "not-shown" }, why));
    return;
  }
  if (!body.logged) {
    replace(el, h("p", { class: "muted", "data-state": "not-logged" }, "Not logged: none of this request's scopes (key, user, team, org) had log_bodies on, or it is older than the retention."));
    return;
  }
  const sizes = `${int(body.request_bytes)} bytes sent · ${int(body.answer_bytes)} bytes answered${body.truncated ? " · cut at the size cap" : ""} · redacted`;
  replace(el,
    h("p", { class: "muted small" }, sizes),
    h("h3", {}, "Request"), h("pre", { class: "body-log", "data-field": "request-body" }, pretty(body.request)),
    h("h3", {}, "Answer"), h("pre", { class: "body-log", "data-field": "answer-body" }, body.answer === null ? "(no answer was sent)" : pretty(body.answer)));
}

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text; // cut at the cap, or a stream's assembled text
  }
}
