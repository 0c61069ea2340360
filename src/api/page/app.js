// The operator's page (docs/page.md). No framework: the DOM, the API
// (./api.js) and the event stream. Every text from the API is set with
// textContent, never as HTML.

import * as api from "./api.js";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** An element with attributes and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const ROLES = ["viewer", "operator", "approver", "admin"];
const FINAL = new Set(["success", "failed", "superseded", "rejected"]);
/** A last sync older than this stands out. */
const STALE_MS = 120_000;
const PAGE = 200;

const state = {
  me: null,
  instances: [],
  backends: [],
  backendsCursor: null,
  servers: new Map(),
  /** The loaded servers in display order (sorted). */
  view: [],
  serversCursor: null,
  sort: { key: "name", dir: 1 },
  selected: new Set(),
  apps: new Map(),
  stream: null,
  tracked: new Map(),
  rollouts: [],
  rolloutsCursor: null,
  rolloutDetails: new Map(),
};

const canAct = () => state.me && ROLES.indexOf(state.me.role) >= ROLES.indexOf("operator");
const canReadPolicy = () => state.me && ROLES.indexOf(state.me.role) >= ROLES.indexOf("approver");

// ---------------------------------------------------------------- words

const STATUS_WORDS = {
  awaiting_approval: "awaiting approval",
  pending: "waiting for a worker",
  running: "being applied",
  success: "done",
  failed: "failed",
  superseded: "superseded by a later action on the same server",
  rejected: "refused",
  accepted: "accepted",
};

const ERROR_WORDS = {
  circuit_open: "the instance's circuit breaker is open (its agent failed repeatedly); it retries later",
  agent_unreachable: "the instance's agent could not be reached",
  agent_error: "the instance's agent answered with an error",
  not_found: "HAProxy does not know this server (any more)",
  invalid: "the request is not valid for this server",
};

function statusInWords(status, error, detail) {
  const words = STATUS_WORDS[status] || status;
  const why = [error ? ERROR_WORDS[error] || error : null, detail].filter(Boolean).join(": ");
  return why ? `${words}: ${why}` : words;
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

// One formatter and one collator for the whole page: toLocaleString() and
// localeCompare() with options build a new one per call, which costs
// hundreds of milliseconds over 1,000 rows.
const DATE_TIME = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "numeric",
  day: "numeric",
  hour: "numeric",
  minute: "2-digit",
  second: "2-digit",
});
const NUMERIC_ORDER = new Intl.Collator(undefined, { numeric: true });
const time = (iso) => (iso ? DATE_TIME.format(new Date(iso)) : "");

function notice(message) {
  const n = $("#notice");
  n.textContent = message || "";
  n.hidden = !message;
}

function report(e) {
  if (e instanceof api.ApiError && e.status === 401) return;
  notice(e.message || String(e));
}

// ---------------------------------------------------------------- sign-in and views

