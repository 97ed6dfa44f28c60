// Alerts: the webhooks that receive them and the delivery log (read-only; the admin API
// and `capgate alerts` change them).
import { get } from "./api.js";
import { h, replace } from "./dom.js";
import { dateTime } from "./format.js";
import { on } from "./events.js";
import { badge, clip, panel, table } from "./ui.js";

const STATUS = { delivered: "ok", pending: "warn", failed: "bad" };

export async function alerts(root, cleanup) {
  const hooks = h("div");
  const log = h("div");
  replace(root, panel("Webhooks", hooks, { flush: true }), panel("Deliveries", log, { flush: true }));
  async function load() {
    const [webhooks, deliveries] = await Promise.all([
      get("/admin/alerts/webhooks"), get("/admin/alerts/deliveries?limit=200"),
    ]);
    replace(hooks, table([
      { label: "Name", width: "18%", cell: (w) => h("strong", {}, clip(w.name)) },
      { label: "URL", width: "34%", cell: (w) => clip(w.url, { class: "clip mono" }) },
      { label: "Format", width: "80px", cell: (w) => w.format },
      { label: "Scope", width: "16%", cell: (w) => clip(w.scope || "all") },
      { label: "Report", width: "80px", cell: (w) => w.report || "—" },
      { label: "Events", cell: (w) => clip(w.events.join(", ")), cls: "wrap" },
    ], webhooks.items, { empty: "No webhooks: alerts are not sent anywhere." }));
    replace(log, table([
      { label: "When", width: "120px", cell: (d) => dateTime(d.created_at) },
      { label: "Webhook", width: "14%", cell: (d) => clip(d.webhook) },
      { label: "Alert", cell: (d) => clip(d.body && d.body.text ? d.body.text : d.alert) },
      { label: "Status", width: "96px", cell: (d) => badge(d.status, STATUS[d.status]) },
      { label: "Tries", width: "56px", num: true, cell: (d) => String(d.attempts) },
      { label: "Last answer", width: "18%", cell: (d) => clip(d.last_error || (d.last_status ? `HTTP ${d.last_status}` : "—")) },
    ], deliveries.items, { empty: "No alert has been sent yet." }));
  }
  await load();
  cleanup(on("audit", load));
}
