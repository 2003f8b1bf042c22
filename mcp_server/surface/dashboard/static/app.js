// The autoresearch fleet dashboard: read-only, GET requests only, no dependencies.
"use strict";
const API = "/dashboard/api";
const POLL_MS = 2000;
const SETTLE_MS = 500;
const STATUSES = ["queued", "running", "done", "failed", "crash", "oom", "nan", "timeout", "lost", "rejected", "cancelled"];
const state = { version: null, sort: "seq", order: "desc", offset: 0, limit: 50, selected: null,
  logStart: null, logFollow: true, wave: null, metric: { name: "value", direction: "lower" } };

function el(tag, attrs, ...kids) {       // text always goes in as text, never as HTML
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of kids.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}
const $ = (id) => document.getElementById(id);
const fmt = (v, d = 5) => (v === null || v === undefined ? "" :
  typeof v === "number" ? (Number.isInteger(v) && d !== 2 ? String(v) : v.toFixed(d)) : String(v));
const sgn = (v) => (v === null || v === undefined ? "" : (v > 0 ? "+" : "") + v.toFixed(5));
const when = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "");

async function get(path) {
  const headers = {};
  const token = sessionStorage.getItem("arf-token");
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(API + path, { headers, cache: "no-store" });
  if (r.status === 401) { $("auth").hidden = false; throw new Error("unauthorized"); }
  if (!r.ok) throw new Error((await r.json()).detail || r.statusText);
  $("auth").hidden = true;
  return r.json();
}

function table(node, head, rows, opts = {}) {
  node.replaceChildren();
  const tr = el("tr", {});
  for (const [key, label] of head) {
    const th = el("th", { "data-key": key }, label);
    if (opts.sortable) {
      if (state.sort === key) th.className = state.order;
      th.addEventListener("click", () => {
        state.order = state.sort === key && state.order === "asc" ? "desc" : "asc";
        state.sort = key; state.offset = 0; refreshExperiments();
      });
    }
    tr.append(th);
  }
  node.append(el("thead", {}, tr));
  const body = el("tbody", {});
  for (const r of rows) body.append(r);
  node.append(body);
}

// -- overview -------------------------------------------------------------------------------------
async function refreshOverview() {
  const o = await get("/overview");
  state.metric = o.metric;
  $("session").textContent = `${o.workspace} · branch autoresearch/${o.tag || "?"} · ${o.backend || ""} · ` +
    `${o.metric.name} (${o.metric.direction} is better)`;
  const c = o.counts;
  const budget = o.gpu_hour_budget === null ? "no budget set" : `of ${o.gpu_hour_budget} (${fmt(o.gpu_hours_left, 3)} left)`;
  $("ov-cards").replaceChildren(
    el("div", { class: "card", id: "c-gpuh" }, el("b", {}, fmt(o.gpu_hours, 3)), `GPU-hours ${budget}`),
    el("div", { class: "card" }, el("b", {}, "$" + fmt(o.cost_usd, 2)), "est. cost"),
    ...["queued", "running", "done", "failed"].map((k) =>
      el("div", { class: "card", id: "c-" + k }, el("b", {}, c[k]), k)),
    el("div", { class: "card" }, el("b", {}, c.total), "experiments"));
  table($("ov-clusters"), [["n", "cluster"], ["g", "GPU"], ["s", "state"], ["r", "running"]],
    o.clusters.map((cl) => el("tr", {}, el("td", {}, cl.name), el("td", {}, cl.gpu_type + (cl.simulated ? " (simulated)" : "")),
      el("td", {}, cl.state), el("td", {}, cl.running.map((r) => exLink(r.id, r.waiting_for_slot ? " (waiting)" : " "))))));
  table($("ov-best"), [["g", "GPU type"], ["v", o.metric.name], ["s", "seeds"], ["n", "noise floor"], ["e", "experiment"]],
    o.best.map((b) => el("tr", {}, el("td", {}, b.gpu_type), el("td", {}, fmt(b.value)), el("td", {}, b.seeds),
      el("td", {}, b.noise_floor === null ? "n/a" : fmt(b.noise_floor)), el("td", {}, exLink(b.experiment_id, " " + b.description)))));
  $("ov-chain").replaceChildren(...(o.kept_chain.length ? o.kept_chain.map((k) =>
    el("li", {}, exLink(k.id, ` ${k.description} (${k.gpu_type || "?"}: ${fmt(k.value)})`))) : [el("li", {}, "nothing kept yet")]));
  $("ov-notes").replaceChildren(...o.notes.map((n) => el("li", {}, n)));
}

