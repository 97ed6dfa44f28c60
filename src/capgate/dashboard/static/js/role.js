// The signed-in admin's role, and the pages it shows. The server enforces every rule
// (src/capgate/http/roles.py); this only hides what would be refused.

const PAGES = {
  owner: null, // every page
  admin: ["overview", "live", "requests", "keys", "users", "teams", "orgs", "providers", "hooks", "settings", "upstreams", "audit", "alerts"],
  viewer: ["overview", "live", "requests", "keys", "users", "teams", "orgs", "providers", "settings", "upstreams", "audit"],
  "team-admin": ["overview", "live", "requests", "keys", "users", "teams"],
};

let current = "owner";

export function setRole(role) {
  current = role || "owner";
  document.body.dataset.role = current;
}

export const role = () => current;

export const scoped = () => current === "team-admin";

export function canSee(page) {
  const pages = PAGES[current];
  return pages === null || pages === undefined ? current === "owner" : pages.includes(page);
}
