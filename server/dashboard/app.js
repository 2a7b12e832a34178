// The operator dashboard: polls the JSON API about once a second and redraws the selected session.
// Reads send a read token (viewer or operator; from ?access_token= or asked once, kept in localStorage);
// the buttons send the operator token, asked for once and kept in sessionStorage.
"use strict";

const POLL_MS = 1000;
const LIST_EVERY = 5;          // refresh the session list every 5th poll
const TOKEN_KEY = "snslab-operator-token";
const READ_KEY = "snslab-read-token";

function readToken() {
  const fromUrl = new URLSearchParams(location.search).get("access_token");
  if (fromUrl) localStorage.setItem(READ_KEY, fromUrl);
  let t = localStorage.getItem(READ_KEY);
  if (!t) {
    t = (prompt("Read token (SNSLAB_VIEWER_TOKEN or the operator token):") || "").trim();
    if (t) localStorage.setItem(READ_KEY, t);
  }
  return t || "";
}

// GET URLs (images, EventSource) carry the read token as a query parameter
const withToken = url => url + (url.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(readToken());
const FINISHED = ["completed", "aborted", "failed"];

const state = {
  selected: new URLSearchParams(location.search).get("session"),
  sessions: [],
  detail: null,
  generationsKey: null,        // what the plots were last drawn for
  imagesKey: null,
  lastEventId: 0,
  events: 0,
  tick: 0,
  service: true,
};

const $ = id => document.getElementById(id);

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

async function api(path, options) {
  const opts = Object.assign({}, options);
  if (!opts.method || opts.method === "GET") opts.headers = Object.assign({ Authorization: `Bearer ${readToken()}` }, opts.headers);
  const r = await fetch("/api" + path, opts);
  if (r.status === 401 && (!options || !options.method)) localStorage.removeItem(READ_KEY);  // ask again next time
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (!r.ok) {
    const err = new Error(body && body.detail ? body.detail : `${r.status} ${r.statusText}`);
    err.status = r.status;
    throw err;
  }
  return body;
}

function notice(msg, kind) {
  const n = $("notice");
  n.hidden = !msg;
  n.textContent = msg || "";
  n.className = "notice " + (kind || "error");
}

function shortId(id) { return id.slice(0, 8); }
function time(iso) { return iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : ""; }
function dateTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
}
function num(v, digits) { return v === null || v === undefined ? "–" : (+v).toFixed(digits ?? 2).replace(/\.?0+$/, "") || "0"; }

// --- session list -----------------------------------------------------------------------------------

function renderList() {
  const ul = $("sessions");
  ul.replaceChildren(...state.sessions.map(s => {
    const li = h("li", { class: "session-item" + (s.id === state.selected ? " selected" : ""), "data-id": s.id,
                         onclick: () => select(s.id) },
      h("div", { class: "row" },
        h("span", { class: "probe" }, s.probe || "session"),
        h("span", { class: `badge small ${s.status}` }, s.status)),
      h("div", { class: "row muted" },
        h("span", {}, `${s.subject_id} · ${s.rig}`),
        h("span", {}, `g ${s.generations_done}/${s.generations_budget ?? "?"}`)),
      h("div", { class: "row muted" },
        h("code", {}, shortId(s.id)),
        h("span", {}, dateTime(s.created_at))));
    return li;
  }));
  $("session-count").textContent = `(${state.sessions.length})`;
}

async function refreshList() {
  state.sessions = await api("/sessions?limit=200");
  if (!state.selected && state.sessions.length) select(state.sessions[0].id, true);
  renderList();
}

function select(id, replace) {
  if (id !== state.selected) {
    state.selected = id;
    state.detail = null;
    state.generationsKey = state.imagesKey = null;
    state.lastEventId = 0;
    state.events = 0;
    $("events").replaceChildren();
    notice("");
  }
  const url = new URL(location.href);
  url.searchParams.set("session", id);
  history[replace ? "replaceState" : "pushState"](null, "", url);
  renderList();
  poll();
}

// --- the selected session ---------------------------------------------------------------------------

