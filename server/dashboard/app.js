// The operator dashboard. The server pushes the whole view of the selected session as server-sent events
// (one shared producer per session on the server); the page redraws on each update and catches up after a
// reconnect through Last-Event-ID. A token, asked for once and kept in localStorage, goes with every request
// (Authorization: Bearer) and on the stream's URL (access_token): an operator token acts, any other only reads.
"use strict";

const TOKEN_KEY = "snslab-token";
const NAME_KEY = "snslab-operator-name";
const FINISHED = ["completed", "aborted", "failed"];

const state = {
  selected: new URLSearchParams(location.search).get("session"),
  sessions: [],
  view: null,            // the latest pushed view of the selected session
  asOf: null,            // null: live; else the generation scrubbed to
  tilesAsOf: null,       // {generation, tiles} fetched for asOf
  events: 0,
  lastEventId: 0,
  source: null,          // the EventSource
  role: "anonymous",
  service: true,
  neuronUnit: 0,
};

const $ = id => document.getElementById(id);
// a link may carry the token (?access_token=...): kept like one typed in
const urlToken = new URLSearchParams(location.search).get("access_token");
if (urlToken) localStorage.setItem(TOKEN_KEY, urlToken);
const token = () => localStorage.getItem(TOKEN_KEY) || "";
// Links and images cannot send a header: where a token is set it rides along as ?access_token= (GET only).
const withToken = url => token() ? url + (url.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(token()) : url;

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = Object.assign({}, opts.headers || {});
  if (token()) opts.headers.Authorization = `Bearer ${token()}`;
  const r = await fetch("/api" + path, opts);
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
function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  const m = Math.floor(s / 60), hh = Math.floor(m / 60);
  return hh ? `${hh} h ${m % 60} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

// --- who am I ---------------------------------------------------------------------------------------

async function refreshRole() {
  try {
    const me = await api("/whoami");
    state.role = me.role;
    state.service = me.service;
  } catch (err) {
    state.role = err.status === 401 ? "unknown-token" : "anonymous";
  }
  const r = $("role");
  const text = { operator: "operator", viewer: "viewer (read-only)", anonymous: "viewer (read-only)",
                 "unknown-token": "viewer (token not accepted for actions)" }[state.role] || state.role;
  r.textContent = text;
  r.className = "role " + (state.role === "operator" ? "operator" : "viewer");
  $("forget-token").hidden = !token();
  $("set-token").textContent = token() ? "change token" : "set token";
  if (state.view) renderControls(state.view.detail);
  $("new-session").disabled = state.role !== "operator" || !state.service;
  $("new-session").title = state.role === "operator" ? "" : "set the operator token to create sessions";
}

function askToken() {
  const t = (prompt("Token (the operator token printed by the server at start, or a viewer token):") || "").trim();
  if (!t) return false;
  localStorage.setItem(TOKEN_KEY, t);
  refreshRole();
  if (state.selected) openStream(state.selected);  // the stream's URL carries the token
  return true;
}

// --- session list -----------------------------------------------------------------------------------

function renderList() {
  const ul = $("sessions");
  ul.replaceChildren(...state.sessions.map(s => h("li", {
      class: "session-item" + (s.id === state.selected ? " selected" : ""), "data-id": s.id, onclick: () => select(s.id) },
    h("div", { class: "row" },
      h("span", { class: "probe" }, s.probe || "session"),
      h("span", { class: `badge small ${s.status}` }, s.status)),
    h("div", { class: "row muted" },
      h("span", {}, `${s.subject_id} · ${s.rig}`),
      h("span", {}, `g ${s.generations_done}/${s.generations_budget ?? "?"}`)),
    h("div", { class: "row muted" },
      h("code", {}, shortId(s.id)),
      h("span", {}, dateTime(s.created_at))))));
  $("session-count").textContent = `(${state.sessions.length})`;
}

function select(id, replace) {
  if (id !== state.selected || !state.source) {
    state.selected = id;
    state.view = null;
    state.asOf = null;
    state.tilesAsOf = null;
    state.lastEventId = 0;
    state.events = 0;
    state.neuronUnit = 0;
    $("events").replaceChildren();
    notice("");
    openStream(id);
  }
  $("create-card").hidden = true;
  const url = new URL(location.href);
  url.searchParams.set("session", id);
  history[replace ? "replaceState" : "pushState"](null, "", url);
  renderList();
}

// --- the stream ---------------------------------------------------------------------------------------

function openStream(id) {
  if (state.source) state.source.close();
  const q = new URLSearchParams();
  if (token()) q.set("access_token", token());
  if (state.lastEventId) q.set("since", state.lastEventId);
  const src = new EventSource(`/api/sessions/${id}/stream${q.toString() ? "?" + q : ""}`);
  state.source = src;
  src.addEventListener("update", ev => {
    if (src !== state.source) return;
    onView(JSON.parse(ev.data));
    const c = $("connection");
    c.textContent = `live · ${new Date().toLocaleTimeString([], { hour12: false })}`;
    c.className = "connection ok";
  });
  src.addEventListener("problem", ev => notice(`server: ${JSON.parse(ev.data).detail}`));
  src.onerror = async () => {
    if (src !== state.source) return;
    $("connection").textContent = "reconnecting…";
    $("connection").className = "connection lost";
    if (src.readyState === EventSource.CLOSED) {  // refused (404, 401): say why, then try again later
      try { await api(`/sessions/${id}`); } catch (err) { notice(err.message); }
      setTimeout(() => { if (state.source === src) openStream(id); }, 3000);
    }
  };
}

function onView(v) {
  if (v.session_id !== state.selected) return;
  const first = !state.view;
  // an update carries only the parts that changed ("partial"); the first one after (re)connecting is whole
  state.view = v.partial && state.view ? Object.assign({}, state.view, v) : v;
  v = state.view;
  state.sessions = v.sessions;
  renderList();
  renderEvents(v.events || []);
  if (first) $("empty").hidden = true;
  render();
}

// Redraw a part only when what it shows changed: ten open pages on a small machine must not redraw every
// plot on every update.
const drawn = {};
function changed(part, key) {
  if (drawn[part] === key) return false;
  drawn[part] = key;
  return true;
}

function render() {
  const v = state.view;
  if (!v) return;
  const d = v.detail;
  renderDetail(d);
  renderScrub(d);
  const cut = state.asOf ?? Infinity;
  const at = `${state.selected}|${state.asOf}|${token()}|`;
  const gens = v.generations.filter(g => g.index <= cut);
  if (changed("generations", at + JSON.stringify(gens.slice(-1)) + gens.length + (d.generations_budget || 0))) {
    renderGenerations(d, gens);
  }
  const members = v.front.members;
  if (changed("front", at + members.length + ":" + (members.length ? members[members.length - 1].presentation_id : ""))) {
    renderFront(d, v.front, cut);
  }
  const u = v.neuron.units[state.neuronUnit] || {};
  if (changed("neuron", at + state.neuronUnit + JSON.stringify([v.neuron.warning, v.neuron.status,
      (u.references || []).length, (u.baseline_hz || []).slice(-1)]))) {
    renderNeuron(v.neuron, cut);
  }
  renderRig(v.rig, d);
  if (state.asOf === null) {
    if (changed("images", at + v.images.generation + JSON.stringify(v.images.tiles.map(t => [t.counts, t.valid])))) {
      renderImages(v.images.generation, v.images.tiles);
    }
  } else if (state.tilesAsOf && state.tilesAsOf.generation === state.asOf) {
    if (changed("images", at + state.asOf)) renderImages(state.asOf, state.tilesAsOf.tiles);
  }
  if (changed("exports", at + JSON.stringify(v.exports))) renderExports(v.exports);
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
  const stats = [
    ["presentations", `${d.presentations_answered} / ${d.presentations} answered`],
    ["invalid", d.presentations_invalid],
    ["best fitness", num(d.best_fitness)],
    ["live loop", live.running_here ? (live.paused ? "paused here" : "running here") : "not on this server"],
  ];
  if (live.boundary_ms !== null && live.boundary_ms !== undefined) {
    stats.push(["server time per boundary", `${live.boundary_ms.toFixed(0)} ms (median)`]);
  }
  if (live.last_error) stats.push(["last error", live.last_error]);
  $("stats").replaceChildren(...stats.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
  renderControls(d);
}

function renderControls(d) {
  const live = d.live;
  const operator = state.role === "operator" && state.service;
  const can = {
    start: !FINISHED.includes(d.status) && !live.running_here,
    pause: live.running_here && d.status === "running",
    resume: live.running_here && d.status === "paused",
    stop: !FINISHED.includes(d.status),
  };
  for (const b of document.querySelectorAll("#controls button")) {
    b.disabled = !operator || !can[b.dataset.verb];
    b.title = !state.service ? "this server is read-only"
      : state.role !== "operator" ? "viewers cannot act: set the operator token (top right)" : "";
  }
  $("controls").dataset.role = operator ? "operator" : "viewer";
}

function renderScrub(d) {
  const r = $("scrub-range");
  const last = Math.max(0, d.generations_started - 1);
  r.max = last;
  r.disabled = d.generations_started === 0;
  if (state.asOf === null) r.value = last;
  $("scrub-text").textContent = state.asOf === null ? `${last} (live, newest)` : `${state.asOf} of ${last}`;
  $("scrub-live").classList.toggle("on", state.asOf === null);
  $("scrub").dataset.asOf = state.asOf === null ? "live" : state.asOf;
}

async function scrubTo(g) {
  const d = state.view && state.view.detail;
  if (!d) return;
  const last = d.generations_started - 1;
  state.asOf = g === null || g >= last ? null : g;  // the newest generation is the live view
  if (state.asOf !== null && (!state.tilesAsOf || state.tilesAsOf.generation !== state.asOf)) {
    const want = state.asOf;
    const tiles = await api(`/sessions/${d.id}/generations/${want}/tiles`);
    if (state.asOf !== want) return;
    state.tilesAsOf = { generation: want, tiles };
  }
  render();
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

function renderFront(d, front, cut) {
  const svg = $("front-plot");
  if (d.probe === "maximize") {
    $("front-caption").textContent = "";
    Plot.message(svg, "maximize probe: one objective, no front");
    return;
  }
  const stage = front.stages[0];
  $("front-caption").textContent = stage ? `(${stage} distance vs unit distance)` : "";
  const members = front.members.filter(m => m.generation <= cut);
  const gens = members.map(m => m.generation);
  const last = gens.length ? Math.max(...gens) : 0;
  const pts = members.filter(m => stage in m.distances && "unit" in m.distances).map(m => ({
    x: m.distances[stage], y: m.distances.unit, c: m.generation, highlight: m.generation === last,
    label: `generation ${m.generation}, presentation ${m.presentation_id}: ${stage} ${num(m.distances[stage], 3)}, ` +
           `unit ${num(m.distances.unit, 3)}${m.selected ? " (selected)" : ""}`,
  }));
  Plot.scatter(svg, pts, {
    xlabel: `stretch: distance in stage '${stage}'`, ylabel: "unit distance |r − r_ref| (Hz)",
    crange: [0, Math.max(1, last)], clabel: "generation", empty: "no completed generation yet",
  });
}

function renderNeuron(n, cut) {
  const sel = $("neuron-unit");
  if (sel.options.length !== n.units.length) {
    sel.replaceChildren(...n.units.map(u => h("option", { value: u.position }, `unit ${u.label}`)));
  }
  sel.value = String(state.neuronUnit);
  const u = n.units[state.neuronUnit] || n.units[0];
  const t = n.thresholds;
  $("neuron-caption").textContent = `(reference response per repeat; running mean of ${t.window})`;
  const live = state.asOf === null;
  // the warning: any unit, live view only (the past is shown as it was, without alarms)
  const warn = $("neuron-warning");
  warn.hidden = !(live && n.warning);
  warn.textContent = n.warning ? `⚠ Is the neuron lost? ${n.warning}. Check the unit's isolation before going on.` : "";
  warn.dataset.status = n.status;
  if (!u) { Plot.message($("neuron-plot"), "no units"); return; }
  const refs = u.references.filter(r => r.generation <= cut);
  const st = live ? u.status : "as of generation " + cut;
  const badge = $("neuron-status");
  badge.textContent = st;
  badge.className = "badge small neuron-" + (live ? u.status : "past");
  const base = u.baseline_hz.filter(b => b.generation <= cut);
  $("neuron-baseline").textContent = base.length
    ? `baseline ${num(base[base.length - 1].rate_hz, 1)} Hz now, ${num(base[0].rate_hz, 1)} Hz at the start` : "no baseline counts";
  const start = u.initial ? u.initial.mean : null;
  Plot.health($("neuron-plot"), refs.map((r, i) => ({
    x: i + 1, y: r.response, mean: r.mean, low: r.low, high: r.high, generation: r.generation,
    label: `repeat ${i + 1} (generation ${r.generation}): ${r.response} spikes; running mean ${num(r.mean)} ` +
           `[${num(r.low)}, ${num(r.high)}]`,
  })), {
    xlabel: "reference repeat", ylabel: "spike count in window", start,
    floor: start === null ? null : start * (1 - t.collapse),
    empty: state.view.detail.probe === "maximize" ? "a maximize probe shows no reference: watch the baseline rate"
                                                   : "no reference response yet",
  });
}

