// The API as the page uses it: the token (sessionStorage only, sent as the
// bearer header, never in a URL), JSON calls with errors in words, and the
// event stream read with fetch() and a ReadableStream parser (EventSource
// cannot send headers).

const TOKEN_KEY = "haproxy-control.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An API error: `status`, `code` and a message in words. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const WORDS = {
  0: "The API cannot be reached; check the network and try again.",
  401: "Your token is not accepted; sign in again.",
  403: "Your role does not allow this.",
  404: "Not found.",
  409: "This request conflicts with an earlier one.",
  422: "The request was refused.",
  503: "A dependency (PostgreSQL or RabbitMQ) is unavailable; try again shortly.",
};

let onUnauthorized = () => {};

/** Called on every 401: the page returns to sign-in. */
export function whenUnauthorized(f) {
  onUnauthorized = f;
}

/** A JSON call; resolves to `{status, body}` for 2xx, throws ApiError otherwise. */
export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network", WORDS[0]);
  }
  let json = null;
  try {
    json = await r.json();
  } catch {
    json = null;
  }
  if (r.ok) return { status: r.status, body: json };
  const message = json?.error?.message || WORDS[r.status] || `The API answered ${r.status}.`;
  const err = new ApiError(r.status, json?.error?.code || "http", message);
  if (r.status === 401) onUnauthorized(err);
  throw err;
}

export const get = (path) => call("GET", path).then((r) => r.body);
export const post = (path, body) => call("POST", path, body ?? {});

/** A path with query parameters (empty ones left out). */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/**
 * Parses a text/event-stream: calls `onEvent(name, data)` per event.
 * Comments (keep-alives) are ignored. Returns when the stream ends.
 */
export async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let name = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let nl;
    while ((nl = buffer.search(/\r\n|\n|\r/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (data.length) onEvent(name, data.join("\n"));
        name = "message";
        data = [];
      } else if (line.startsWith(":")) {
        // a comment: keep-alive
      } else {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") name = val;
        else if (field === "data") data.push(val);
      }
    }
  }
}

/**
 * Follows the event stream until `signal` aborts: reconnects after 1 s
 * (doubling up to 15 s). `handlers.event(name, json)`, `handlers.state(s)`
 * with `connecting`, `live` or `down`.
 */
export async function followEvents(signal, handlers) {
  let wait = 1000;
  while (!signal.aborted) {
    handlers.state("connecting");
    try {
      const r = await fetch("/api/haproxy/events/stream", {
        headers: { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" },
        cache: "no-store",
        signal,
      });
      if (r.status === 401) {
        onUnauthorized(new ApiError(401, "unauthorized", WORDS[401]));
        return;
      }
      if (!r.ok || !r.body) throw new Error(`stream answered ${r.status}`);
      await readEvents(r.body, (name, data) => {
        let json = null;
        try {
          json = JSON.parse(data);
        } catch {
          return;
        }
        if (name === "ready") {
          wait = 1000;
          handlers.state("live");
        }
        handlers.event(name, json);
      });
    } catch {
      if (signal.aborted) return;
    }
    handlers.state("down");
    await new Promise((res) => setTimeout(res, wait));
    wait = Math.min(wait * 2, 15000);
  }
}
