// Rotate a key from its page: a new secret for the same key, shown once; the old one
// keeps working for the grace chosen here (docs/security.md#key-rotation).
import { api } from "./api.js";
import { field, h, select } from "./dom.js";
import { dateTime } from "./format.js";
import { copyButton, modal, toast } from "./ui.js";

const GRACES = [["0", "None: refuse the old secret now"], ["3600", "1 hour"], ["86400", "1 day"], ["604800", "7 days"]];

export function rotateButton(scope, after) {
  if (scope.status === "revoked" || (scope.prefix || "").startsWith("cgh-")) return null;
  const button = h("button", { type: "button", class: "btn", "data-action": "rotate" }, "Rotate");
  button.addEventListener("click", async () => {
    const grace = await askGrace(scope.name);
    if (grace === null) return;
    try {
      const rotated = await api("POST", `/admin/keys/${encodeURIComponent(scope.name)}/rotate`, { grace_s: grace });
      await showRotatedKey(rotated, grace);
      toast(`Key "${scope.name}" rotated.`);
      await after();
    } catch (error) {
      toast(error.message, "error");
    }
  });
  return button;
}

function askGrace(name) {
  return modal(`Rotate key "${name}"?`, (close) => {
    const grace = select(GRACES, "0", { name: "grace" });
    return {
      body: [
        h("p", {}, "The key gets a new secret, shown once. Its name, limits, usage and request log stay. The old secret keeps working for the grace you choose, then is refused with a message that says the key was rotated."),
        field("Old secret keeps working", grace),
      ],
      actions: [
        h("button", { type: "button", class: "btn", onclick: () => close(null) }, "Cancel"),
        h("button", { type: "button", class: "btn btn-primary", "data-confirm": "yes", onclick: () => close(Number(grace.value)) }, "Rotate"),
      ],
    };
  });
}

function showRotatedKey(rotated, grace) {
  return modal(`Key "${rotated.name}" rotated`, (close) => {
    const input = h("input", { id: "rotated-key", readonly: true, value: rotated.key, "aria-label": "The new key" });
    input.addEventListener("focus", () => input.select());
    const old = grace > 0 ? `The old secret works until ${dateTime(rotated.old_valid_until)}.` : "The old secret is refused from now on.";
    return {
      body: [
        h("div", { class: "callout" }, "Copy the new key now. It is shown only once: capgate keeps only its hash."),
        h("div", { class: "secret" }, input, copyButton(() => rotated.key)),
        h("p", { class: "muted small" }, old),
      ],
      actions: [h("button", { type: "button", class: "btn btn-primary", onclick: () => close(true) }, "Done")],
    };
  });
}