function renderRig(r, d) {
  const display = r.clients.find(c => c.role === "display");
  const bridge = r.clients.find(c => c.role === "bridge");
  const seen = c => c ? (c.alive ? "connected" : "lost") + (c.last_seen_s !== null && c.last_seen_s !== undefined
    ? ` · heard ${num(c.last_seen_s, 1)} s ago` : "") : "not connected";
  const refresh = display && display.refresh_hz ? `${num(display.refresh_hz, 2)} Hz` +
    (display.refresh_measured === false ? " (assumed)" : display.refresh_measured ? " (measured)" : "") +
    (display.software_paced === true ? " · paced in software (no vsync)" : display.software_paced === false ? " · vsync" : "")
    : (r.live.display_refresh_hz ? `${num(r.live.display_refresh_hz, 2)} Hz (reported)` : "–");
  const reasons = Object.entries(r.invalid_by_reason || {});
  const rows = [
    ["display", seen(display), display && display.alive ? "ok" : "bad"],
    ["bridge", seen(bridge), bridge && bridge.alive ? "ok" : "bad"],
    ["refresh rate", refresh],
    ["dropped frames", `${r.dropped_frames} in ${r.presentations_with_dropped_frames} of ${r.presentations_shown} presentations`],
    ["invalid presentations", reasons.length ? reasons.map(([k, v]) => `${v} × ${k}`).join("; ") : "none"],
    ["bridge latency", r.live.bridge_latency_ms !== undefined && r.live.bridge_latency_ms !== null
      ? `${num(r.live.bridge_latency_ms, 0)} ms median, ${num(r.live.bridge_latency_p95_ms, 0)} ms p95` : "–"],
    ["clock offset (rig − display)", r.clock_offset_s !== null ? `${num(r.clock_offset_s, 4)} s (median of ${r.clock_offset_n})`
      : (bridge && bridge.clock_offset_s !== null && bridge.clock_offset_s !== undefined ? `${num(bridge.clock_offset_s, 4)} s` : "–")],
    ["presentations per minute", r.presentations_per_minute !== null ? num(r.presentations_per_minute, 1) : "–"],
    ["time to the end", FINISHED.includes(d.status) ? d.status : r.eta_s !== null
      ? `about ${duration(r.eta_s)} (${r.generations_left} generations left)` : "–"],
  ];
  if (!d.live.running_here) $("rig-caption").textContent = "(clients of this server; numbers from the stored presentations)";
  else $("rig-caption").textContent = "";
  $("rig").replaceChildren(...rows.flatMap(([k, v, cls]) => [h("dt", {}, k), h("dd", { class: cls || "" }, v)]));
}