function exLink(id, rest) {
  return el("span", {}, el("a", { href: "#" + id, class: "exlink", "data-id": id,
    onclick: (ev) => { ev.preventDefault(); select(id); } }, id), rest || "");
}

// -- progress charts (canvas) ---------------------------------------------------------------------------
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
async function refreshProgress() {
  const p = await get("/progress");
  $("pg-note").textContent = p.note;
  const box = $("charts");
  box.replaceChildren();
  const types = Object.keys(p.by_gpu_type).sort();
  if (!types.length) box.append(el("p", {}, "no finished experiments yet"));
  types.forEach((gpu, i) => {
    const cv = el("canvas", { width: 900, height: 260, "data-gpu": gpu, class: "chart-canvas" });
    box.append(el("div", { class: "chart" }, el("h3", {}, gpu), cv));
    draw(cv, p.by_gpu_type[gpu], p.n, COLOURS[i % COLOURS.length], p.metric);
  });
}

function draw(cv, s, n, colour, metric) {
  const g = cv.getContext("2d"), W = cv.width, H = cv.height, L = 70, R = 10, T = 10, B = 30;
  g.fillStyle = "#fff"; g.fillRect(0, 0, W, H);
  const ys = s.y;
  let lo = Math.min(...ys), hi = Math.max(...ys);
  if (hi - lo < 1e-9) { lo -= 0.01; hi += 0.01; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const X = (x) => L + ((x - 1) / Math.max(1, n - 1)) * (W - L - R);
  const Y = (y) => T + (1 - (y - lo) / (hi - lo)) * (H - T - B);
  g.strokeStyle = "#ccc"; g.fillStyle = "#555"; g.font = "11px sans-serif"; g.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const y = lo + ((hi - lo) * k) / 4;
    g.beginPath(); g.moveTo(L, Y(y)); g.lineTo(W - R, Y(y)); g.stroke();
    g.fillText(y.toFixed(4), 4, Y(y) + 4);
  }
  g.fillText(`experiment (launch order, 1..${n}); ${metric.name}, ${metric.direction} is better; ` +
    "line: running best of group means", L, H - 8);
  g.fillStyle = colour; g.globalAlpha = 0.7;
  for (let i = 0; i < s.x.length; i++) { g.beginPath(); g.arc(X(s.x[i]), Y(s.y[i]), 3, 0, 2 * Math.PI); g.fill(); }
  g.globalAlpha = 1; g.strokeStyle = colour; g.lineWidth = 2; g.beginPath();
  s.best_x.forEach((x, k) => {      // a step line: the running best of the group means
    const y = s.best_y[k];
    if (k === 0) g.moveTo(X(x), Y(y)); else { g.lineTo(X(x), Y(s.best_y[k - 1])); g.lineTo(X(x), Y(y)); }
  });
  g.stroke();
  g.fillStyle = "gold"; g.strokeStyle = "#000"; g.lineWidth = 1;
  for (const i of s.kept) star(g, X(s.x[i]), Y(s.y[i]), 8);
}

function star(g, x, y, r) {
  g.beginPath();
  for (let k = 0; k < 10; k++) {
    const a = (Math.PI / 5) * k - Math.PI / 2, rr = k % 2 ? r / 2.5 : r;
    g.lineTo(x + rr * Math.cos(a), y + rr * Math.sin(a));
  }
  g.closePath(); g.fill(); g.stroke();
}

