// Time-series charts with the vendored uPlot (static/vendor, MIT licence).
import { h } from "./dom.js";
import { axisUsdLabels, int, usd } from "./format.js";

const COLORS = ["#4f46e5", "#0ea5e9", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#14b8a6", "#f97316", "#64748b"];

// `data` is an answer of GET /admin/timeseries; `metric` is "cost_usd" or "requests".
export function timeChart(data, metric, { height = 260 } = {}) {
  const holder = h("div", { class: "chart", role: "img", "aria-label": chartLabel(data, metric) });
  const series = data.series || [];
  if (!series.length) {
    holder.append(h("div", { class: "empty" }, "No requests in this range."));
    return holder;
  }
  const xs = data.buckets;
  const columns = [xs, ...series.map((s) => (metric === "cost_usd" ? s.cost_usd.map(Number) : s.requests))];
  const single = series.length === 1;
  const options = {
    width: 600,
    height,
    cursor: { points: { size: 6 } },
    legend: { live: true },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    axes: [
      { stroke: "#667085", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e4e7ec" } },
      {
        stroke: "#667085", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e4e7ec" },
        size: (u, values) => 22 + 7 * Math.max(3, ...(values || []).map((v) => String(v).length)),
        values: (u, ticks) => (metric === "cost_usd" ? axisUsdLabels(ticks) : ticks.map((v) => int(v))),
      },
    ],
    series: [
      { label: "Time" },
      ...series.map((s, i) => ({
        label: s.name === null ? "(none)" : s.name,
        stroke: COLORS[i % COLORS.length],
        width: 2,
        fill: single ? "rgba(79, 70, 229, 0.08)" : undefined,
        points: { show: xs.length < 40 },
        value: (u, v, si, idx) => {
          if (idx === null || idx === undefined) return "—";
          return metric === "cost_usd" ? usd(s.cost_usd[idx]) : int(s.requests[idx]);
        },
      })),
    ],
  };
  requestAnimationFrame(() => {
    if (!window.uPlot) return;
    options.width = Math.max(320, holder.clientWidth || 600);
    const plot = new window.uPlot(options, columns, holder);
    const observer = new ResizeObserver(() => {
      const width = Math.max(320, holder.clientWidth);
      if (Math.abs(width - plot.width) > 4) plot.setSize({ width, height });
    });
    observer.observe(holder);
  });
  return holder;
}

function chartLabel(data, metric) {
  const what = metric === "cost_usd" ? "Spend" : "Requests";
  const names = (data.series || []).map((s) => s.name ?? "(none)").join(", ");
  return `${what} per ${data.step} from ${data.from} to ${data.to}${names ? `: ${names}` : ""}`;
}
