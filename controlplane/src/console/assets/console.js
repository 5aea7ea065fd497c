// herald console: a client of /api/v1 (docs/CONSOLE.md). No framework, no inline script, and
// every value from the API reaches the page through textContent, never as HTML.
"use strict";

const state = { csrf: null, view: "triggers", ns: null, editing: null, dl: null, etags: {}, cache: {}, defaults: null };
const $ = (id) => document.getElementById(id);

function banner(text) {
  const b = $("banner");
  b.textContent = text || "";
  b.hidden = !text;
}

// One API call. GETs send If-None-Match and reuse the last body on 304 (polling is cheap).
async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["x-herald-csrf"] = state.csrf;
  if (method === "GET" && state.etags[path]) headers["if-none-match"] = state.etags[path];
  const r = await fetch("/api/v1" + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 304) return { status: 200, body: state.cache[path], changed: false };
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (method === "GET" && r.ok) {
    state.etags[path] = r.headers.get("etag");
    state.cache[path] = data;
  }
  if (r.status === 401 && path !== "/session") showSignIn();
  return { status: r.status, body: data, changed: true };
}

function errorOf(res) {
  const e = res.body && res.body.error ? res.body.error : "HTTP " + res.status;
  return res.status === 403 ? "Not allowed: " + e : e;
}

// What a view showed is cleared when the user may not see it (or no longer may).
function denied(res, ...ids) {
  banner(errorOf(res));
  for (const id of ids) {
    const e = $(id);
    if (e.tagName === "TABLE") e.querySelector("tbody").replaceChildren(); else e.replaceChildren();
  }
}

function when(t) {
  return t ? String(t).slice(0, 19).replace("T", " ") + " UTC" : "";
}

