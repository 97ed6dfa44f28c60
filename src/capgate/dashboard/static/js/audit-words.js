// Admin actions in words for the live feed: "admin killed user:alice and logs their Claude
// Code out", "hook enrolled the machine key:alice@laptop"; unknown actions read as they are.

const VERBS = {
  "hook-enrol": "enrolled the machine",
  "hook-tamper": "found the hook's files changed, restored them, on",
  kill: "killed",
  "hook-kill": "killed",
  "hook-code": "created an install code for",
  "hook-code-create": "created an install code for",
  "hook-code-delete": "deleted an install code of",
  create: "created", update: "changed", delete: "deleted", pause: "paused", resume: "resumed",
  revoke: "revoked", "reset-usage": "reset the usage of", settings: "changed the",
  rotate: "rotated the secret of",
};

// The kill switch is one `kill` entry; servers before it wrote an update of the person
// (metadata.hook_logout set, then a pause), which still reads as a kill here.
function killMark(item) {
  if (item.action !== "update" || !String(item.target).startsWith("user:")) return null;
  const was = item.before?.metadata?.hook_logout;
  const now = item.after?.metadata?.hook_logout;
  if (was === now) return null;
  return now === undefined ? "cleared" : "set";
}

export function auditVerb(item) {
  const mark = killMark(item);
  if (mark === "set") return "killed";
  if (mark === "cleared") return "cleared the kill's logout mark of";
  return VERBS[item.action] || item.action;
}

// What the words above leave out: whose machine, which files, whether a kill logs out.
export function auditDetail(item) {
  const after = item.after || {};
  if (item.action === "hook-enrol") {
    const hook = after.metadata?.hook || after;
    const parts = [after.user ? `for ${after.user}` : null, hook.hostname ? `host ${hook.hostname}` : null, hook.os_user ? `OS user ${hook.os_user}` : null];
    return parts.filter(Boolean).join(", ");
  }
  if (item.action === "hook-tamper") {
    const files = after.files || after.tamper_files || [];
    return files.length ? files.join(", ") : "";
  }
  if (item.action === "update" && item.before && (item.before.log_bodies ?? false) !== (after.log_bodies ?? false)) {
    return after.log_bodies ? "and turned prompt logging on" : "and turned prompt logging off";
  }
  if (auditVerb(item) === "killed") {
    const logout = after.metadata?.hook_logout ?? after.logout;
    return logout ? "and logs their Claude Code out" : "";
  }
  return "";
}