function renderDetail(d) {
  $("session").hidden = false;
  $("empty").hidden = true;
  const stageText = d.stages.length ? ` · stretch/squeeze ${d.stages.join(", ")}` : "";
  const probe = d.probe ? d.probe[0].toUpperCase() + d.probe.slice(1) + " probe" : "Session";
  $("title").textContent = `${probe} · ${d.subject_id}`;
  const badge = $("status");
  badge.textContent = d.status;
  badge.className = `badge ${d.status}`;
  $("meta").replaceChildren(
    h("code", { title: d.id }, d.id), ` · operator ${d.operator} · rig ${d.rig} · ${d.mode} · seed ${d.seed} · `,
    `${d.n_units} unit${d.n_units === 1 ? "" : "s"}${stageText} · created ${dateTime(d.created_at)}`);

  const budget = d.generations_budget || Math.max(d.generations_started, 1);
  const pct = Math.min(100, 100 * d.generations_done / budget);
  const bar = $("progress");
  bar.dataset.done = d.generations_done;
  bar.dataset.budget = budget;
  $("progress-bar").style.width = pct.toFixed(1) + "%";
  $("progress-bar").className = `progress-bar ${d.status}`;
  const inFlight = d.generations_started > d.generations_done && !FINISHED.includes(d.status)
    ? ` · generation ${d.generations_started - 1} in flight` : "";
  $("progress-text").textContent = `generation ${d.generations_done} / ${budget}${inFlight}`;

  const live = d.live;
  const clients = live.clients.length
    ? live.clients.map(c => `${c.role} ${c.client_id}${c.alive ? "" : " (lost)"}`).join(", ") : "none";
  const stats = [
    ["presentations", `${d.presentations_answered} / ${d.presentations} answered`],
    ["invalid", d.presentations_invalid],
    ["best fitness", num(d.best_fitness)],
    ["live loop", live.running_here ? (live.paused ? "paused here" : "running here") : "not on this server"],
    ["clients", clients],
  ];
  if (live.boundary_ms !== null && live.boundary_ms !== undefined) {
    stats.push(["server time per boundary", `${live.boundary_ms.toFixed(0)} ms (median)`]);
  }
  if (live.last_error) stats.push(["last error", live.last_error]);
  $("stats").replaceChildren(...stats.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));

  const can = {
    start: state.service && !FINISHED.includes(d.status) && !live.running_here,
    pause: state.service && live.running_here && d.status === "running",
    resume: state.service && live.running_here && d.status === "paused",
    stop: state.service && !FINISHED.includes(d.status),
  };
  for (const b of document.querySelectorAll("#controls button")) {
    b.disabled = !can[b.dataset.verb];
    b.title = state.service ? "" : "this server is read-only";
  }
}

function renderGenerations(d, gens) {
  $("plots").hidden = false;
  $("response-unit").textContent = d.units.length ? `(spike counts, ${d.units[0].label || "unit 0"})` : "";
  const done = gens.filter(g => g.answered > 0 && g.status !== "planned");  // planned: a lead-in only
  const xs = done.map(g => g.index);
  const budget = d.generations_budget || (xs.length ? xs[xs.length - 1] + 1 : 1);
  const series = [
    { name: "best", cls: "best", values: done.map(g => g.best_response) },
    { name: "mean", cls: "mean", values: done.map(g => g.mean_response) },
  ];
  if (done.some(g => g.mean_reference_response !== null)) {
    series.push({ name: "reference", cls: "ref", dashed: true, values: done.map(g => g.mean_reference_response) });
  }
  Plot.lines($("response-plot"), xs, series, {
    xlabel: "generation", ylabel: "spike count in window", xrange: [0, Math.max(1, budget - 1, xs[xs.length - 1] || 0)],
    empty: "no answered generation yet",
  });
}

function renderFront(d, front) {
  const svg = $("front-plot");
  if (d.probe === "maximize") {
    $("front-caption").textContent = "";
    Plot.message(svg, "maximize probe: one objective, no front");
    return;
  }
  const stage = front.stages[0];
  $("front-caption").textContent = stage ? `(${stage} distance vs unit distance)` : "";
  const gens = front.members.map(m => m.generation);
  const last = gens.length ? Math.max(...gens) : 0;
  const pts = front.members.filter(m => stage in m.distances && "unit" in m.distances).map(m => ({
    x: m.distances[stage], y: m.distances.unit, c: m.generation, highlight: m.generation === last,
    label: `generation ${m.generation}, presentation ${m.presentation_id}: ${stage} ${num(m.distances[stage], 3)}, ` +
           `unit ${num(m.distances.unit, 3)}${m.selected ? " (selected)" : ""}`,
  }));
  Plot.scatter(svg, pts, {
    xlabel: `stretch: distance in stage '${stage}'`, ylabel: "unit distance |r − r_ref| (Hz)",
    crange: [0, Math.max(1, last)], clabel: "generation", empty: "no completed generation yet",
  });
}