function renderImages(g, tiles) {
  $("images-card").hidden = false;
  const candidates = tiles.filter(i => i.kind === "candidate").length;
  $("images-title").textContent = g < 0 ? "No generation yet" : `Generation ${g}: ${tiles.length} images ` +
    `(${candidates} candidates, ${tiles.length - candidates} other)`;
  $("images").replaceChildren(...tiles.map(t => {
    const counts = t.counts ? t.counts[0] : null;
    const invalid = t.valid === false;
    const why = invalid ? ` — invalid: ${t.qc_reasons.join(", ")}` : "";
    const name = t.kind === "candidate" ? `#${t.order_in_batch}` : t.kind === "reference" ? "ref" : t.kind;
    return h("figure", { class: `tile ${t.kind}${invalid ? " invalid" : ""}`,
                         title: `presentation ${t.presentation_id}, ${t.kind} at position ${t.order_in_batch}${why}` },
      h("img", { src: t.src || withToken(t.url), alt: `${t.kind} ${t.order_in_batch}`, loading: "eager", "data-presentation": t.presentation_id }),
      h("figcaption", {}, h("span", {}, invalid ? `${name} ✕` : name),
        h("span", { class: "count" }, counts === null ? "…" : `${counts} sp`)));
  }));
}

function renderExports(x) {
  const g = state.asOf === null ? "" : `?generation=${state.asOf}`;
  const links = [
    h("a", { href: withToken(x.front_zip + g), download: "", id: "export-front" }, "front images (zip + CSV)"),
    h("a", { href: withToken(x.presentations_csv), download: "", id: "export-presentations" }, "every presentation (CSV)"),
  ];
  links.push(x.nwb ? h("a", { href: withToken(x.nwb), id: "export-nwb" }, "NWB")
                   : h("span", { class: "muted", title: "no NWB export on this server" }, "NWB: "
                       , h("code", {}, x.nwb_command)));
  $("exports").replaceChildren(...links);
}

