// The admin API, called with the session cookie; changes carry the session's CSRF token.

let csrf = { header: "x-csrf-token", token: "" };
let onLoggedOut = () => {};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function setSession(session) {
  csrf = { header: session.csrf_header, token: session.csrf_token };
}

export function whenLoggedOut(fn) {
  onLoggedOut = fn;
}

// `type`: the body's media type; JSON is encoded here, any other is sent as the text given.
export async function api(method, path, body, type = "application/json") {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers[csrf.header] = csrf.token;
  if (body !== undefined) headers["content-type"] = type;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined || type !== "application/json" ? body : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.error ? data.error.message : `HTTP ${response.status}`;
    if (response.status === 401 && !path.startsWith("/dashboard/login")) onLoggedOut();
    throw new ApiError(response.status, message);
  }
  return data;
}

export const get = (path) => api("GET", path);

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
