// The live feed (GET /admin/events, Server-Sent Events), shared by every page.
const listeners = { request: new Set(), audit: new Set() };
let source = null;

export function connect() {
  if (source) return;
  const status = document.getElementById("live-status");
  source = new EventSource("/admin/events");
  source.addEventListener("open", () => {
    status.textContent = "live";
    status.className = "live-status on";
  });
  source.addEventListener("error", () => {
    status.textContent = "reconnecting…";
    status.className = "live-status off";
  });
  for (const kind of Object.keys(listeners)) {
    source.addEventListener(kind, (event) => {
      const data = JSON.parse(event.data);
      for (const fn of listeners[kind]) fn(data);
    });
  }
}

export function disconnect() {
  if (source) source.close();
  source = null;
}

// Subscribe; returns the function that unsubscribes.
export function on(kind, fn) {
  listeners[kind].add(fn);
  return () => listeners[kind].delete(fn);
}
