// The admin API, as this page uses it. The token lives in this tab's sessionStorage only
// (gone when the tab closes), travels in the Authorization header only (never in a URL), and
// is forgotten on sign-out or when the server stops accepting it.

const KEY = "coinpay.adminToken";

export const token = () => sessionStorage.getItem(KEY);
export const remember = (t) => sessionStorage.setItem(KEY, t);
export const forget = () => sessionStorage.removeItem(KEY);

/** An answer other than 2xx: the API's `{"error": {"code", "message", "field"?, ...}}`. */
export class ApiError extends Error {
  constructor(status, body, text) {
    const e = (body && body.error) || {};
    super(e.message || (status === 0 ? text : `HTTP ${status}${text ? `: ${text.slice(0, 200)}` : ""}`));
    this.status = status;
    this.code = e.code || (status === 0 ? "network" : "http");
    this.field = e.field || null;
    this.details = e;
  }
  /** The route does not exist on this server (a backend not deployed yet). */
  get missingRoute() {
    return this.status === 404 && this.message === "route not found";
  }
}

let onUnauthorized = () => {};
/** What to do when the server refuses the remembered token. */
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

/** Calls the API; resolves to the JSON answer or rejects with an ApiError. */
export async function call(method, path, body, withToken = token()) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${withToken || ""}` };
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, null, `网络错误 Network error: ${e.message}`);
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data, text);
    if (res.status === 401 && withToken === token()) onUnauthorized(err);
    throw err;
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body ?? {});
export const patch = (path, body) => call("PATCH", path, body);

/** A path with query parameters, each encoded. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}
