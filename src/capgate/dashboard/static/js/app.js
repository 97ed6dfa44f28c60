// The dashboard's entry point: login, the shell, and a hash router over the pages.
import { ApiError, api, get, setSession, whenLoggedOut } from "./api.js";
import { alerts } from "./alerts.js";
import { audit } from "./audit.js";
import { h, replace } from "./dom.js";
import { connect, disconnect } from "./events.js";
import { hooks } from "./hooks.js";
import { live } from "./live.js";
import { overview } from "./overview.js";
import { requestDetail } from "./requests-table.js";
import { requests } from "./requests.js";
import { scopeDetail } from "./scope-detail.js";
import { scopes } from "./scopes.js";
import { settings } from "./settings.js";
import { upstreams } from "./upstreams.js";
import { errorBox } from "./ui.js";

const KINDS = ["keys", "users", "teams", "orgs", "providers"];
const TITLES = {
  overview: "Overview", live: "Live feed", requests: "Request log", keys: "Keys", users: "Users",
  teams: "Teams", orgs: "Orgs", providers: "Provider budgets", hooks: "Hook machines", settings: "Settings", upstreams: "Upstreams",
  audit: "Audit log", alerts: "Alerts",
};

const loginView = document.getElementById("login");
const shell = document.getElementById("shell");
let cleanups = [];
let renderId = 0;

function showLogin(message) {
  disconnect();
  shell.hidden = true;
  loginView.hidden = false;
  const error = document.getElementById("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  document.getElementById("login-password").focus();
}

function startSession(session) {
  setSession(session);
  document.getElementById("whoami").textContent = session.actor;
  loginView.hidden = true;
  shell.hidden = false;
  connect();
  route();
}

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("login-password");
  const button = event.target.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const session = await api("POST", "/dashboard/login", { password: input.value });
    input.value = "";
    startSession(session);
  } catch (error) {
    showLogin(error instanceof ApiError ? error.message : "Cannot reach the server.");
  } finally {
    button.disabled = false;
  }
});

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api("POST", "/dashboard/logout");
  } finally {
    showLogin("Signed out.");
  }
});

whenLoggedOut(() => showLogin("Your session has ended. Sign in again."));

async function route() {
  if (shell.hidden) return;
  for (const fn of cleanups) fn();
  cleanups = [];
  const id = ++renderId;
  const [path, search = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const page = parts[0] || "overview";
  const params = new URLSearchParams(search);
  const root = document.getElementById("page");
  let title = KINDS.includes(page) && parts[1] ? parts[1] : TITLES[page] || "Not found";
  if (page === "requests" && parts[1]) title = "Request";
  document.getElementById("page-title").textContent = title;
  document.title = `${title} · capgate`;
  for (const link of document.querySelectorAll(".nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  replace(root, h("div", { class: "empty" }, "Loading…"));
  const cleanup = (fn) => { if (id === renderId) cleanups.push(fn); else fn(); };
  try {
    if (page === "overview") await overview(root, cleanup);
    else if (page === "live") await live(root, cleanup);
    else if (page === "requests" && parts[1]) await requestDetail(root, cleanup, parts[1]);
    else if (page === "requests") await requests(root, cleanup, params);
    else if (page === "hooks") await hooks(root, cleanup);
    else if (page === "settings") await settings(root, cleanup);
    else if (page === "upstreams") await upstreams(root, cleanup);
    else if (page === "audit") await audit(root, cleanup);
    else if (page === "alerts") await alerts(root, cleanup);
    else if (KINDS.includes(page) && parts[1]) await scopeDetail(root, cleanup, params, page, parts[1]);
    else if (KINDS.includes(page)) await scopes(root, cleanup, params, page);
    else replace(root, h("div", { class: "empty" }, "No such page."));
  } catch (error) {
    if (id === renderId && !(error instanceof ApiError && error.status === 401)) replace(root, errorBox(error));
  }
}

window.addEventListener("hashchange", route);

get("/dashboard/session").then(
  (session) => (session.authenticated ? startSession(session) : showLogin("")),
  () => showLogin("Cannot reach the server."),
);