function renderEvents(events) {
  const body = $("events");
  for (const e of events) {
    if (e.id <= state.lastEventId) continue;  // a reconnect may repeat what was shown
    body.prepend(h("tr", { class: e.level, "data-id": e.id },
      h("td", {}, time(e.at)), h("td", {}, h("span", { class: `level ${e.level}` }, e.level)),
      h("td", {}, e.kind), h("td", {}, e.message)));
    state.lastEventId = e.id;
    state.events += 1;
  }
  while (body.children.length > 500) body.lastChild.remove();
  $("events-card").hidden = false;
  $("event-count").textContent = `(${state.events})`;
  if (!state.events && !body.children.length) {
    body.append(h("tr", { class: "none" }, h("td", { colspan: 4 }, "no events recorded")));
  } else if (state.events) {
    body.querySelectorAll("tr.none").forEach(r => r.remove());
  }
}

// --- operator verbs -------------------------------------------------------------------------------

function actionHeaders(extra) {
  const name = localStorage.getItem(NAME_KEY);
  return Object.assign({ "X-Operator": `${name || "operator"} (dashboard)` }, extra || {});
}

async function act(verb) {
  const d = state.view && state.view.detail;
  if (!d) return;
  if (state.role !== "operator") { notice("viewers cannot act: set the operator token (top right)"); return; }
  const what = { start: "Start", pause: "Pause", resume: "Resume", stop: "Stop for good" }[verb];
  if (!confirm(`${what} session ${shortId(d.id)} (${d.probe || "session"} · ${d.subject_id})?`)) return;
  try {
    const r = await api(`/sessions/${d.id}/${verb}`, { method: "POST", headers: actionHeaders() });
    notice(`${verb}: session is ${r.status}`, "ok");
    state.view.detail = r;
    renderDetail(r);
  } catch (err) {
    if (err.status === 401) refreshRole();
    notice(`${verb}: ${err.message}`);
  }
}