function size(n) {
  if (n === undefined || n === null || n < 0) return "none";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === undefined || c === null ? "" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function button(text, onClick, cls) {
  const b = el("button", text, cls);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

const VIEWS = ["catalog", "topology", "triggers", "streams"];
const SVG = "http://www.w3.org/2000/svg";

function show(view) {
  state.view = view;
  for (const id of ["signin"].concat(VIEWS)) $(id).hidden = id !== view;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
  refresh();
}

function showSignIn() {
  state.csrf = null;
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  for (const id of VIEWS) $(id).hidden = true;
  $("signin").hidden = false;
}

function signedIn(body) {
  state.csrf = body.csrf;
  $("who").textContent = body.user.name;
  $("nav").hidden = false;
  $("signout").hidden = false;
  $("signin").hidden = true;
  const view = (location.hash || "#catalog").slice(1);
  show(VIEWS.includes(view) ? view : "catalog");
  loadNamespaces();
}

async function loadNamespaces() {
  const res = await api("GET", "/namespaces");
  if (res.status !== 200) { banner(errorOf(res)); return; }
  const sel = $("namespace");
  const names = res.body.namespaces;
  sel.replaceChildren(...names.map((n) => { const o = el("option", n); o.value = n; return o; }));
  if (!names.includes(state.ns)) state.ns = names[0] || null;
  sel.value = state.ns || "";
  if (!names.length) banner("You may not list triggers in any namespace.");
  refresh();
}

function readyOf(s) {
  const c = ((s.status || {}).conditions || []).find((c) => c.type === "Ready");
  if (!c) return el("span", "pending", "muted");
  const span = el("span", c.status === "True" ? "Ready" : c.reason, c.status === "True" ? "ok" : "bad");
  span.title = c.message || "";
  return span;
}

async function refreshTriggers() {
  if (!state.ns) return;
  const path = "/namespaces/" + encodeURIComponent(state.ns) + "/subscriptions";
  const res = await api("GET", path);
  if (res.status !== 200) { denied(res, "trigger-table"); return; }
  banner("");
  if (!res.changed) return;
  const tbody = $("trigger-table").querySelector("tbody");
  const items = res.body.items || [];
  tbody.replaceChildren(...items.map((s) => {
    const st = s.status || {};
    const actions = el("span");
    actions.append(
      button("Edit", () => editTrigger(s)),
      button("Dead letters", () => openDeadLetters(s.metadata.name)),
      button("Delete", () => deleteTrigger(s.metadata.name), "danger"));
    return row([s.metadata.name, s.spec.app ? "app " + s.spec.app : s.spec.sink, (s.spec.types || []).join(", "),
      readyOf(s), st.pending, st.deadLetters, when(st.lastDelivery), actions]);
  }));
  $("no-triggers").hidden = items.length > 0;
  if (state.dl) refreshDeadLetters();
}

async function refreshStreams() {
  const res = await api("GET", "/eventstreams");
  if (res.status !== 200) { denied(res, "stream-table", "eventstreams"); return; }
  banner("");
  if (!res.changed) return;
  $("stream-table").querySelector("tbody").replaceChildren(...(res.body.streams || []).map((s) =>
    row([s.name, s.messages, size(s.bytes), size(s.maxBytes), s.consumers])));
  const box = $("eventstreams");
  box.replaceChildren(...(res.body.items || []).map((e) => {
    const div = el("div");
    div.append(el("h4", e.metadata.name));
    const conds = ((e.status || {}).conditions || []).map((c) => c.type + "=" + c.status + (c.message ? " (" + c.message + ")" : ""));
    div.append(el("p", conds.join("; ") || "no status yet", "muted"));
    div.append(el("pre", JSON.stringify(e.status || {}, null, 2)));
    return div;
  }));
}

function rate(r) {
  return r >= 10 ? r.toFixed(0) : r.toFixed(2);
}

async function refreshCatalog() {
  const q = $("catalog-q").value.trim();
  const res = await api("GET", "/catalog" + (q ? "?q=" + encodeURIComponent(q) : ""));
  if (res.status !== 200) { denied(res, "catalog-table"); $("catalog-sample").hidden = true; return; }
  banner(res.body.error ? "The catalog cannot follow the stream: " + res.body.error : "");
  if (!res.changed) return;
  const items = res.body.items || [];
  state.types = items.map((i) => i.type);
  $("catalog-since").textContent = "counted since " + when(res.body.since);
  $("catalog-table").querySelector("tbody").replaceChildren(...items.map((i) =>
    row([i.source, i.type, rate(i.rate), i.count, when(i.lastSeen),
      i.sample ? button("Sample", () => showSample(i)) : el("span", "no sample", "muted")])));
  $("catalog-empty").hidden = items.length > 0;
  await refreshSources();
}

// The internal publishers: EventSchedules and KubernetesSources.
async function refreshSources() {
  const res = await api("GET", "/sources");
  if (res.status !== 200) { denied(res, "sources-table"); return; }
  if (!res.changed) return;
  const items = res.body.items || [];
  $("sources-table").querySelector("tbody").replaceChildren(...items.map((s) => {
    const what = s.kind === "EventSchedule"
      ? s.schedule + (s.timeZone ? " (" + s.timeZone + ")" : "") + (s.suspend ? ", suspended" : "")
      : (s.resources || []).join(", ") + " as " + s.serviceAccountName;
    const r = s.ready;
    const ready = r ? el("span", r.status === "True" ? "Ready" : r.reason, r.status === "True" ? "ok" : "bad") : el("span", "pending", "muted");
    if (r) ready.title = r.message || "";
    return row([s.kind, s.namespace, s.name, (s.types || []).join(", "), what, ready,
      when(s.lastScheduleTime), when(s.nextScheduleTime)]);
  }));
  $("sources-empty").hidden = items.length > 0;
}

function showSample(i) {
  const s = i.sample;
  const lines = Object.keys(s.attributes).map((k) => k + ": " + s.attributes[k]);
  lines.push("", s.data.text !== undefined ? s.data.text : "(base64) " + s.data.base64);
  if (s.truncated) lines.push("", "(cut; " + s.dataBytes + " bytes in all)");
  const pre = $("catalog-sample");
  pre.textContent = lines.join("\n");
  pre.hidden = false;
}

// Three columns (publishers, types, subscribers), nodes as boxes, edges as curves labelled
// with their rate; the height grows with the longest column, so 50 apps stay readable.
// Each column after the first is ordered by the rows of what feeds it (the first row with an
// edge to it), so most edges run straight across instead of crossing the page.
function orderBy(prev, col, edges) {
  const row = new Map(prev.map((n, i) => [n.id, i]));
  const key = new Map(col.map((n) => [n.id, Infinity]));
  for (const e of edges) {
    if (row.has(e.from) && key.has(e.to)) key.set(e.to, Math.min(key.get(e.to), row.get(e.from)));
  }
  return col.slice().sort((a, b) => (key.get(a.id) - key.get(b.id)) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

function drawTopology(t) {
  const types = orderBy(t.publishers, t.types, t.edges);
  const cols = [t.publishers, types, orderBy(types, t.subscribers, t.edges)];
  const W = 1100, colX = [20, 420, 820], boxW = 260, boxH = 34, gap = 14, top = 40;
  const rows = Math.max(1, ...cols.map((c) => c.length));
  const H = top + rows * (boxH + gap) + 20;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "topology");
  const pos = {};
  const heads = ["Publishers (source)", "Event types", "Subscribers"];
  cols.forEach((col, ci) => {
    const h = document.createElementNS(SVG, "text");
    h.setAttribute("x", colX[ci]); h.setAttribute("y", 20); h.setAttribute("class", "head");
    h.textContent = heads[ci];
    svg.appendChild(h);
    col.forEach((n, ri) => { pos[n.id] = { x: colX[ci], y: top + ri * (boxH + gap) }; });
  });
  const edges = document.createElementNS(SVG, "g");
  svg.appendChild(edges);
  for (const e of t.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const x1 = a.x + boxW, y1 = a.y + boxH / 2, x2 = b.x, y2 = b.y + boxH / 2, mx = (x1 + x2) / 2;
    const p = document.createElementNS(SVG, "path");
    p.setAttribute("d", "M" + x1 + "," + y1 + " C" + mx + "," + y1 + " " + mx + "," + y2 + " " + x2 + "," + y2);
    p.setAttribute("class", e.pending ? "edge lag" : "edge");
    edges.appendChild(p);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", mx); label.setAttribute("y", (y1 + y2) / 2 - 3); label.setAttribute("class", "edge-label");
    label.textContent = rate(e.rate || 0) + "/s" + (e.pending ? " · " + e.pending + " pending" : "");
    edges.appendChild(label);
  }
  cols.forEach((col, ci) => col.forEach((n) => {
    const g = document.createElementNS(SVG, "g");
    const r = document.createElementNS(SVG, "rect");
    const at = pos[n.id];
    r.setAttribute("x", at.x); r.setAttribute("y", at.y); r.setAttribute("width", boxW); r.setAttribute("height", boxH);
    r.setAttribute("rx", 5);
    r.setAttribute("class", "node col" + ci + (n.deadLetters ? " failing" : ""));
    g.appendChild(r);
    const tx = document.createElementNS(SVG, "text");
    tx.setAttribute("x", at.x + 8); tx.setAttribute("y", at.y + 21);
    let text = ci === 2 ? n.namespace + "/" + n.app : n.name;
    if (ci === 2) text += "  lag " + n.pending + (n.deadLetters ? " · " + n.deadLetters + " dead" : "");
    else text += "  " + rate(n.rate || 0) + "/s";
    tx.textContent = text.length > 40 ? text.slice(0, 39) + "…" : text;
    const title = document.createElementNS(SVG, "title");
    title.textContent = text;
    g.append(tx, title);
    svg.appendChild(g);
  }));
  $("topology-box").replaceChildren(svg);
}

async function refreshTopology() {
  const res = await api("GET", "/topology");
  if (res.status !== 200) { denied(res, "topology-box"); return; }
  banner("");
  if (res.changed) drawTopology(res.body);
}

async function refreshWorkloads() {
  const res = await api("GET", "/namespaces/" + encodeURIComponent(state.ns) + "/workloads");
  if (res.status !== 200) { $("fleet").hidden = true; return; }
  $("fleet").hidden = false;
  if (!res.changed) return;
  const w = res.body;
  state.workloads = w;
  const rows = w.sidecars.map((p) => row([p.pod, p.app, el("span", "injected", "ok")]))
    .concat(w.missedInjections.map((p) => row([p.pod, "", el("span", "asked for it, runs without it: restart it", "bad")])));
  $("fleet-table").querySelector("tbody").replaceChildren(...rows);
}

async function refresh() {
  if (state.view === "catalog") await refreshCatalog();
  else if (state.view === "topology") await refreshTopology();
  else if (state.view === "triggers") { await refreshTriggers(); if (state.ns) await refreshWorkloads(); }
  else if (state.view === "streams") await refreshStreams();
}

// The form's pickers: the namespace's apps and Services, and the types in the catalog.
async function fillPickers() {
  const target = document.querySelector("input[name=target]:checked").value;
  const w = state.workloads || { apps: [], services: [] };
  const opts = target === "app" ? w.apps : w.services.map((s) => s.url);
  $("targets").replaceChildren(...opts.map((v) => { const o = document.createElement("option"); o.value = v; return o; }));
  if (!state.types) {
    const res = await api("GET", "/catalog");
    state.types = res.status === 200 ? (res.body.items || []).map((i) => i.type) : [];
  }
  const types = Array.from(new Set(state.types));
  $("known-types").replaceChildren(...types.map((v) => { const o = document.createElement("option"); o.value = v; return o; }));
}

async function loadDefaults() {
  const res = await api("GET", "/defaults");
  if (res.status !== 200) return;
  state.defaults = res.body;
  $("f-inflight").placeholder = res.body.maxInFlight;
  $("f-timeout").placeholder = res.body.timeout;
  $("f-attempts").placeholder = res.body.maxAttempts;
  $("f-backoff").placeholder = res.body.backoff;
}

function openForm(title) {
  $("form-title").textContent = title;
  $("trigger-form").hidden = false;
  $("deadletters").hidden = true;
  state.dl = null;
  loadDefaults();
  fillPickers();
}

function newTrigger() {
  state.editing = null;
  $("trigger-form").reset();
  $("f-name").disabled = false;
  $("sql-check").textContent = "";
  openForm("New trigger");
}

function editTrigger(s) {
  state.editing = s;
  const f = $("trigger-form");
  f.reset();
  $("f-name").value = s.metadata.name;
  $("f-name").disabled = true;
  const kind = s.spec.app ? "app" : "sink";
  f.querySelector("input[value=" + kind + "]").checked = true;
  $("f-target").value = s.spec.app || s.spec.sink || "";
  $("f-types").value = (s.spec.types || []).join(", ");
  $("f-source").value = s.spec.source || "";
  const sql = (s.spec.filters || []).find((x) => x && x.sql);
  $("f-sql").value = sql ? sql.sql : "";
  $("f-inflight").value = s.spec.maxInFlight || "";
  $("f-timeout").value = s.spec.timeout || "";
  $("f-attempts").value = (s.spec.retry || {}).maxAttempts || "";
  $("f-backoff").value = (s.spec.retry || {}).backoff || "";
  $("f-dlq").checked = s.spec.deadLetter !== false;
  checkSql();
  openForm("Edit " + s.metadata.name);
}

function specFromForm() {
  const spec = { types: $("f-types").value.split(",").map((t) => t.trim()).filter(Boolean) };
  const target = document.querySelector("input[name=target]:checked").value;
  spec[target] = $("f-target").value.trim();
  if ($("f-source").value.trim()) spec.source = $("f-source").value.trim();
  // Filters other than the SQL one (set with kubectl) are kept as they are.
  const kept = state.editing ? (state.editing.spec.filters || []).filter((x) => !(x && x.sql)) : [];
  if ($("f-sql").value.trim()) kept.push({ sql: $("f-sql").value.trim() });
  if (kept.length) spec.filters = kept;
  const n = (id) => { const v = $(id).value.trim(); return v === "" ? undefined : Number(v); };
  if (n("f-inflight") !== undefined) spec.maxInFlight = n("f-inflight");
  if ($("f-timeout").value.trim()) spec.timeout = $("f-timeout").value.trim();
  const retry = {};
  if (n("f-attempts") !== undefined) retry.maxAttempts = n("f-attempts");
  if ($("f-backoff").value.trim()) retry.backoff = $("f-backoff").value.trim();
  if (Object.keys(retry).length) spec.retry = retry;
  if (!$("f-dlq").checked) spec.deadLetter = false;
  return spec;
}

async function saveTrigger(ev) {
  ev.preventDefault();
  const ns = encodeURIComponent(state.ns);
  const spec = specFromForm();
  let res;
  if (state.editing) {
    const name = state.editing.metadata.name;
    res = await api("PUT", "/namespaces/" + ns + "/subscriptions/" + encodeURIComponent(name),
      { metadata: { name, resourceVersion: state.editing.metadata.resourceVersion }, spec });
  } else {
    res = await api("POST", "/namespaces/" + ns + "/subscriptions", { metadata: { name: $("f-name").value.trim() }, spec });
  }
  if (res.status !== 200 && res.status !== 201) { banner(errorOf(res)); return; }
  banner("");
  $("trigger-form").hidden = true;
  refresh();
}

async function deleteTrigger(name) {
  if (!window.confirm("Delete trigger " + name + "? Its consumer and the events waiting in it go with it.")) return;
  const res = await api("DELETE", "/namespaces/" + encodeURIComponent(state.ns) + "/subscriptions/" + encodeURIComponent(name));
  if (res.status !== 200) { banner(errorOf(res)); return; }
  refresh();
}

let sqlTimer = null;
async function checkSql() {
  const expr = $("f-sql").value;
  const out = $("sql-check");
  if (!expr.trim()) { out.textContent = ""; return; }
  const res = await api("POST", "/cesql", { expression: expr });
  if (res.status !== 200) { out.textContent = errorOf(res); out.className = "bad"; return; }
  if (res.body.valid) { out.textContent = "valid CESQL"; out.className = "ok"; }
  else { out.textContent = "column " + res.body.column + ": " + res.body.message; out.className = "bad"; }
}

function dlPath() {
  return "/namespaces/" + encodeURIComponent(state.ns) + "/subscriptions/" + encodeURIComponent(state.dl) + "/deadletters";
}

function openDeadLetters(name) {
  state.dl = name;
  $("trigger-form").hidden = true;
  $("deadletters").hidden = false;
  $("dl-title").textContent = "Dead letters of " + name;
  $("dl-detail").hidden = true;
  refreshDeadLetters();
}

async function refreshDeadLetters() {
  const res = await api("GET", dlPath());
  if (res.status !== 200) { denied(res, "dl-table"); return; }
  if (!res.changed) return;
  const items = res.body.items || [];
  $("dl-table").querySelector("tbody").replaceChildren(...items.map((d) => {
    const actions = el("span");
    actions.append(button("Inspect", () => inspect(d.seq)), button("Replay", () => replay({ seqs: [d.seq] })));
    return row([d.seq, when(d.time), d.type, d.id, d.status, d.attempts, d.reason, actions]);
  }));
  const more = $("dl-more");
  more.hidden = res.body.complete;
  more.textContent = res.body.complete ? "" : "Only the newest " + res.body.scanned + " dead letters of the stream were read; `herald deadletter list` reads them all.";
  $("replay-all").disabled = items.length === 0;
}

async function inspect(seq) {
  const res = await api("GET", dlPath() + "/" + seq);
  if (res.status !== 200) { banner(errorOf(res)); return; }
  const d = res.body;
  const lines = d.headers.map((h) => h[0] + ": " + h[1]);
  lines.push("", d.data.text !== undefined ? d.data.text : "(base64) " + d.data.base64);
  if (d.truncated) lines.push("", "(cut at the console's limit; " + d.dataBytes + " bytes in all)");
  const pre = $("dl-detail");
  pre.textContent = lines.join("\n");
  pre.hidden = false;
}

async function replay(which) {
  const res = await api("POST", dlPath() + "/replay", which);
  if (res.status !== 200) { banner(errorOf(res)); return; }
  const failed = res.body.failed || [];
  banner(failed.length ? failed.length + " could not be replayed: " + failed.map((f) => f.seq + " " + f.error).join("; ") : "");
  $("dl-detail").hidden = true;
  refreshDeadLetters();
}

async function start() {
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const res = await api("POST", "/session", { token: $("token").value.trim() });
    $("token").value = "";
    if (res.status !== 200) { banner(errorOf(res)); return; }
    banner("");
    signedIn(res.body);
  });
  // Signing out reloads the page: nothing the last user saw stays in memory or on screen.
  $("signout").addEventListener("click", async () => { await api("DELETE", "/session"); location.reload(); });
  for (const a of document.querySelectorAll("nav a")) a.addEventListener("click", () => show(a.dataset.view));
  $("namespace").addEventListener("change", (e) => { state.ns = e.target.value; state.dl = null; $("deadletters").hidden = true; refresh(); });
  $("new-trigger").addEventListener("click", newTrigger);
  $("cancel").addEventListener("click", () => { $("trigger-form").hidden = true; });
  $("trigger-form").addEventListener("submit", saveTrigger);
  $("f-sql").addEventListener("input", () => { clearTimeout(sqlTimer); sqlTimer = setTimeout(checkSql, 250); });
  $("replay-all").addEventListener("click", () => replay({ all: true }));
  for (const r of document.querySelectorAll("input[name=target]")) r.addEventListener("change", fillPickers);
  let searchTimer = null;
  $("catalog-q").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(refreshCatalog, 200); });
  $("dl-close").addEventListener("click", () => { state.dl = null; $("deadletters").hidden = true; });
  const res = await api("GET", "/session");
  if (res.status === 200 && res.body.csrf) signedIn(res.body); else showSignIn();
  // Live: every view polls its data; unchanged data answers 304.
  setInterval(() => { if (state.csrf && !document.hidden) refresh(); }, 3000);
}

document.addEventListener("DOMContentLoaded", start);