function renderImages(g, images, presentations) {
  $("images-card").hidden = false;
  const byId = new Map(presentations.map(p => [p.id, p]));
  const candidates = images.filter(i => i.kind === "candidate").length;
  $("images-title").textContent = `Generation ${g}: ${images.length} images (${candidates} candidates, ` +
    `${images.length - candidates} other)`;
  $("images").replaceChildren(...images.map(im => {
    const p = byId.get(im.presentation_id);
    const counts = p && p.counts ? p.counts[0] : null;
    const invalid = p && p.valid === false;
    const why = invalid ? ` — invalid: ${p.qc_reasons.join(", ")}` : "";
    const name = im.kind === "candidate" ? `#${im.order_in_batch}` : im.kind === "reference" ? "ref" : im.kind;
    return h("figure", { class: `tile ${im.kind}${invalid ? " invalid" : ""}`,
                         title: `presentation ${im.presentation_id}, ${im.kind} at position ${im.order_in_batch}${why}` },
      h("img", { src: withToken(im.url), alt: `${im.kind} ${im.order_in_batch}`, loading: "eager", "data-presentation": im.presentation_id }),
      h("figcaption", {}, h("span", {}, invalid ? `${name} ✕` : name),
        h("span", { class: "count" }, counts === null ? "…" : `${counts} sp`)));
  }));
}

function renderEvents(events) {
  const body = $("events");
  for (const e of events) {
    body.prepend(h("tr", { class: e.level },
      h("td", {}, time(e.at)), h("td", {}, h("span", { class: `level ${e.level}` }, e.level)),
      h("td", {}, e.kind), h("td", {}, e.message)));
    state.lastEventId = Math.max(state.lastEventId, e.id);
  }
  state.events += events.length;
  while (body.children.length > 500) body.lastChild.remove();
  $("events-card").hidden = false;
  $("event-count").textContent = `(${state.events})`;
  if (!state.events && !body.children.length) {
    body.append(h("tr", { class: "none" }, h("td", { colspan: 4 }, "no events recorded")));
  } else if (events.length) {
    body.querySelectorAll("tr.none").forEach(r => r.remove());
  }
}

async function refreshSession() {
  const id = state.selected;
  if (!id) { $("empty").hidden = false; return; }
  const d = await api(`/sessions/${id}`);
  if (id !== state.selected) return;
  state.detail = d;
  renderDetail(d);

  const key = `${d.generations_started}:${d.generations_done}:${d.presentations_answered}`;
  if (key !== state.generationsKey) {
    const [gens, front] = await Promise.all([api(`/sessions/${id}/generations`), api(`/sessions/${id}/front`)]);
    if (id !== state.selected) return;
    renderGenerations(d, gens);
    renderFront(d, front);
    state.generationsKey = key;
  }
  const g = d.generations_started - 1;
  if (g >= 0 && key !== state.imagesKey) {
    const [images, pres] = await Promise.all([
      api(`/sessions/${id}/generations/${g}/images`), api(`/sessions/${id}/presentations?generation=${g}`)]);
    if (id !== state.selected) return;
    renderImages(g, images, pres.presentations);
    state.imagesKey = key;
  }
  const events = await api(`/sessions/${id}/events?after_id=${state.lastEventId}`);
  if (id === state.selected) renderEvents(events);
}

let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    if (state.tick % LIST_EVERY === 0) await refreshList();
    await refreshSession();
    $("connection").textContent = `live · ${new Date().toLocaleTimeString([], { hour12: false })}`;
    $("connection").className = "connection ok";
  } catch (err) {
    $("connection").textContent = "no connection";
    $("connection").className = "connection lost";
    if (err.status === 404 && state.selected) notice(err.message);
  } finally {
    state.tick += 1;
    polling = false;
  }
}

// --- operator verbs -------------------------------------------------------------------------------

function showTokenState() {
  const has = !!sessionStorage.getItem(TOKEN_KEY);
  $("token-state").textContent = has ? "operator token set" : "";
  $("forget-token").hidden = !has;
}

async function act(verb) {
  const id = state.selected;
  let token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    token = (prompt("Operator token (printed by the server at start, or SNSLAB_OPERATOR_TOKEN):") || "").trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    showTokenState();
  }
  try {
    const d = await api(`/sessions/${id}/${verb}`, { method: "POST", headers: { Authorization: `Bearer ${token}` } });
    notice(`${verb}: session is ${d.status}`, "ok");
    state.detail = d;
    renderDetail(d);
    state.tick = 0;   // refresh the list at once
    poll();
  } catch (err) {
    if (err.status === 401) { sessionStorage.removeItem(TOKEN_KEY); showTokenState(); }
    notice(`${verb}: ${err.message}`);
  }
}

async function init() {
  for (const b of document.querySelectorAll("#controls button")) b.addEventListener("click", () => act(b.dataset.verb));
  $("forget-token").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showTokenState(); });
  window.addEventListener("popstate", () => {
    const id = new URLSearchParams(location.search).get("session");
    if (id) select(id, true);
  });
  showTokenState();
  try { state.service = (await api("/health")).service; } catch (_) { /* the poll reports it */ }
  await poll();
  setInterval(poll, POLL_MS);
}

init();