// --- creating a session ---------------------------------------------------------------------------

function openCreate() {
  const f = $("create-form");
  const maxi = state.sessions.filter(s => s.probe === "maximize" && s.generations_done > 0);
  f.ref_session.replaceChildren(...maxi.map(s => h("option", { value: s.id },
    `${shortId(s.id)} · ${s.subject_id} · ${s.status} · g ${s.generations_done}`)));
  if (!f.operator.value) f.operator.value = localStorage.getItem(NAME_KEY) || "";
  $("create-error").hidden = true;
  $("create-card").hidden = false;
  f.operator.focus();
}

function refFields() {
  const f = $("create-form");
  const src = f.ref_source.value;
  document.querySelector(".ref-session").hidden = src !== "maximize-session";
  document.querySelector(".ref-image").hidden = src !== "image";
}

const list = s => s.split(",").map(x => x.trim()).filter(Boolean);
const numberOr = (v, d) => v === "" ? d : Number(v);

async function submitCreate(ev) {
  ev.preventDefault();
  const f = $("create-form");
  const start = ev.submitter && ev.submitter.name === "create-start";
  const err = $("create-error");
  err.hidden = true;
  const probe = { mode: f.mode.value, generator: { name: f.generator.value }, population: numberOr(f.population.value, 20),
                  generations: numberOr(f.generations.value, 40), seed: numberOr(f.seed.value, 0) };
  if (probe.mode !== "maximize") probe.stages = list(f.stages.value);
  if (f.probe_extra.value.trim()) {
    let extra;
    try { extra = JSON.parse(f.probe_extra.value); } catch (e) {
      err.textContent = `more probe fields: not JSON (${e.message})`;
      err.hidden = false;
      return;
    }
    for (const [k, v] of Object.entries(extra)) {
      probe[k] = v && typeof v === "object" && !Array.isArray(v) && probe[k] && typeof probe[k] === "object"
        ? Object.assign({}, probe[k], v) : v;
    }
  }
  const spec = {
    operator: f.operator.value.trim(), subject_id: f.subject_id.value.trim(), rig: f.rig.value.trim() || "rig-1",
    probe, units: list(f.units.value), on_ms: numberOr(f.on_ms.value, 100), off_ms: numberOr(f.off_ms.value, 100),
    response_window_ms: [numberOr(f.win_start.value, 50), numberOr(f.win_end.value, 200)],
  };
  if (list(f.target_units.value).length) spec.target_units = list(f.target_units.value);
  const verb = start ? "Create and start" : "Create";
  if (!confirm(`${verb} a ${probe.mode} session for ${spec.subject_id || "?"}?`)) return;
  try {
    if (f.ref_source.value === "maximize-session") {
      spec.reference = { source: "maximize-session", session_id: f.ref_session.value || null };
    } else if (f.ref_source.value === "image") {
      const file = f.ref_image.files[0];
      if (!file) throw Object.assign(new Error("reference: choose an image file"), { status: 0 });
      const up = await api("/references?kind=image", { method: "POST", headers: actionHeaders({ "Content-Type": file.type || "application/octet-stream" }), body: file });
      spec.reference = { source: "image", path: up.path };
    }
    if (spec.operator) localStorage.setItem(NAME_KEY, spec.operator);
    let s = await api("/sessions", { method: "POST", headers: actionHeaders({ "Content-Type": "application/json" }),
                                     body: JSON.stringify(spec) });
    if (start) s = await api(`/sessions/${s.id}/start`, { method: "POST", headers: actionHeaders() });
    notice(`created session ${shortId(s.id)} (${s.status})`, "ok");
    select(s.id);
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
    if (e.status === 401) refreshRole();
  }
}