// -- leaderboard -------------------------------------------------------------------------------------
async function refreshBoard() {
  const b = await get("/board?limit=20");
  const box = $("boards");
  box.replaceChildren();
  for (const [gpu, rows] of Object.entries(b.by_gpu_type)) {
    const t = el("table", { class: "board", "data-gpu": gpu });
    const noise = b.noise_floor[gpu];
    box.append(el("h3", {}, `${gpu} (noise floor ${noise === null ? "n/a" : fmt(noise)})`), t);
    table(t, [["r", "rank"], ["e", "experiment"], ["v", b.metric.name], ["d", "delta"], ["s", "seeds"],
      ["sd", "std"], ["vd", "verdict"], ["dc", "decision"], ["ds", "description"]],
      rows.map((r) => el("tr", {}, el("td", {}, r.rank), el("td", {}, exLink(r.experiment_id)), el("td", {}, fmt(r.val_bpb)),
        el("td", {}, sgn(r.delta)), el("td", {}, r.seeds), el("td", {}, fmt(r.std)),
        el("td", { class: "v-" + r.verdict }, r.verdict), el("td", {}, r.decision || ""), el("td", {}, r.description))));
  }
  box.append(el("ul", { class: "notes" }, ...b.notes.map((n) => el("li", {}, n))));
}

// -- experiments table -------------------------------------------------------------------------------
async function refreshExperiments() {
  const q = new URLSearchParams({ sort: state.sort, order: state.order, offset: state.offset, limit: state.limit });
  if ($("f-status").value) q.set("status", $("f-status").value);
  if ($("f-wave").value) q.set("wave", $("f-wave").value);
  const d = await get("/experiments?" + q);
  $("exp-count").textContent = `${d.total ? d.offset + 1 : 0}–${d.offset + d.rows.length} of ${d.total}`;
  table($("exp-table"), [["id", "id"], ["status", "status"], ["gpu", "GPU"], ["value", d.metric.name], ["verdict", "verdict"],
    ["seed", "seed"], ["wave", "wave"], ["decision", "decision"], ["steps", "steps"], ["description", "description"]],
    d.rows.map((r) => el("tr", { class: "clickable", "data-id": r.id, "data-status": r.status, onclick: () => select(r.id) },
      el("td", {}, r.id), el("td", { class: "status-" + r.status }, r.status + (r.waiting_for_slot ? " (waiting)" : "")),
      el("td", {}, r.gpu || "any"), el("td", {}, fmt(r.value)), el("td", { class: "v-" + r.verdict }, r.verdict || ""),
      el("td", {}, r.seed), el("td", {}, r.wave || ""), el("td", {}, r.decision || ""), el("td", {}, r.steps ?? ""),
      el("td", {}, r.description))), { sortable: true });
}

// -- one experiment ----------------------------------------------------------------------------------
async function select(id) {
  state.selected = id; state.logFollow = true; state.logStart = null;
  await refreshDetail();
  $("detail").scrollIntoView({ behavior: "smooth", block: "start" });
}

function kv(obj) {
  return el("table", { class: "kv" }, ...Object.entries(obj).filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, typeof v === "object" ? JSON.stringify(v) : fmt(v, 6)))));
}

async function refreshDetail() {
  if (!state.selected) return;
  const d = await get("/experiments/" + encodeURIComponent(state.selected));
  const e = d.experiment, v = d.verdict;
  $("detail").hidden = false;
  $("d-title").textContent = `${e.id}: ${e.description}`;
  const verdict = v ? el("p", { id: "d-verdict", class: "v-" + v.verdict },
    `verdict: ${v.verdict}` + (v.delta !== null ? ` (delta ${sgn(v.delta)} vs ${v.reference_id} on ${v.gpu_type}, ` +
      `noise ${v.noise === null ? "n/a" : fmt(v.noise)}, ${v.replicates} vs ${v.reference_replicates} seeds)` : "") +
    (v.note ? " — " + v.note : "")) : el("p", { id: "d-verdict" }, `verdict: ${e.status === "done" ? "n/a" : e.status}`);
  const diff = d.diff;
  const change = diff.text ? el("pre", { class: "diff" }, diff.text) :
    el("p", {}, diff.error || (Object.keys(diff.overrides).length ? "" : "no code change against the parent"));
  $("d-body").replaceChildren(verdict,
    el("div", { class: "cols" },
      el("div", {}, el("h3", {}, "Run"), kv({ status: e.status, decision: e.decision, gpu_requested: e.gpu_type, ran_on_gpu: e.ran_on_gpu,
        cluster: e.cluster, seed: e.seed, wave: e.wave_id, parent: e.parent_id, commit: e.commit, attempts: e.attempts,
        error: e.error, created: when(e.created_at), started: when(e.started_at), ended: when(e.ended_at) })),
      el("div", {}, el("h3", {}, "Metrics"), kv(e.metrics)),
      el("div", {}, el("h3", {}, "Overrides"), kv(e.overrides))),
    el("h3", {}, "Code change against its parent"), change,
    el("h3", {}, "Attempts"), attemptsTable(d.attempts),
    el("h3", {}, "Events"), el("table", { id: "d-events" }, ...d.events.map((x) =>
      el("tr", {}, el("td", {}, when(x.t)), el("td", {}, x.kind), el("td", {}, x.detail)))));
  await refreshLog();
}

