// Formatting for people. Money stays exact: the API sends decimal strings, and these
// functions only regroup their digits (never through floating point).

export function usd(value) {
  if (value === null || value === undefined || value === "") return "—";
  let text = String(value);
  const negative = text.startsWith("-");
  if (negative) text = text.slice(1);
  let [whole, frac = ""] = text.split(".");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  whole = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${negative ? "-" : ""}$${whole}.${frac}`;
}

// Compare two decimal strings exactly: -1, 0 or 1.
export function compareDecimal(a, b) {
  const [ai, af = ""] = String(a).split(".");
  const [bi, bf = ""] = String(b).split(".");
  const width = Math.max(af.length, bf.length);
  const x = BigInt(ai + af.padEnd(width, "0"));
  const y = BigInt(bi + bf.padEnd(width, "0"));
  return x < y ? -1 : x > y ? 1 : 0;
}

// used / max as a fraction for a bar (display only).
export function fraction(used, max) {
  const m = Number(max);
  if (!(m > 0)) return Number(used) > 0 ? 1 : 0;
  return Math.min(1, Number(used) / m);
}

const intFormat = new Intl.NumberFormat("en-US");
export function int(value) {
  if (value === null || value === undefined) return "—";
  return intFormat.format(value);
}

export function compact(value) {
  if (value === null || value === undefined) return "—";
  if (Math.abs(value) < 10000) return intFormat.format(value);
  return new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 }).format(value);
}

export function ms(value) {
  if (value === null || value === undefined) return "—";
  if (value >= 10000) return `${(value / 1000).toFixed(1)} s`;
  if (value >= 100) return `${Math.round(value)} ms`;
  return `${Number(value).toFixed(1)} ms`;
}

export function percent(value, digits = 1) {
  if (value === null || value === undefined) return "—";
  return `${(value * 100).toFixed(digits)}%`;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
});

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  const today = new Date();
  if (date.toDateString() === today.toDateString()) return timeFormat.format(date);
  return dateTimeFormat.format(date);
}

// "3 min ago", "5 h ago", then the date: when a key was last used.
export function ago(iso) {
  if (!iso) return "—";
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return dateTimeFormat.format(new Date(iso));
}

// Chart-axis labels for dollar amounts: the fewest decimals (at least two below $10, as
// money is written) at which every tick prints differently and as itself, so $0.0042 and
// $0.0043 never both read "$0.00".
export function axisUsdLabels(ticks) {
  const finite = ticks.filter((v) => Number.isFinite(v));
  const largest = Math.max(0, ...finite.map(Math.abs));
  for (let digits = largest >= 10 ? 0 : 2; digits <= 9; digits++) {
    const texts = finite.map((v) => v.toFixed(digits));
    const exact = finite.every((v, i) => Math.abs(Number(texts[i]) - v) <= Math.abs(v) * 1e-9 + 1e-12);
    if (exact && new Set(texts).size === texts.length) return ticks.map((v) => axisUsd(v, digits));
  }
  return ticks.map((v) => axisUsd(v, 9));
}

function axisUsd(value, digits) {
  if (!Number.isFinite(value)) return "";
  if (value === 0) return "$0";
  const [whole, frac] = Math.abs(value).toFixed(digits).split(".");
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${value < 0 ? "-" : ""}$${grouped}${frac ? "." + frac : ""}`;
}

// A time as the API gives it, Unix seconds (the hook routes) or ISO 8601 text: ISO text.
export function isoTime(value) {
  if (value === null || value === undefined || value === "") return null;
  return typeof value === "number" ? new Date(value * 1000).toISOString() : value;
}

export function dateTime(iso) {
  if (!iso) return "—";
  return dateTimeFormat.format(new Date(iso));
}

const NEVER = 2 ** 61;
export function resetsIn(unixSeconds) {
  if (unixSeconds === null || unixSeconds === undefined || unixSeconds >= NEVER) return "never resets";
  const seconds = Math.max(0, unixSeconds - Date.now() / 1000);
  if (seconds < 60) return `resets in ${Math.ceil(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `resets in ${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `resets in ${hours} h ${minutes % 60} min`;
  return `resets in ${Math.floor(hours / 24)} days`;
}

const WINDOWS = { minute: "per minute", hour: "per hour", day: "daily", week: "weekly", month: "monthly", total: "in total" };
const METRICS = {
  cost_usd: "Cost", requests: "Requests", tokens: "Tokens", input_tokens: "Input tokens",
  output_tokens: "Output tokens", credits: "Credits", concurrent: "Concurrent",
};
export function limitName(limit) {
  const window = WINDOWS[limit.window] || limit.window.replace("rolling-", "last ");
  const model = limit.model ? ` · ${limit.model}` : "";
  return `${METRICS[limit.metric] || limit.metric} ${window}${model}`;
}

export function amount(metric, value) {
  return metric === "cost_usd" ? usd(value) : int(Number(value));
}
