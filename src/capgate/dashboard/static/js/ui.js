// Shared pieces: panels, badges, usage bars, toasts, modal dialogs, tables.
import { h, uid } from "./dom.js";
import { amount, fraction, limitName, resetsIn } from "./format.js";

export function panel(title, body, { actions = null, flush = false, label = null } = {}) {
  const headingId = uid("panel");
  return h("section", { class: "panel", "aria-labelledby": headingId },
    h("div", { class: "panel-head" }, h("h2", { id: headingId }, title), actions),
    h("div", { class: "panel-body" + (flush ? " flush" : ""), "aria-label": label }, body));
}

export function stat(label, value, sub) {
  return h("div", { class: "panel stat" },
    h("div", { class: "stat-label" }, label),
    h("div", { class: "stat-value" }, value),
    sub ? h("div", { class: "stat-sub" }, sub) : null);
}

export function badge(text, kind = text) {
  return h("span", { class: `badge badge-${kind}` }, text);
}

// Hook mode's ledger entries: a prompt the gate admitted or refused, and a model call reported.
const HOOK_ENTRIES = { "hook/prompt": "prompt", "hook/call": "model call" };

export function outcomeBadge(entry) {
  const hook = HOOK_ENTRIES[entry.endpoint];
  if (hook) return entry.outcome === "ok" ? badge(hook, hook === "prompt" ? "prompt" : "call") : badge(`${hook} ${entry.outcome}`, entry.outcome);
  const text = entry.outcome === "ok" ? String(entry.status) : `${entry.outcome} ${entry.status || ""}`.trim();
  return badge(text, entry.outcome);
}

export function usageBars(usage, { compact = false } = {}) {
  if (!usage || usage.length === 0) return h("span", { class: "muted" }, "no limits");
  return h("div", { class: "usage" }, usage.map((row) => usageRow(row, compact)));
}

export function usageRow(row, compact = false) {
  const share = fraction(row.used, row.max);
  const level = share >= 0.9 ? "bad" : share >= 0.7 ? "warn" : "";
  const label = limitName(row);
  const shown = `${amount(row.metric, row.used)} / ${amount(row.metric, row.max)}`;
  return h("div", { class: "usage-row" },
    h("div", { class: "usage-label" }, h("span", { class: "what" }, label), h("span", { class: "num" }, shown)),
    h("div", {
      class: `bar ${level}`, role: "progressbar", "aria-label": `${label}: ${shown}`,
      "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(Math.round(share * 100)),
    }, barFill(share)),
    compact ? null : h("div", { class: "usage-reset" }, resetsIn(row.resets_at)));
}

function barFill(share) {
  const fill = h("span");
  fill.style.width = `${Math.max(share * 100, share > 0 ? 2 : 0)}%`;
  return fill;
}

export function toast(message, kind = "info") {
  const el = h("div", { class: `toast ${kind === "error" ? "error" : ""}`, role: kind === "error" ? "alert" : "status" }, message);
  document.getElementById("toasts").append(el);
  setTimeout(() => el.remove(), kind === "error" ? 7000 : 3500);
}

// A modal dialog. `build(close)` returns { body, actions }; resolves with what close() gets.
export function modal(title, build) {
  return new Promise((resolve) => {
    const titleId = uid("dialog");
    const dialog = h("dialog", { "aria-labelledby": titleId });
    const close = (value) => {
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    const { body, actions } = build(close);
    dialog.append(
      h("div", { class: "dialog-head" }, h("h2", { id: titleId }, title)),
      h("div", { class: "dialog-body" }, body),
      h("div", { class: "dialog-foot" }, actions));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      close(null);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

export function confirmAction(title, message, confirmLabel, { danger = false } = {}) {
  return modal(title, (close) => ({
    body: h("p", {}, message),
    actions: [
      h("button", { type: "button", class: "btn", onclick: () => close(false) }, "Cancel"),
      h("button", {
        type: "button", class: danger ? "btn btn-danger solid" : "btn btn-primary",
        onclick: () => close(true), "data-confirm": "yes",
      }, confirmLabel),
    ],
  }));
}

export function copyButton(getText, label = "Copy") {
  const button = h("button", { type: "button", class: "btn" }, label);
  button.addEventListener("click", async () => {
    const text = getText();
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const area = h("textarea", { class: "visually-hidden" });
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}

// A table from column specs: { label, cell(row) -> node|text, num?, cls?, width?, head? }.
// With a `width` on any column the table lays out fixed: it takes its card's width and
// never more, the columns without a width share what is left, and long text is cut
// with an ellipsis inside its cell (the whole text in its title) rather than pushing the
// table past the card.
export function table(columns, rows, { empty = "Nothing here yet.", caption = null, rowAttrs = null, label = null } = {}) {
  if (!rows.length) return h("div", { class: "empty" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", { class: fixedLayout(columns) ? "fixed" : null, "aria-label": label },
      caption ? h("caption", { class: "visually-hidden" }, caption) : null,
      colgroup(columns),
      tableHead(columns),
      h("tbody", {}, rows.map((row) => tableRow(columns, row, rowAttrs)))));
}

function fixedLayout(columns) {
  return columns.some((c) => c.width);
}

export function colgroup(columns) {
  if (!fixedLayout(columns)) return null;
  return h("colgroup", {}, columns.map((c) => {
    const col = h("col");
    if (c.width) col.style.width = c.width;
    return col;
  }));
}

export function tableHead(columns) {
  return h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : "", "aria-sort": c.ariaSort || null }, c.head || c.label))));
}

export function tableRow(columns, row, rowAttrs = null) {
  return h("tr", rowAttrs ? rowAttrs(row) : {},
    columns.map((c) => h("td", { class: (c.num ? "num " : "") + (c.cls || "") }, c.cell(row))));
}

// Text cut with an ellipsis when its cell is too narrow; the whole of it on hover.
export function clip(text, attrs = {}) {
  const value = text === null || text === undefined || text === "" ? "—" : String(text);
  return h("span", { class: "clip", title: value, ...attrs }, value);
}

export function segmented(options, value, onChange, label) {
  const group = h("div", { class: "segmented", role: "group", "aria-label": label });
  for (const [val, text] of options) {
    const button = h("button", { type: "button", "aria-pressed": String(val === value) }, text);
    button.addEventListener("click", () => {
      for (const other of group.children) other.setAttribute("aria-pressed", "false");
      button.setAttribute("aria-pressed", "true");
      onChange(val);
    });
    group.append(button);
  }
  return group;
}

export function errorBox(error) {
  return h("div", { class: "panel" }, h("div", { class: "empty", role: "alert" }, `Could not load: ${error.message}`));
}