function attemptsTable(rows) {
  const t = el("table", {});
  table(t, [["a", "#"], ["c", "cluster"], ["g", "GPU"], ["s", "submitted"], ["st", "started"], ["e", "ended"],
    ["b", "busy s"], ["o", "outcome"]], rows.map((a) => el("tr", {}, el("td", {}, a.attempt), el("td", {}, a.cluster),
    el("td", {}, a.gpu_type || ""), el("td", {}, when(a.submitted_at)), el("td", {}, when(a.started_at)),
    el("td", {}, when(a.ended_at)), el("td", {}, fmt(a.busy_seconds, 1)), el("td", {}, a.outcome || "open"))));
  return t;
}

const LOG_PAGE = 8000;
async function refreshLog() {
  const off = state.logFollow || state.logStart === null ? -LOG_PAGE : state.logStart;
  const l = await get(`/experiments/${encodeURIComponent(state.selected)}/log?offset=${off}&limit=${LOG_PAGE}`);
  state.logStart = l.start;
  $("d-log").textContent = l.text || "(no log yet)";
  $("log-range").textContent = `characters ${l.start}–${l.end} of ${l.size}` + (state.logFollow ? " (following the tail)" : "");
}

// -- waves -----------------------------------------------------------------------------------------
async function refreshWaves() {
  const w = await get("/waves");
  const sel = $("f-wave"), cur = sel.value;
  sel.replaceChildren(el("option", { value: "" }, "all"), ...w.waves.map((x) => el("option", { value: x.id }, x.id)));
  sel.value = cur;
  table($("wave-table"), [["i", "wave"], ["k", "kind"], ["n", "runs"], ["s", "status"], ["d", "description"], ["g", "design"]],
    w.waves.map((x) => el("tr", { class: "clickable", "data-wave": x.id, onclick: () => { state.wave = x.id; refreshWave(); } },
      el("td", {}, x.id), el("td", {}, x.kind), el("td", {}, x.n),
      el("td", {}, Object.entries(x.by_status).map(([k, n]) => `${k} ${n}`).join(", ")),
      el("td", {}, x.description), el("td", {}, JSON.stringify(x.design.axes || x.design)))));
  if (state.wave) await refreshWave();
}