function show(view) {
  for (const id of ["signin", "fleet", "rollouts"]) $(`#${id}`).hidden = id !== view;
  for (const a of $$("#nav a")) {
    if (a.getAttribute("href") === `#${view}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function signOut(message) {
  api.setToken(null);
  state.me = null;
  state.stream?.abort();
  state.stream = null;
  document.body.classList.remove("can-act");
  $("#nav").hidden = true;
  $("#who").hidden = true;
  notice("");
  show("signin");
  $("#signin-error").textContent = message || "";
  $("#token").value = "";
  $("#token").focus();
}

api.whenUnauthorized(() => signOut("Your token was not accepted (or is no longer valid): sign in again."));

async function signIn(token) {
  api.setToken(token);
  try {
    state.me = await api.get("/api/me");
  } catch (e) {
    if (!(e instanceof api.ApiError && e.status === 401)) {
      api.setToken(null);
      $("#signin-error").textContent = e.message;
    }
    return;
  }
  document.body.classList.toggle("can-act", canAct());
  $("#whoami").textContent = `${state.me.actor} (${state.me.role})`;
  $("#nav").hidden = false;
  $("#who").hidden = false;
  startStream();
  route();
}

function route() {
  if (!state.me) return show("signin");
  const view = location.hash === "#rollouts" ? "rollouts" : "fleet";
  show(view);
  if (view === "fleet") loadFleet().catch(report);
  else loadRollouts().catch(report);
}

// ---------------------------------------------------------------- fleet

async function loadFleet() {
  const page = await api.get(api.withQuery("/api/haproxy/instances", { limit: 500 }));
  state.instances = page.items;
  renderInstances();
  const sel = $("#f-instance");
  const keep = sel.value;
  sel.replaceChildren(...state.instances.map((i) => el("option", { value: i.id, text: i.name })));
  if (keep && state.instances.some((i) => String(i.id) === keep)) sel.value = keep;
  if (state.instances.length === 0) {
    $("#backends").replaceChildren(el("p", { text: "No HAProxy instance is registered yet." }));
    return;
  }
  await loadBackends();
}

function renderInstances() {
  $("#instances").replaceChildren(
    ...state.instances.map((i) => {
      const age = i.last_sync.at ? Date.now() - Date.parse(i.last_sync.at) : Infinity;
      const stale = !i.is_active ? false : age > STALE_MS || i.last_sync.result === "failed";
      const card = el(
        "article",
        { class: `card ${stale ? "stale" : ""} breaker-${i.breaker.state}`, dataset: { instance: i.id } },
        el("h3", { text: i.name }),
        el("p", {}, "Breaker: ", el("strong", { text: i.breaker.state.replace("_", " ") })),
        el(
          "p",
          {},
          "Last sync: ",
          el("span", { class: "age", dataset: { at: i.last_sync.at || "" }, text: ago(i.last_sync.at) }),
          i.last_sync.result ? ` (${i.last_sync.result})` : "",
          stale ? el("strong", { class: "badge", text: " stale" }) : null,
        ),
        i.last_sync.error ? el("p", { class: "error", text: i.last_sync.error }) : null,
        !i.is_active ? el("p", { text: "inactive" }) : null,
        canAct() && i.is_active
          ? el("button", { type: "button", class: "sync", onclick: () => syncInstance(i), text: `Sync ${i.name} now` })
          : null,
      );
      return card;
    }),
  );
}

async function syncInstance(i) {
  try {
    await api.post(`/api/haproxy/instances/${i.id}/sync`);
    notice("");
    track({ kind: "sync", label: `sync of ${i.name}`, status: "accepted" });
    setTimeout(() => loadFleetQuietly(), 1500);
  } catch (e) {
    report(e);
  }
}

function instanceById(id) {
  return state.instances.find((i) => i.id === Number(id));
}

async function loadBackends() {
  const instance = $("#f-instance").value;
  if (!instance) return;
  const page = await api.get(api.withQuery(`/api/haproxy/instances/${instance}/backends`, { limit: 500 }));
  state.backends = page.items;
  state.backendsCursor = page.next_cursor;
  const sel = $("#f-backend");
  const keep = sel.value;
  sel.replaceChildren(...state.backends.map((b) => el("option", { value: b.id, text: b.name })));
  if (keep && state.backends.some((b) => String(b.id) === keep)) sel.value = keep;
  renderBackends();
  await loadServers(true);
}

/** A backend's counts: key in the API, column heading (and, stacked on a phone, cell label). */
const BACKEND_COUNTS = [
  ["total", "Servers"],
  ["ready", "Ready"],
  ["drain", "Drain"],
  ["maint", "Maint"],
  ["up", "Up"],
  ["down", "Down"],
];

function renderBackends() {
  const current = $("#f-backend").value;
  const rows = state.backends.map((b) =>
    el(
      "tr",
      { class: `${String(b.id) === current ? "current" : ""} ${b.servers.ready === 0 ? "no-ready" : ""}` },
      el(
        "th",
        { scope: "row" },
        el("button", {
          type: "button",
          class: "link",
          text: b.name,
          "aria-pressed": String(String(b.id) === current),
          onclick: () => {
            $("#f-backend").value = b.id;
            renderBackends();
            loadServers(true).catch(report);
          },
        }),
      ),
      ...BACKEND_COUNTS.map(([k, label]) => el("td", { text: b.servers[k], dataset: { label } })),
    ),
  );
  $("#backends").replaceChildren(
    el(
      "table",
      { "aria-label": "Backends of the instance" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Backend" }), ...BACKEND_COUNTS.map(([, h]) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows),
    ),
  );
}

function serverQuery(cursor) {
  return api.withQuery(`/api/haproxy/backends/${$("#f-backend").value}/servers`, {
    limit: PAGE,
    cursor,
    admin_state: $("#f-admin").value,
    op_state: $("#f-op").value,
    application_id: $("#f-app").value,
    q: $("#f-q").value.trim(),
  });
}

async function loadServers(reset) {
  if (!$("#f-backend").value) {
    state.servers.clear();
    renderServers();
    return;
  }
  const page = await api.get(serverQuery(reset ? undefined : state.serversCursor));
  if (reset) {
    state.servers.clear();
    state.selected.clear();
  }
  for (const s of page.items) {
    state.servers.set(s.id, s);
    if (s.application) state.apps.set(s.application.id, s.application.name);
  }
  state.serversCursor = page.next_cursor;
  renderApps();
  renderServers();
}

function renderApps() {
  const sel = $("#f-app");
  const keep = sel.value;
  sel.replaceChildren(
    el("option", { value: "", text: "any" }),
    ...[...state.apps].sort((a, b) => NUMERIC_ORDER.compare(a[1], b[1])).map(([id, name]) => el("option", { value: id, text: name })),
  );
  sel.value = keep;
}

function sortedServers() {
  const { key, dir } = state.sort;
  const value = (s) => (key === "address" ? `${s.address}:${s.port ?? ""}` : s[key] ?? "");
  return [...state.servers.values()].sort((a, b) => {
    const x = value(a);
    const y = value(b);
    const c = typeof x === "number" && typeof y === "number" ? x - y : NUMERIC_ORDER.compare(String(x), String(y));
    return c * dir || a.id - b.id;
  });
}

function serverRow(s) {
  const tr = el("tr", { dataset: { server: s.id, name: s.name }, class: `admin-${s.admin_state} op-${s.op_state}` });
  fillRow(tr, s);
  return tr;
}

function fillRow(tr, s) {
  tr.className = `admin-${s.admin_state} op-${s.op_state}`;
  const cells = [];
  if (!canAct()) cells.push(el("td", { class: "operator-only" }));
  else {
    cells.push(
      el(
        "td",
        {},
        el("input", {
          type: "checkbox",
          "aria-label": `Select ${s.name}`,
          checked: state.selected.has(s.id),
          onchange: (ev) => {
            if (ev.target.checked) state.selected.add(s.id);
            else state.selected.delete(s.id);
            renderSelection();
          },
        }),
      ),
    );
  }
  cells.push(
    el("th", { scope: "row" }, el("button", { type: "button", class: "link", text: s.name, "aria-label": `History of ${s.name}`, onclick: () => openHistory(s) })),
    el("td", { text: `${s.address}${s.port ? `:${s.port}` : ""}` }),
    el("td", { class: "admin", text: s.admin_state }),
    el("td", { class: "op", text: s.op_state }),
    el("td", { text: s.check_status || "" }),
    el("td", { class: "num", text: s.current_sessions }),
    el("td", { text: s.application?.name || "" }),
    el("td", { title: time(s.state_changed_at), text: ago(s.state_changed_at) }),
  );
  if (!canAct()) cells.push(el("td", { class: "operator-only" }));
  else {
    cells.push(
      el(
        "td",
        { class: "acts" },
        ...["drain", "maint", "ready"].map((a) =>
          el("button", {
            type: "button",
            dataset: { act: a },
            disabled: s.admin_state === a,
            "aria-label": `${a} ${s.name}`,
            text: a,
            onclick: () => confirmServers([s], a),
          }),
        ),
      ),
    );
  }
  tr.replaceChildren(...cells);
}

/**
 * Rows are windowed past WINDOW_FROM loaded servers: only those in view
 * (and OVERSCAN either side) are in the DOM, between two spacer rows of
 * the height of the others, so 1,000+ loaded rows stay responsive.
 * aria-rowcount/aria-rowindex tell assistive technology where a row is.
 */
const WINDOW_FROM = 100;
const OVERSCAN = 30;
let rowHeight = 0;
let shown = { start: -1, end: -1 };

function spacer(height) {
  const td = el("td", { colspan: 10 });
  td.style.height = `${height}px`;
  return el("tr", { class: "spacer", "aria-hidden": "true" }, td);
}

function renderWindow(force) {
  const view = state.view;
  const wrap = $(".tablewrap");
  let start = 0;
  let end = view.length;
  if (view.length > WINDOW_FROM) {
    const h = rowHeight || 36;
    start = Math.max(0, Math.floor(wrap.scrollTop / h) - OVERSCAN);
    end = Math.min(view.length, start + Math.ceil(wrap.clientHeight / h) + 2 * OVERSCAN);
  }
  if (!force && start === shown.start && end === shown.end) return;
  shown = { start, end };
  const rows = view.slice(start, end).map((s, i) => {
    const tr = serverRow(s);
    tr.setAttribute("aria-rowindex", String(start + i + 2));
    return tr;
  });
  const h = rowHeight || 36;
  const before = start > 0 ? [spacer(start * h)] : [];
  const after = end < view.length ? [spacer((view.length - end) * h)] : [];
  $("#servers tbody").replaceChildren(...before, ...rows, ...after);
  if (!rowHeight && rows.length) rowHeight = rows[0].getBoundingClientRect().height || 0;
}

function renderServers() {
  state.view = sortedServers();
  const n = state.view.length;
  const table = $("#servers");
  table.setAttribute("aria-rowcount", String(n + 1));
  table.dataset.rows = String(n);
  renderWindow(true);
  $("#servers-count").textContent = n === 0 ? "No server matches." : `${n} server${n === 1 ? "" : "s"} loaded${state.serversCursor ? " (more below)" : ""}.`;
  $("#servers-more").hidden = !state.serversCursor;
  for (const b of $$("#servers th button[data-sort]")) {
    const th = b.parentElement;
    if (b.dataset.sort === state.sort.key) th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
  renderSelection();
}

function renderSelection() {
  if (!canAct()) return;
  $("#actbar").hidden = false;
  $("#selcount").textContent = `${state.selected.size} selected`;
  for (const b of $$("#actbar [data-batch]")) b.disabled = state.selected.size === 0;
}

/** A state change seen on the stream, applied to a loaded row in place. */
function applyServerEvent(ev) {
  const id = ev.server?.id;
  const s = id && state.servers.get(id);
  if (s && ev.current) {
    s.admin_state = ev.current.admin_state;
    s.op_state = ev.current.op_state;
    s.state_changed_at = ev.occurred_at;
    const tr = $(`#servers tr[data-server="${id}"]`);
    if (tr) {
      fillRow(tr, s);
      tr.classList.add("flash");
      setTimeout(() => tr.classList.remove("flash"), 1500);
    }
  }
  soon("backends", () => refreshBackendCounts());
}

async function refreshBackendCounts() {
  const instance = $("#f-instance").value;
  if (!instance || $("#fleet").hidden) return;
  const page = await api.get(api.withQuery(`/api/haproxy/instances/${instance}/backends`, { limit: 500 }));
  state.backends = page.items;
  renderBackends();
}

async function loadFleetQuietly() {
  if (!state.me || $("#fleet").hidden) return;
  const page = await api.get(api.withQuery("/api/haproxy/instances", { limit: 500 }));
  state.instances = page.items;
  renderInstances();
}

const timers = new Map();
/** Runs `f` once within 300 ms however many times it is asked for. */
function soon(key, f) {
  if (timers.has(key)) return;
  timers.set(
    key,
    setTimeout(() => {
      timers.delete(key);
      Promise.resolve(f()).catch(report);
    }, 300),
  );
}

// ---------------------------------------------------------------- acting

let pending = null;

/** The guard's verdict (rule 10) for taking `servers` of one backend out. */
async function verdictFor(servers, action) {
  if (action === "ready") return { refused: false, text: "Ready puts the server back in rotation: the guard does not apply." };
  const backendId = servers[0].backend_id;
  const backend = state.backends.find((b) => b.id === backendId);
  const name = backend ? backend.name : `#${backendId}`;
  const leaving = new Set(servers.filter((s) => s.admin_state === "ready").map((s) => s.id));
  if (leaving.size === 0) return { refused: false, text: `No ready server of backend ${name} is taken out: the guard does not apply.` };
  const ready = await api.get(api.withQuery(`/api/haproxy/backends/${backendId}/servers`, { admin_state: "ready", limit: 500 }));
  const others = ready.items.filter((s) => !leaving.has(s.id)).length + (ready.next_cursor ? 1 : 0);
  if (others > 0) {
    return { refused: false, text: `Allowed: backend ${name} keeps ${others}${ready.next_cursor ? " or more" : ""} ready server${others === 1 ? "" : "s"}.` };
  }
  return {
    refused: true,
    text: `Refused by the guard: this would leave backend ${name} with no ready server. It is refused unless forced.`,
  };
}

async function approvalNote(subject) {
  if (!canReadPolicy()) {
    return "An approval policy may hold this request (your role cannot read it); if it does, it shows as awaiting approval.";
  }
  try {
    const p = await api.get("/api/haproxy/settings/approval");
    const glob = (pat, s) => new RegExp(`^${pat.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".")}$`).test(s);
    const rules = [];
    if (subject.force && p.force_actions) rules.push("forced requests need approval");
    if (subject.count > 1 && p.batch_max_servers != null && subject.count >= p.batch_max_servers) rules.push(`batches over ${p.batch_max_servers} servers need approval`);
    if (subject.action === "maint" && subject.instance && p.maint_instances.some((x) => glob(x, subject.instance))) rules.push(`maint on instance ${subject.instance} needs approval`);
    if (subject.action === "maint" && subject.backend && p.maint_backends.some((x) => glob(x, subject.backend))) rules.push(`maint on backend ${subject.backend} needs approval`);
    return rules.length ? `The approval policy applies (${rules.join("; ")}): it will wait for a second person.` : "No approval policy rule applies.";
  } catch {
    return "The approval policy could not be read; if it applies, the request shows as awaiting approval.";
  }
}

async function confirmServers(servers, action) {
  const backend = state.backends.find((b) => b.id === servers[0].backend_id);
  const instance = instanceById($("#f-instance").value);
  const names = servers.map((s) => s.name);
  const what = el(
    "div",
    {},
    el("p", {}, el("strong", { text: action }), ` ${servers.length === 1 ? "server" : `${servers.length} servers`} of backend ${backend?.name ?? ""} on ${instance?.name ?? ""}:`),
    el("p", { class: "names", text: names.length > 12 ? `${names.slice(0, 12).join(", ")} and ${names.length - 12} more` : names.join(", ") }),
  );
  let verdict;
  try {
    verdict = await verdictFor(servers, action);
  } catch (e) {
    return report(e);
  }
  const approval = approvalNote({ action, count: servers.length, instance: instance?.name, backend: backend?.name, force: false });
  openConfirm({
    what,
    verdict,
    approval,
    send: (force, reason) =>
      servers.length === 1
        ? sendAction(servers[0], action, force, reason)
        : sendBatch({ server_ids: servers.map((s) => s.id) }, action, force, reason, `${action} of ${servers.length} servers`),
  });
}

function confirmGroup() {
  const id = Number($("#group-id").value);
  const action = $("#group-action").value;
  if (!Number.isInteger(id) || id < 1) return notice("Give the ApplicationGroup's id (a positive number).");
  openConfirm({
    what: el("p", {}, el("strong", { text: action }), ` every live server of an application of ApplicationGroup ${id}, on every instance.`),
    verdict: {
      refused: false,
      optionalForce: action !== "ready",
      text: action === "ready" ? "Ready: the guard does not apply." : "The guard checks each server as it runs: one that would leave its backend with no ready server is refused unless forced.",
    },
    approval: approvalNote({ action, count: 2, force: false }),
    send: (force, reason) => sendBatch({ application_group_id: id }, action, force, reason, `${action} of ApplicationGroup ${id}`),
  });
}

function openConfirm({ what, verdict, approval, send }) {
  const d = $("#confirm");
  $("#confirm-title").textContent = "Confirm";
  $("#confirm-what").replaceChildren(what);
  $("#confirm-verdict").textContent = verdict.text;
  $("#confirm-verdict").className = `verdict ${verdict.refused ? "refused" : "allowed"}`;
  $("#confirm-approval").textContent = "Checking the approval policy…";
  Promise.resolve(approval).then((t) => ($("#confirm-approval").textContent = t));
  $("#confirm-force").checked = false;
  $("#confirm-force-box").hidden = !(verdict.refused || verdict.optionalForce);
  $("#confirm-reason").value = "";
  pending = { send, refused: verdict.refused };
  updateSend();
  d.showModal();
  (verdict.refused ? $("#confirm-cancel") : $("#confirm-send")).focus();
}

function updateSend() {
  const b = $("#confirm-send");
  const forced = $("#confirm-force").checked;
  b.disabled = pending?.refused && !forced;
  b.textContent = pending?.refused ? (forced ? "Send with force" : "Refused") : forced ? "Send with force" : "Send";
}

async function sendAction(s, action, force, reason) {
  const entry = track({ kind: "action", label: `${action} ${s.name}`, status: "sending" });
  try {
    const { body } = await api.post(`/api/haproxy/servers/${s.id}/action`, { action, force, reason: reason || undefined });
    entry.txn = body.transaction_id;
    state.tracked.set(body.transaction_id, entry);
    update(entry, body.status, null, null, body.approval_id);
    pollAction(entry);
  } catch (e) {
    update(entry, "failed", null, e.message);
  }
}

async function sendBatch(targets, action, force, reason, label) {
  const entry = track({ kind: "batch", label, status: "sending" });
  try {
    const { body } = await api.post("/api/haproxy/batch/action", { action, targets, force, reason: reason || undefined });
    entry.batch = body.batch_id;
    update(entry, body.status, null, null, body.approval_id);
    pollBatch(entry);
  } catch (e) {
    update(entry, "failed", null, e.message);
  }
}

function track(entry) {
  const li = el("li", { class: "progress" });
  entry.li = li;
  $("#progress-list").prepend(li);
  $("#progress").hidden = false;
  update(entry, entry.status);
  return entry;
}

function update(entry, status, error, detail, approvalId) {
  entry.status = status;
  const words = status === "awaiting_approval" && approvalId ? `awaiting approval (approval #${approvalId})` : statusInWords(status, error, detail);
  entry.li.className = `progress status-${status}`;
  entry.li.dataset.status = status;
  entry.li.replaceChildren(el("strong", { text: entry.label }), " — ", el("span", { class: "words", text: words }));
}

async function pollAction(entry) {
  for (let i = 0; i < 600 && !FINAL.has(entry.status); i++) {
    await new Promise((r) => setTimeout(r, entry.status === "awaiting_approval" ? 5000 : 700));
    if (FINAL.has(entry.status)) return;
    try {
      const a = await api.get(`/api/haproxy/actions/${entry.txn}`);
      update(entry, a.status, a.error, a.error_detail);
    } catch (e) {
      if (e.status === 401) return;
    }
  }
}

async function pollBatch(entry) {
  for (let i = 0; i < 600; i++) {
    await new Promise((r) => setTimeout(r, entry.status === "awaiting_approval" ? 5000 : 1000));
    try {
      const b = await api.get(`/api/haproxy/batches/${entry.batch}`);
      const counts = Object.entries(b.counts).filter(([, n]) => n > 0).map(([k, n]) => `${n} ${STATUS_WORDS[k] || k}`).join(", ");
      const done = b.completed_at || b.status === "rejected";
      entry.status = done ? "success" : b.status;
      entry.li.className = `progress status-${done ? (b.status === "rejected" ? "rejected" : "done") : b.status}`;
      entry.li.dataset.status = done ? "final" : b.status;
      entry.li.replaceChildren(
        el("strong", { text: entry.label }),
        " — ",
        el("span", { class: "words", text: `${b.total} servers: ${counts || "none yet"}${done ? " (finished)" : ""}${b.status_detail ? ` — ${b.status_detail}` : ""}` }),
      );
      if (done) return;
    } catch (e) {
      if (e.status === 401) return;
    }
  }
}

// ---------------------------------------------------------------- history

let historyOf = null;

async function openHistory(s, cursor) {
  historyOf = s;
  const d = $("#history");
  $("#history-title").textContent = `History of ${s.name}`;
  if (!cursor) $("#history-list").replaceChildren();
  let page;
  try {
    page = await api.get(api.withQuery(`/api/haproxy/servers/${s.id}/history`, { limit: 50, cursor }));
  } catch (e) {
    return report(e);
  }
  const pair = (p) => `${p.admin_state ?? "?"}/${p.op_state ?? "?"}`;
  $("#history-list").append(
    ...page.items.map((h) =>
      el(
        "li",
        {},
        el("time", { datetime: h.changed_at, text: time(h.changed_at) }),
        " ",
        el("strong", { text: `${pair(h.previous)} → ${pair(h.current)}` }),
        ` by ${h.actor} (${h.source === "sync" ? "seen by a sync" : "action"})`,
        h.reason ? el("span", { class: "reason", text: ` — “${h.reason}”` }) : null,
      ),
    ),
  );
  if (!cursor && page.items.length === 0) $("#history-list").append(el("li", { text: "No change recorded." }));
  const more = $("#history-more");
  more.hidden = !page.next_cursor;
  more.onclick = () => openHistory(historyOf, page.next_cursor);
  if (!d.open) d.showModal();
}

// ---------------------------------------------------------------- rollouts

const ROLLOUT_FINAL = new Set(["completed", "aborted", "rejected"]);

async function loadRollouts(more) {
  const page = await api.get(api.withQuery("/api/haproxy/rollouts", { limit: 50, cursor: more ? state.rolloutsCursor : undefined }));
  state.rollouts = more ? state.rollouts.concat(page.items) : page.items;
  state.rolloutsCursor = page.next_cursor;
  await Promise.all(
    state.rollouts
      .filter((r) => !ROLLOUT_FINAL.has(r.status) || !state.rolloutDetails.has(r.id))
      .slice(0, 20)
      .map((r) => api.get(`/api/haproxy/rollouts/${r.id}`).then((d) => state.rolloutDetails.set(r.id, d))),
  );
  renderRollouts();
}

function renderRollouts() {
  const order = (r) => (r.status === "halted" ? 0 : ROLLOUT_FINAL.has(r.status) ? 2 : 1);
  const list = [...state.rollouts].sort((a, b) => order(a) - order(b) || b.id - a.id);
  $("#rollouts-empty").hidden = list.length > 0;
  $("#rollouts-more").hidden = !state.rolloutsCursor;
  $("#rollouts-list").replaceChildren(
    ...list.map((r) => {
      const d = state.rolloutDetails.get(r.id);
      const waves = [];
      for (let w = 0; w < r.waves; w++) {
        const servers = d ? d.servers.filter((s) => s.wave === w) : [];
        const done = servers.filter((s) => s.step === "ready" || s.step === "skipped").length;
        const failed = servers.filter((s) => s.step === "failed").length;
        waves.push(
          el(
            "li",
            { class: w === r.current_wave && !ROLLOUT_FINAL.has(r.status) ? "current" : "" },
            `Wave ${w + 1}: `,
            el("progress", { max: servers.length || 1, value: done, "aria-label": `Wave ${w + 1} progress` }),
            ` ${done}/${servers.length} ready${failed ? `, ${failed} failed` : ""}`,
          ),
        );
      }
      const buttons = [];
      if (canAct()) {
        const act = (verb) =>
          el("button", {
            type: "button",
            text: verb,
            "aria-label": `${verb} rollout ${r.id}`,
            onclick: async () => {
              try {
                await api.post(`/api/haproxy/rollouts/${r.id}/${verb}`);
                notice("");
              } catch (e) {
                report(e);
              }
              loadRollouts().catch(report);
            },
          });
        if (r.status === "running") buttons.push(act("pause"));
        if (r.status === "paused" || r.status === "halted") buttons.push(act("resume"));
        if (!ROLLOUT_FINAL.has(r.status) && r.status !== "aborting") buttons.push(act("abort"));
      }
      return el(
        "li",
        { class: `rollout status-${r.status}`, dataset: { rollout: r.id } },
        el("h3", { text: `Rollout ${r.id} — ${STATUS_WORDS[r.status] || r.status}` }),
        el("p", { text: `by ${r.actor}, ${time(r.created_at)}; ${r.total} servers in ${r.waves} waves${r.reason ? ` — “${r.reason}”` : ""}` }),
        r.halted_reason ? el("p", { class: "error", text: `Halted: ${r.halted_reason}` }) : null,
        el("ol", { class: "waves" }, waves),
        buttons.length ? el("p", { class: "buttons" }, buttons) : null,
      );
    }),
  );
}

// ---------------------------------------------------------------- live

function setLive(s) {
  const l = $("#live");
  l.textContent = { connecting: "connecting…", live: "live", down: "reconnecting…" }[s] || s;
  l.className = `live ${s}`;
  document.body.dataset.stream = s;
}

function startStream() {
  state.stream?.abort();
  const ctrl = new AbortController();
  state.stream = ctrl;
  api.followEvents(ctrl.signal, {
    state: setLive,
    event: (name, ev) => {
      if (name === "lagged") return route();
      if (name === "server.state_changed") applyServerEvent(ev);
      else if (name === "server.discovered" || name === "server.removed") soon("servers", () => loadServers(true));
      else if (name.startsWith("instance.")) soon("instances", loadFleetQuietly);
      else if (name.startsWith("rollout.")) soon("rollouts", () => (!$("#rollouts").hidden ? loadRollouts() : null));
      if (name.startsWith("action.") && ev.transaction_id) {
        const entry = state.tracked.get(ev.transaction_id);
        const status = { "action.succeeded": "success", "action.failed": "failed", "action.superseded": "superseded", "action.rejected": "rejected" }[name];
        if (entry && status) update(entry, status, ev.error, ev.error_detail);
      }
    },
  }).catch(() => setLive("down"));
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("#signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    $("#signin-error").textContent = "";
    signIn($("#token").value.trim());
  });
  $("#signout").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  $("#f-instance").addEventListener("change", () => {
    $("#f-backend").value = "";
    loadBackends().catch(report);
  });
  $("#f-backend").addEventListener("change", () => {
    renderBackends();
    loadServers(true).catch(report);
  });
  for (const id of ["#f-admin", "#f-op", "#f-app"]) $(id).addEventListener("change", () => loadServers(true).catch(report));
  let typing;
  $("#f-q").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => loadServers(true).catch(report), 300);
  });
  $("#filters").addEventListener("submit", (e) => e.preventDefault());
  $("#servers-more").addEventListener("click", () => loadServers(false).catch(report));
  let framed = false;
  $(".tablewrap").addEventListener("scroll", () => {
    if (framed) return;
    framed = true;
    requestAnimationFrame(() => {
      framed = false;
      renderWindow(false);
    });
  });
  $("#rollouts-more").addEventListener("click", () => loadRollouts(true).catch(report));
  for (const b of $$("#servers th button[data-sort]")) {
    b.addEventListener("click", () => {
      const key = b.dataset.sort;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
      renderServers();
    });
  }
  $("#select-all")?.addEventListener("change", (e) => {
    state.selected = e.target.checked ? new Set(state.servers.keys()) : new Set();
    renderServers();
  });
  for (const b of $$("#actbar [data-batch]")) {
    b.addEventListener("click", () => {
      const servers = [...state.selected].map((id) => state.servers.get(id)).filter(Boolean);
      if (servers.length) confirmServers(servers, b.dataset.batch);
    });
  }
  $("#group-act")?.addEventListener("click", confirmGroup);
  $("#confirm-force").addEventListener("change", updateSend);
  $("#confirm-cancel").addEventListener("click", () => {
    pending = null;
    $("#confirm").close("cancel");
  });
  $("#confirm-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const p = pending;
    const forced = $("#confirm-force").checked;
    if (!p || (p.refused && !forced)) return;
    pending = null;
    $("#confirm").close("send");
    p.send(forced, $("#confirm-reason").value.trim());
  });
  $("#confirm").addEventListener("close", () => (pending = null));
  setInterval(() => {
    for (const a of $$(".age")) a.textContent = ago(a.dataset.at || null);
  }, 5000);
}

wire();
if (api.token()) signIn(api.token());
else signOut();