// --- start ------------------------------------------------------------------------------------------

async function init() {
  for (const b of document.querySelectorAll("#controls button")) b.addEventListener("click", () => act(b.dataset.verb));
  $("set-token").addEventListener("click", askToken);
  $("forget-token").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); refreshRole(); });
  $("new-session").addEventListener("click", openCreate);
  $("create-cancel").addEventListener("click", () => { $("create-card").hidden = true; });
  $("create-form").addEventListener("submit", submitCreate);
  $("create-form").ref_source.addEventListener("change", refFields);
  $("neuron-unit").addEventListener("change", e => { state.neuronUnit = +e.target.value; render(); });
  $("scrub-range").addEventListener("input", e => scrubTo(+e.target.value));
  $("scrub-live").addEventListener("click", () => scrubTo(null));
  window.addEventListener("popstate", () => {
    const id = new URLSearchParams(location.search).get("session");
    if (id) select(id, true);
  });
  await refreshRole();
  if (state.role !== "operator" && state.role !== "viewer") {
    try { await api("/sessions?limit=1"); } catch (err) {  // this server needs a token even to read
      if (err.status === 401) {
        notice("This server needs a token to show its sessions: the viewer token (read only) or the operator token.");
        askToken();
      }
    }
  }
  try {
    state.sessions = await api("/sessions?limit=200");
  } catch (err) {
    notice(err.message);
    $("connection").textContent = "no connection";
    $("connection").className = "connection lost";
    return;
  }
  renderList();
  const id = state.selected || (state.sessions[0] && state.sessions[0].id);
  if (id) select(id, true);
  else {
    $("empty").hidden = false;
    $("connection").textContent = "connected";
    $("connection").className = "connection ok";
  }
}

init();