// A factorial wave's analysis (domain/wave_analysis, as analyze_wave gives it): per GPU type, one row
// per axis level with its marginal mean, effect against the reference level, and Holm-corrected verdict.
function mainEffects(a) {
  if (a.error) return el("p", { class: "note" }, "Main effects: " + a.error);
  const parts = [el("h4", {}, "Main effects (" + a.method + ")")];
  for (const [gpu, g] of Object.entries(a.by_gpu_type)) {
    const t = el("table", { class: "effects", "data-gpu": gpu });
    const rows = [];
    for (const ax of g.axes) for (const lv of ax.levels) rows.push(el("tr", {},
      el("td", {}, ax.axis), el("td", {}, JSON.stringify(lv.level) + (ax.best_level === lv.level ? " *" : "")),
      el("td", {}, fmt(lv.mean)), el("td", {}, fmt(lv.se)), el("td", {}, lv.runs), el("td", {}, fmt(lv.delta)),
      el("td", {}, fmt(lv.p_holm)), el("td", {}, lv.verdict)));
    table(t, [["a", "axis"], ["l", "level"], ["m", "mean"], ["s", "se"], ["n", "runs"], ["d", "delta"],
      ["p", "p (Holm)"], ["v", "verdict"]], rows);
    const flags = g.interactions.filter((i) => i.best_level_changes).map((i) => i.axes.join(" x "));
    parts.push(el("p", {}, `${gpu}: noise ${fmt(g.noise)}${g.balanced ? "" : " (unbalanced design)"}; ` +
      (flags.length ? "best level changes with the other axis: " + flags.join(", ") + "; " : "") + g.chance), t);
  }
  return el("div", {}, ...parts);
}

async function refreshWave() {
  const w = await get("/waves/" + encodeURIComponent(state.wave));
  const box = $("wave-detail");
  const cells = el("table", { id: "wave-cells" });
  table(cells, [["g", "GPU type"], ["o", "cell (overrides)"], ["n", "finished"], ["m", "mean " + w.metric.name],
    ["s", "std"], ["l", "live"], ["f", "failed"], ["i", "experiments"]],
    w.cells.map((c) => el("tr", {}, el("td", {}, c.gpu_type), el("td", {}, JSON.stringify(c.overrides)), el("td", {}, c.n),
      el("td", {}, fmt(c.mean)), el("td", {}, fmt(c.std)), el("td", {}, c.live), el("td", {}, c.failed),
      el("td", {}, c.ids.map((i) => exLink(i, " "))))));
  const effects = w.main_effects === null ? el("p", { class: "note" }, "") : mainEffects(w.main_effects);
  box.replaceChildren(el("h3", {}, `${w.id} (${w.kind}): ${w.description}`),
    el("p", {}, "design: " + JSON.stringify(w.design)), el("p", { class: "note" }, w.note), cells, effects);
}

// -- the loop ----------------------------------------------------------------------------------------
async function refreshAll() {
  await Promise.all([refreshOverview(), refreshProgress(), refreshBoard(), refreshExperiments(), refreshWaves(),
    refreshDetail()]);
}

async function tick() {
  let next = POLL_MS;
  try {
    const v = await get("/version");
    // After a change the server recomputes its answers in the background (the first requests get the
    // previous ones): refresh at once, then again shortly after, until the server says they have settled.
    if (v.version !== state.version) {
      state.version = v.version; state.unsettled = true; next = SETTLE_MS; await refreshAll();
    } else if (state.unsettled) {
      state.unsettled = !v.settled; if (state.unsettled) next = SETTLE_MS; await refreshAll();
    } else { await refreshOverview(); if (state.selected && state.logFollow) await refreshLog(); }
    $("live").className = "";
  } catch (err) {
    $("live").className = "stale";
    $("live").title = String(err);
  }
  setTimeout(tick, next);
}

window.addEventListener("DOMContentLoaded", () => {
  const fs = $("f-status");
  for (const s of STATUSES) fs.append(el("option", { value: s }, s));
  fs.addEventListener("change", () => { state.offset = 0; refreshExperiments(); });
  $("f-wave").addEventListener("change", () => { state.offset = 0; refreshExperiments(); });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); refreshExperiments(); });
  $("next").addEventListener("click", () => { state.offset += state.limit; refreshExperiments(); });
  $("log-older").addEventListener("click", () => {
    state.logFollow = false; state.logStart = Math.max(0, (state.logStart || 0) - LOG_PAGE); refreshLog(); });
  $("log-newer").addEventListener("click", () => { state.logFollow = false; state.logStart = (state.logStart || 0) + LOG_PAGE; refreshLog(); });
  $("log-tail").addEventListener("click", () => { state.logFollow = true; refreshLog(); });
  $("token-go").addEventListener("click", () => {
    sessionStorage.setItem("arf-token", $("token").value); state.version = null; });
  tick();
});
