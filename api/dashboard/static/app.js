// The grft dashboard: a small single-page app over the public /v1 API.
// The API key lives in sessionStorage and travels only in the Authorization header, never in a URL.
// Everything on the page is built with DOM calls (no innerHTML with data), and charts are inline SVG.
"use strict";

const KEY_ITEM = "grft.apiKey";
const ACTIVE = new Set(["validating_files", "queued", "running", "cancelling"]);
const STATUSES = ["validating_files", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const SVG_NS = "http://www.w3.org/2000/svg";

// -- small helpers -------------------------------------------------------------------------------

/** An element: h("a", {href: "#", class: "x", onclick: fn}, "text", child, ...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.setAttribute("class", value);
    else if (name === "text") el.textContent = value;
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
}

function bar(fraction, label) {
  const fill = h("span", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  return h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": Math.round(fraction * 100), "aria-label": label || "progress" }, fill);
}

function fmtTime(seconds) {
  if (!seconds) return "—";
  return new Date(seconds * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : m > 0 ? `${m} min ${s % 60} s` : `${s} s`;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function fmtCount(n) {
  if (n === null || n === undefined) return "—";
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : String(n);
}

function fmtNumber(v) {
  if (typeof v !== "number") return typeof v === "object" ? JSON.stringify(v) : String(v);
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) < 1e-3 ? String(Number(v.toExponential(2))) : String(Number(v.toPrecision(4)));
}

function statusBadge(status) {
  return h("span", { class: `badge st-${status}` }, status.replace("_", " "));
}

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

let toastTimer = null;
function toast(message, kind) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = kind === "error" ? "error" : "";
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 5000);
}

// -- the API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

function authHeaders(key, headers) {
  const out = new Headers(headers || {});
  if (key) out.set("Authorization", `Bearer ${key}`);
  return out;
}

/** fetch with the session's key; throws ApiError with the service's message on a non-2xx answer. */
async function api(path, options = {}, key = sessionStorage.getItem(KEY_ITEM)) {
  const response = await fetch(path, { ...options, headers: authHeaders(key, options.headers) });
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
    else if (body && body.detail) message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON */ }
  if (response.status === 401 && key === sessionStorage.getItem(KEY_ITEM)) {
    signOut("The server refused the key: sign in again.");
  }
  throw new ApiError(message, response.status);
}

async function getJson(path) {
  return (await api(path)).json();
}

async function postJson(path, body, headers) {
  const response = await api(path, {
    method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json", ...headers },
  });
  return response.json();
}

async function uploadFile(file) {
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  return (await api("/v1/files", { method: "POST", body: form })).json();
}

/** Download a response as a file through a blob: URL (the key stays in the header). */
async function download(path, fallbackName) {
  const response = await api(path);
  const blob = await response.blob();
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: match ? match[1] : fallbackName, class: "hidden" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
  return blob.size;
}

let modelsCache = null;
async function models() {
  if (!modelsCache) modelsCache = (await getJson("/v1/models")).data;
  return modelsCache;
}

// -- Server-Sent Events over fetch ---------------------------------------------------------------

/** Read an SSE response body, calling onMessage({id, data}) per event; resolves when the body ends. */
async function readEventStream(response, onMessage) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (data.length) onMessage({ id, data: data.join("\n") });
        data = [];
        id = null;
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      } else if (line.startsWith("id:")) {
        id = line.slice(3).trim();
      } // comments (": ping") and other fields are ignored
    }
  }
}

/** Follow a job's event stream until it says [DONE], reconnecting after the last event seen. */
async function followEvents(jobId, signal, onEvent) {
  let last = null;
  let finished = false;
  for (let attempt = 0; !finished && !signal.aborted && attempt < 20; attempt += 1) {
    try {
      const params = new URLSearchParams({ stream: "true" });
      if (last) params.set("after", last);
      const response = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?${params}`, {
        signal, headers: { Accept: "text/event-stream" },
      });
      await readEventStream(response, (message) => {
        if (message.data === "[DONE]") { finished = true; return; }
        if (message.id) last = message.id;
        onEvent(JSON.parse(message.data));
      });
    } catch (error) {
      if (signal.aborted || (error instanceof ApiError && error.status < 500)) return;
    }
    if (!finished && !signal.aborted) await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// -- charts --------------------------------------------------------------------------------------

const CHART = { width: 640, height: 240, left: 52, right: 16, top: 14, bottom: 34 };

function niceTicks(lo, hi, count) {
  if (hi - lo < 1e-12) { hi = lo + 1; }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-6; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

/**
 * Draw series [{name, cls, points: [[x, y], ...], dots}] into the <svg> element `el`.
 * Options: yMin/yMax fix the y range, xLabel names the x axis, empty is shown without data.
 */
function drawChart(el, series, options) {
  const { width, height, left, right, top, bottom } = CHART;
  el.replaceChildren();
  el.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    el.append(svg("text", { x: width / 2, y: height / 2, class: "empty", "text-anchor": "middle" },
      options.empty || "no data yet"));
    for (const s of series) el.append(svg("path", { class: `series ${s.cls}`, d: "", "data-points": 0 }));
    return;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  let y0 = options.yMin ?? Math.min(...ys), y1 = options.yMax ?? Math.max(...ys);
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const pad = options.yMin === undefined ? (y1 - y0) * 0.08 : 0;
  y0 -= options.yMin === undefined ? pad : 0;
  y1 += options.yMax === undefined ? pad : 0;
  const px = (x) => left + ((x - x0) / (x1 - x0)) * (width - left - right);
  const py = (y) => top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom);

  for (const t of niceTicks(y0, y1, 4)) {
    if (t < y0 || t > y1) continue;
    el.append(svg("line", { x1: left, x2: width - right, y1: py(t), y2: py(t), class: "grid" }));
    el.append(svg("text", { x: left - 6, y: py(t) + 4, "text-anchor": "end", class: "tick" }, fmtNumber(t)));
  }
  for (const t of niceTicks(x0, x1, 6)) {
    if (t < x0 || t > x1 || (options.integerX && !Number.isInteger(t))) continue;
    el.append(svg("text", { x: px(t), y: height - bottom + 16, "text-anchor": "middle", class: "tick" }, fmtNumber(t)));
  }
  el.append(svg("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }));
  el.append(svg("text", { x: width - right, y: height - 4, "text-anchor": "end", class: "label" }, options.xLabel));

  for (const s of series) {
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(" ");
    el.append(svg("path", { class: `series ${s.cls}`, d, "data-points": s.points.length }));
    if (s.dots || s.points.length === 1) {
      for (const p of s.points) {
        el.append(svg("circle", { cx: px(p[0]), cy: py(p[1]), r: 4, class: `dot ${s.cls}` },
          svg("title", {}, `${s.name}: ${fmtNumber(p[1])} at ${options.xLabel} ${fmtNumber(p[0])}`)));
      }
    }
  }
}

function legend(series) {
  return h("ul", { class: "legend" }, series.map(([cls, name]) => h("li", {}, h("span", { class: `swatch ${cls}` }), name)));
}

// -- the router ----------------------------------------------------------------------------------

let cleanup = [];

function onLeave(fn) { cleanup.push(fn); }

function route() {
  for (const fn of cleanup) { try { fn(); } catch (_) { /* ignore */ } }
  cleanup = [];
  const main = document.getElementById("main");
  const signedIn = sessionStorage.getItem(KEY_ITEM) !== null;
  document.getElementById("topbar").hidden = !signedIn;
  if (!signedIn) { main.replaceChildren(signInView()); return; }
  const [, section, id] = (location.hash || "#/jobs").split("/");
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.nav === (section || "jobs"));
  }
  const views = { jobs: id ? (page) => jobView(page, decodeURIComponent(id)) : jobsView, new: newJobView,
    adapters: (page) => adaptersView(page, id ? decodeURIComponent(id) : null), files: filesView,
    webhooks: (page) => webhooksView(page, id ? decodeURIComponent(id) : null) };
  const view = views[section] || jobsView;
  // A fresh container per visit: a slow view that finishes after the user moved on fills a detached one.
  const page = h("div", { class: "page", id: `page-${section || "jobs"}` });
  main.replaceChildren(page);
  view(page).catch((error) => {
    page.append(h("p", { class: "error" }, `Could not load this page: ${error.message}`));
  });
}

function signOut(message) {
  sessionStorage.removeItem(KEY_ITEM);
  modelsCache = null;
  if (location.hash !== "#/jobs") history.replaceState(null, "", "#/jobs");
  route();
  if (message) toast(message, "error");
}

// -- views ---------------------------------------------------------------------------------------

function signInView() {
  const input = h("input", { type: "password", id: "api-key", name: "key", autocomplete: "off",
    placeholder: "grft-…", spellcheck: "false" });
  const error = h("p", { class: "error", id: "sign-in-error", role: "alert" });
  const form = h("form", { id: "sign-in-form", class: "stack" },
    h("label", {}, "API key", input),
    h("button", { type: "submit", id: "sign-in" }, "Sign in"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const key = input.value.trim();
    try {
      await api("/v1/files?limit=1", {}, key);
      sessionStorage.setItem(KEY_ITEM, key);
      if (!location.hash || location.hash === "#/") history.replaceState(null, "", "#/jobs");
      route();
    } catch (e) {
      error.textContent = e.status === 401 ? "That key was refused." : `Could not reach the API: ${e.message}`;
    }
  });
  setTimeout(() => input.focus(), 0);
  return h("section", { class: "card narrow signin" },
    h("h1", {}, "grft dashboard"),
    h("p", { class: "muted" }, "Sign in with an API key (",
      h("code", {}, "grft keys create --tenant NAME"), " prints one). A server started with ",
      h("code", {}, "--no-auth"), " takes an empty key. The key stays in this tab only."),
    form);
}

async function jobsView(main) {
  const filter = h("select", { id: "job-filter", "aria-label": "Filter by status" },
    h("option", { value: "" }, "All statuses"), STATUSES.map((s) => h("option", { value: s }, s.replace("_", " "))));
  const live = h("span", { class: "muted live", id: "jobs-live" });
  const body = h("tbody");
  const table = h("table", { id: "jobs-table", class: "table" },
    h("thead", {}, h("tr", {}, ["Job", "Status", "Model", "Method", "Progress", "Created"].map((c) => h("th", {}, c)))),
    body);
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Fine-tuning jobs"),
      h("div", { class: "tools" }, live, filter, h("a", { class: "button", href: "#/new" }, "New job"))),
    h("div", { class: "card flush" }, table));
  let timer = null;
  let alive = true;
  onLeave(() => { alive = false; clearTimeout(timer); });
  async function refresh() {
    clearTimeout(timer);
    const query = new URLSearchParams({ limit: "100" });
    if (filter.value) query.set("status", filter.value);
    let jobs;
    try {
      jobs = (await getJson(`/v1/fine_tuning/jobs?${query}`)).data;
    } catch (error) {
      if (alive) timer = setTimeout(refresh, 5000);
      toast(error.message, "error");
      return;
    }
    if (!alive) return;
    body.replaceChildren(...jobs.map(jobRow));
    if (!jobs.length) {
      body.append(h("tr", {}, h("td", { colspan: 6, class: "muted empty-row" },
        filter.value ? "No jobs with this status." : "No jobs yet: create one with New job.")));
    }
    const active = jobs.some((j) => ACTIVE.has(j.status));
    live.textContent = active ? "● live" : "";
    if (active) timer = setTimeout(refresh, 2000);
  }
  filter.addEventListener("change", refresh);
  await refresh();
}

// What each phase of a job (progress.phase) is called on the page.
const PHASES = { validating: "Validating the data", queued: "Queued", preparing: "Loading data and model",
  selecting: "Selecting rows", tuning: "Choosing hyperparameters", evaluating: "Evaluating",
  training: "Training", done: "Done" };

/** The bar's fraction and the line under it: the phase, its units done and its ETA. */
function progressSummary(job) {
  const p = job.progress || {};
  const phase = p.phase || (p.total_steps ? "training" : null);
  const fraction = job.status === "succeeded" ? 1 : p.fraction ?? (p.total_steps ? p.steps_completed / p.total_steps : 0);
  const pct = `${Math.round(fraction * 100)}%`;
  const eta = ACTIVE.has(job.status) && p.eta_seconds !== null && p.eta_seconds !== undefined
    ? ` · ETA ${fmtDuration(p.eta_seconds)}` : "";
  let text;
  if ((phase === "training" || phase === "done") && p.total_steps) {
    text = `Step ${p.steps_completed} of ${p.total_steps} (${pct})${phase === "training" ? eta : ""}`;
  } else if (phase) {
    const name = PHASES[phase] || phase;
    text = p.total ? `${name}: ${p.done} of ${p.total} (${pct})${eta}` : ACTIVE.has(job.status) ? `${name}…` : name;
  } else {
    text = ACTIVE.has(job.status) ? "Waiting for the first training step…" : "No training steps recorded.";
  }
  return { phase, fraction, text, short: phase && phase !== "training" && phase !== "done" ? PHASES[phase] || phase : null };
}

function progressCell(job) {
  const p = job.progress || {};
  const summary = progressSummary(job);
  if (!p.total_steps && !summary.short) return h("span", { class: "muted" }, job.status === "succeeded" ? "done" : "—");
  const label = summary.short && ACTIVE.has(job.status) ? summary.short : `${p.steps_completed}/${p.total_steps}`;
  return h("div", { class: "progress-cell" }, bar(summary.fraction),
    h("span", { class: "small", "data-phase": summary.phase || "" }, label));
}

function jobRow(job) {
  const href = `#/jobs/${encodeURIComponent(job.id)}`;
  const row = h("tr", { class: "clickable", "data-id": job.id },
    h("td", { "data-label": "Job" }, h("a", { href }, job.id), job.user_provided_suffix ? h("span", { class: "muted small" }, ` ${job.user_provided_suffix}`) : null),
    h("td", { "data-label": "Status" }, statusBadge(job.status)),
    h("td", { "data-label": "Model" }, job.model),
    h("td", { "data-label": "Method" }, (job.method && job.method.type) || "—"),
    h("td", { "data-label": "Progress" }, progressCell(job)),
    h("td", { "data-label": "Created" }, fmtTime(job.created_at)));
  row.addEventListener("click", (event) => { if (event.target.tagName !== "A") location.hash = href; });
  return row;
}

function definitionList(entries) {
  return h("dl", { class: "facts" }, entries.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))));
}

async function jobView(main, jobId) {
  const path = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
  const title = h("div", { class: "title-line" }, h("h1", {}, jobId));
  const cancel = h("button", { type: "button", id: "cancel-job", class: "danger" }, "Cancel job");
  const progressText = h("p", { id: "job-progress-text", class: "small muted" });
  const progressHolder = h("div", { id: "job-progress" });
  const facts = h("div", { id: "job-facts" });
  const hyper = h("div", { id: "job-hyperparameters" });
  const errorBox = h("div", { id: "job-error" });
  const lossChart = svg("svg", { id: "loss-chart", class: "chart", role: "img", "aria-label": "Training loss" });
  const accChart = svg("svg", { id: "acc-chart", class: "chart", role: "img", "aria-label": "Validation accuracy" });
  const events = h("ol", { id: "events", class: "events" });
  const checkpoints = h("tbody");
  main.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← Jobs")),
    h("div", { class: "page-head" }, title, h("div", { class: "tools" }, cancel)),
    h("section", { class: "card" }, progressHolder, progressText, errorBox),
    h("div", { class: "grid two" },
      h("section", { class: "card" }, h("h2", {}, "Training loss"), legend([["train", "train (per step)"], ["val", "validation (per epoch)"]]), lossChart),
      h("section", { class: "card" }, h("h2", {}, "Validation accuracy"), legend([["acc", "per epoch"]]), accChart)),
    h("div", { class: "grid two" },
      h("section", { class: "card" }, h("h2", {}, "Job"), facts, h("h2", {}, "Hyperparameters"), hyper),
      h("section", { class: "card" }, h("h2", {}, "Events"), events)),
    h("section", { class: "card flush" }, h("h2", { class: "pad" }, "Checkpoints"),
      h("table", { class: "table", id: "checkpoints-table" },
        h("thead", {}, h("tr", {}, ["Step", "Checkpoint", "Metrics", "Created"].map((c) => h("th", {}, c)))), checkpoints)));

  let alive = true;
  let timer = null;
  const controller = new AbortController();
  onLeave(() => { alive = false; clearTimeout(timer); controller.abort(); });

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      render(await postJson(`${path}/cancel`, {}));
      toast("Cancellation requested.");
    } catch (error) { toast(error.message, "error"); cancel.disabled = false; }
  });

  function render(job) {
    title.replaceChildren(h("h1", {}, job.id), statusBadge(job.status));
    cancel.disabled = !ACTIVE.has(job.status) || job.status === "cancelling";
    cancel.hidden = !ACTIVE.has(job.status);
    const summary = progressSummary(job);
    progressHolder.replaceChildren(bar(summary.fraction, "job progress"));
    progressHolder.dataset.phase = summary.phase || "";
    progressText.textContent = summary.text;
    const adapter = job.adapter_id
      ? h("a", { href: `#/adapters/${encodeURIComponent(job.adapter_id)}`, id: "job-adapter" }, job.adapter_id) : null;
    facts.replaceChildren(definitionList([
      ["Model", job.model], ["Method", job.method && job.method.type], ["Training file", job.training_file],
      ["Validation file", job.validation_file], ["Created", fmtTime(job.created_at)],
      ["Finished", job.finished_at ? fmtTime(job.finished_at) : null],
      ["Trainable parameters", job.trainable_params ? fmtCount(job.trainable_params) : null],
      ["Seed", job.seed], ["Adapter", adapter],
    ]));
    const type = job.method && job.method.type;
    const params = (type && job.method[type] && job.method[type].hyperparameters) || job.hyperparameters || {};
    hyper.replaceChildren(definitionList(Object.entries(params)
      .filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => [k, fmtNumber(v)])));
    errorBox.replaceChildren(job.error
      ? h("p", { class: "error" }, `${job.error.code}: ${job.error.message}`) : "");
  }

  // metrics: {steps: [{step, train_loss, ...}], epochs: [{epoch (from 1), step, valid_loss, valid_accuracy, ...}]}
  function renderMetrics(metrics) {
    const series = (points, x, y) => (points || []).filter((p) => p[x] !== undefined && p[y] !== undefined)
      .map((p) => [p[x], p[y]]);
    drawChart(lossChart, [
      { name: "train loss", cls: "train", points: series(metrics.steps, "step", "train_loss") },
      { name: "validation loss", cls: "val", points: series(metrics.epochs, "step", "valid_loss"), dots: true },
    ], { xLabel: "step", integerX: true, empty: "no training steps yet" });
    drawChart(accChart, [
      { name: "validation accuracy", cls: "acc", points: series(metrics.epochs, "epoch", "valid_accuracy"), dots: true },
    ], { xLabel: "epoch", yMin: 0, yMax: 1, integerX: true, empty: "no epoch finished yet" });
  }

  function renderCheckpoints(list) {
    checkpoints.replaceChildren(...list.map((c) => h("tr", {},
      h("td", { "data-label": "Step" }, c.step_number),
      h("td", { "data-label": "Checkpoint" }, h("code", {}, c.id)),
      h("td", { "data-label": "Metrics" }, Object.entries(c.metrics || {}).map(([k, v]) => `${k} ${fmtNumber(v)}`).join(", ") || "—"),
      h("td", { "data-label": "Created" }, fmtTime(c.created_at)))));
    if (!list.length) checkpoints.append(h("tr", {}, h("td", { colspan: 4, class: "muted empty-row" }, "No checkpoints.")));
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const [job, metrics, cps] = await Promise.all([
        getJson(path), getJson(`${path}/metrics`), getJson(`${path}/checkpoints?limit=20`)]);
      if (!alive) return;
      render(job);
      renderMetrics(metrics);
      renderCheckpoints(cps.data);
      if (ACTIVE.has(job.status)) timer = setTimeout(refresh, 1500);
    } catch (error) {
      if (!alive) return;
      toast(error.message, "error");
      if (error.status !== 404) timer = setTimeout(refresh, 5000);
    }
  }

  await refresh();
  followEvents(jobId, controller.signal, (event) => {
    const when = new Date(event.created_at * 1000).toLocaleTimeString();
    events.prepend(h("li", { class: `level-${event.level}` },
      h("time", {}, when), h("span", { class: "message" }, event.message)));
    if (event.type === "metrics" || event.type === "status") {
      clearTimeout(timer);
      timer = setTimeout(refresh, 300);
    }
  });
}

async function newJobView(main) {
  const [modelList, fileList] = await Promise.all([models(), getJson("/v1/files?purpose=fine-tune&limit=100")]);
  const model = h("select", { id: "model", name: "model", required: true },
    modelList.map((m) => h("option", { value: m.id }, `${m.id} — ${m.modality}, ${fmtCount(m.num_params)} params`)));
  const fileSelect = h("select", { id: "training-file", name: "training_file" },
    h("option", { value: "" }, "Upload a new file…"),
    fileList.data.map((f) => h("option", { value: f.id }, `${f.filename} (${f.id}, ${fmtBytes(f.bytes)})`)));
  const upload = h("input", { type: "file", id: "training-upload", accept: ".zip,.tar,.tar.gz,.tgz,.csv,.jsonl,.parquet" });
  const uploadRow = h("label", { id: "upload-row" }, "File to upload (image folder archive, CSV, JSONL or Parquet)", upload);
  const number = (id, value, attrs) => h("input", { type: "number", id, name: id, value, ...attrs });
  const k = number("k", 4, { min: 1, max: 65536, step: 1, required: true });
  const l2 = number("l2_lambda", 0.0001, { min: 0, max: 1000, step: "any", required: true });
  const epochs = number("n_epochs", 3, { min: 1, max: 1000, step: 1, required: true });
  const imageSize = number("image_size", 32, { min: 8, max: 1024, step: 1 });
  const batch = number("batch_size", "", { min: 1, max: 4096, step: 1, placeholder: "default" });
  const suffix = h("input", { type: "text", id: "suffix", maxlength: 64, pattern: "[A-Za-z0-9._\\-]*", placeholder: "optional" });
  const imageRow = h("label", {}, "Image size (px)", imageSize);
  const status = h("p", { id: "job-form-status", class: "small muted", role: "status" });
  const submit = h("button", { type: "submit", id: "create-job" }, "Create job");
  const sync = () => {
    uploadRow.hidden = fileSelect.value !== "";
    const chosen = modelList.find((m) => m.id === model.value);
    imageRow.hidden = !chosen || chosen.modality !== "image";
  };
  model.addEventListener("change", sync);
  fileSelect.addEventListener("change", sync);
  sync();
  let idempotencyKey = randomKey();
  const form = h("form", { id: "job-form", class: "card form-grid" },
    h("label", { class: "wide" }, "Base model", model),
    h("label", { class: "wide" }, "Training data", fileSelect), uploadRow,
    h("label", {}, "Method", h("select", { id: "method", disabled: true }, h("option", {}, "GRFT"))),
    h("label", {}, "k (rows per matrix)", k),
    h("label", {}, "L2 λ", l2),
    h("label", {}, "Epochs", epochs),
    imageRow,
    h("label", {}, "Batch size", batch),
    h("label", {}, "Suffix", suffix),
    h("div", { class: "wide actions" }, submit, status));
  uploadRow.classList.add("wide");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      let trainingFile = fileSelect.value;
      if (!trainingFile) {
        if (!upload.files.length) throw new Error("Choose a file to upload, or pick an uploaded one.");
        status.textContent = `Uploading ${upload.files[0].name}…`;
        trainingFile = (await uploadFile(upload.files[0])).id;
      }
      const hyperparameters = { k: Number(k.value), l2_lambda: Number(l2.value), n_epochs: Number(epochs.value) };
      if (!imageRow.hidden && imageSize.value) hyperparameters.image_size = Number(imageSize.value);
      if (batch.value) hyperparameters.batch_size = Number(batch.value);
      const body = { model: model.value, training_file: trainingFile,
        method: { type: "grft", grft: { hyperparameters } } };
      if (suffix.value) body.suffix = suffix.value;
      status.textContent = "Creating the job…";
      const job = await postJson("/v1/fine_tuning/jobs", body, { "Idempotency-Key": idempotencyKey });
      idempotencyKey = randomKey();
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      status.textContent = "";
      toast(error.message, "error");
    } finally {
      submit.disabled = false;
    }
  });
  main.append(h("div", { class: "page-head" }, h("h1", {}, "New fine-tuning job")), form);
}

async function adaptersView(main, selected) {
  const [modelList, adapters] = await Promise.all([models(), getJson("/v1/adapters?limit=100")]);
  const byId = Object.fromEntries(modelList.map((m) => [m.id, m]));
  const list = adapters.data;
  const body = h("tbody");
  const pgAdapter = h("select", { id: "pg-adapter", "aria-label": "Adapter" },
    list.map((a) => h("option", { value: a.id }, `${a.id} (${a.base_model})`)));
  const pgImage = h("input", { type: "file", id: "pg-image", accept: "image/*" });
  const pgPreview = h("img", { id: "pg-preview", alt: "", hidden: true });
  const pgText = h("textarea", { id: "pg-text", rows: 3, placeholder: "Type a text to classify" });
  const pgImageRow = h("label", {}, "Image", pgImage);
  const pgTextRow = h("label", {}, "Text", pgText);
  const pgButton = h("button", { type: "submit", id: "pg-predict" }, "Predict");
  const pgResults = h("ol", { id: "pg-results", class: "topk" });
  let previewUrl = null;
  onLeave(() => { if (previewUrl) URL.revokeObjectURL(previewUrl); });

  for (const a of list) {
    const base = byId[a.base_model];
    const pct = base && a.trainable_params ? (100 * a.trainable_params) / base.num_params : null;
    const dl = (format) => h("button", { type: "button", class: "small-button", "data-format": format,
      onclick: async (event) => {
        const button = event.currentTarget;
        button.disabled = true;
        try {
          const size = await download(`/v1/adapters/${encodeURIComponent(a.id)}/content${format === "peft_lora" ? "?format=peft_lora" : ""}`,
            `${a.id}${format === "peft_lora" ? "-peft-lora" : ""}.tar`);
          toast(`Downloaded ${fmtBytes(size)}.`);
        } catch (error) { toast(error.message, "error"); }
        button.disabled = false;
      } }, format === "peft_lora" ? "PEFT LoRA" : "Download");
    body.append(h("tr", { "data-id": a.id },
      h("td", { "data-label": "Adapter" }, h("code", {}, a.id)),
      h("td", { "data-label": "Base model" }, a.base_model),
      h("td", { "data-label": "Method" }, a.method),
      h("td", { "data-label": "Size" }, fmtBytes(a.bytes)),
      h("td", { "data-label": "Trainable" }, a.trainable_params
        ? `${fmtCount(a.trainable_params)}${pct !== null ? ` (${pct < 0.01 ? pct.toExponential(1) : pct.toFixed(2)}%)` : ""}` : "—"),
      h("td", { "data-label": "Labels" }, a.labels.length ? String(a.labels.length) : "—"),
      h("td", { "data-label": "Job" }, a.job_id ? h("a", { href: `#/jobs/${encodeURIComponent(a.job_id)}` }, a.job_id) : "—"),
      h("td", { "data-label": "" }, h("div", { class: "row-actions" }, dl("grft"), dl("peft_lora"),
        h("button", { type: "button", class: "small-button ghost", onclick: () => {
          pgAdapter.value = a.id; sync(); document.getElementById("playground").scrollIntoView({ behavior: "smooth" });
        } }, "Try")))));
  }
  if (!list.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted empty-row" }, "No adapters yet: a succeeded job makes one.")));

  function modality() {
    const a = list.find((x) => x.id === pgAdapter.value);
    return a && byId[a.base_model] ? byId[a.base_model].modality : "text";
  }
  function sync() {
    const image = modality() === "image";
    pgImageRow.hidden = !image;
    pgPreview.hidden = !image || !previewUrl;
    pgTextRow.hidden = image;
    pgResults.replaceChildren();
  }
  pgAdapter.addEventListener("change", sync);
  pgImage.addEventListener("change", () => {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = pgImage.files.length ? URL.createObjectURL(pgImage.files[0]) : null;
    if (previewUrl) pgPreview.src = previewUrl;
    pgPreview.hidden = !previewUrl;
  });
  if (selected && list.some((a) => a.id === selected)) pgAdapter.value = selected;
  sync();

  const playground = h("form", { id: "playground", class: "card playground" },
    h("h2", {}, "Playground"),
    list.length ? [h("label", {}, "Adapter", pgAdapter), pgImageRow, pgPreview, pgTextRow,
      h("div", { class: "actions" }, pgButton), pgResults]
      : h("p", { class: "muted" }, "Train an adapter first."));
  playground.addEventListener("submit", async (event) => {
    event.preventDefault();
    pgButton.disabled = true;
    try {
      let input;
      if (modality() === "image") {
        if (!pgImage.files.length) throw new Error("Pick an image first.");
        input = { image: await fileToBase64(pgImage.files[0]) };
      } else {
        if (!pgText.value.trim()) throw new Error("Type a text first.");
        input = { text: pgText.value };
      }
      const result = await postJson(`/v1/adapters/${encodeURIComponent(pgAdapter.value)}/predict`, { inputs: [input] });
      const prediction = result.data[0];
      pgResults.replaceChildren(...prediction.top_k.map((entry) => h("li", { class: "topk-row" },
        h("span", { class: "label" }, entry.label), bar(entry.score, entry.label),
        h("span", { class: "score" }, `${(entry.score * 100).toFixed(1)}%`))));
    } catch (error) { toast(error.message, "error"); }
    pgButton.disabled = false;
  });

  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Adapters")),
    h("div", { class: "card flush" }, h("table", { id: "adapters-table", class: "table" },
      h("thead", {}, h("tr", {}, ["Adapter", "Base model", "Method", "Size", "Trainable", "Labels", "Job", ""].map((c) => h("th", {}, c)))),
      body)),
    playground);
  if (selected) playground.scrollIntoView();
}

function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(new Error("Could not read the file."));
    reader.readAsDataURL(file);
  });
}

async function filesView(main) {
  const body = h("tbody");
  const input = h("input", { type: "file", id: "file-upload", required: true });
  const button = h("button", { type: "submit", id: "upload-file" }, "Upload");
  const form = h("form", { id: "upload-form", class: "card inline-form" },
    h("label", {}, "Upload a training file (purpose fine-tune)", input), button);
  async function refresh() {
    const files = (await getJson("/v1/files?limit=100")).data;
    body.replaceChildren(...files.map((f) => h("tr", { "data-id": f.id },
      h("td", { "data-label": "File" }, h("code", {}, f.id)),
      h("td", { "data-label": "Name" }, f.filename),
      h("td", { "data-label": "Size" }, fmtBytes(f.bytes)),
      h("td", { "data-label": "Purpose" }, f.purpose),
      h("td", { "data-label": "Created" }, fmtTime(f.created_at)))));
    if (!files.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted empty-row" }, "No files yet.")));
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!input.files.length) return;
    button.disabled = true;
    try {
      const file = await uploadFile(input.files[0]);
      toast(`Uploaded ${file.filename} as ${file.id}.`);
      form.reset();
      await refresh();
    } catch (error) { toast(error.message, "error"); }
    button.disabled = false;
  });
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Files")), form,
    h("div", { class: "card flush" }, h("table", { id: "files-table", class: "table" },
      h("thead", {}, h("tr", {}, ["File", "Name", "Size", "Purpose", "Created"].map((c) => h("th", {}, c)))), body)));
  await refresh();
}

// -- webhooks ------------------------------------------------------------------------------------

const WEBHOOK_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"];

/** The endpoints (create, test, delete), or with an id one endpoint's delivery log. */
async function webhooksView(main, selected) {
  if (selected) return webhookView(main, selected);
  const body = h("tbody");
  const url = h("input", { type: "url", id: "webhook-url", required: true, placeholder: "receiver URL (https)" });
  const boxes = WEBHOOK_EVENTS.map((name) => h("input", { type: "checkbox", value: name, checked: true,
    "data-event": name }));
  const button = h("button", { type: "submit", id: "create-webhook" }, "Add endpoint");
  const secret = h("div", { id: "webhook-secret", class: "card secret", hidden: true });
  const form = h("form", { id: "webhook-form", class: "card stack" },
    h("label", {}, "Endpoint URL", url),
    h("fieldset", { class: "events" }, h("legend", {}, "Events"),
      boxes.map((box) => h("label", { class: "check" }, box, box.value))),
    h("div", {}, button));
  async function refresh() {
    const hooks = (await getJson("/v1/webhooks?limit=100")).data;
    body.replaceChildren(...hooks.map((w) => h("tr", { "data-id": w.id },
      h("td", { "data-label": "Endpoint" }, h("a", { href: `#/webhooks/${encodeURIComponent(w.id)}` }, h("code", {}, w.id))),
      h("td", { "data-label": "URL", class: "wrap" }, w.url),
      h("td", { "data-label": "Events" }, w.events.map((e) => e.replace("fine_tuning.job.", "")).join(", ")),
      h("td", { "data-label": "Enabled" }, w.enabled ? "yes" : "no"),
      h("td", { "data-label": "Created" }, fmtTime(w.created_at)),
      h("td", { "data-label": "" }, h("div", { class: "row-actions" },
        h("button", { type: "button", class: "small-button", "data-action": "test", onclick: async () => {
          try { await postJson(`/v1/webhooks/${encodeURIComponent(w.id)}/test`, {}); location.hash = `#/webhooks/${encodeURIComponent(w.id)}`; }
          catch (error) { toast(error.message, "error"); }
        } }, "Send test"),
        h("button", { type: "button", class: "small-button ghost", "data-action": "delete", onclick: async () => {
          try { await api(`/v1/webhooks/${encodeURIComponent(w.id)}`, { method: "DELETE" }); toast(`Deleted ${w.id}.`); await refresh(); }
          catch (error) { toast(error.message, "error"); }
        } }, "Delete"))))));
    if (!hooks.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted empty-row" }, "No webhook endpoints yet.")));
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const events = boxes.filter((box) => box.checked).map((box) => box.value);
    button.disabled = true;
    try {
      const hook = await postJson("/v1/webhooks", { url: url.value.trim(), events });
      // The secret is in this answer only: show it once, for the user to copy into the receiver.
      secret.replaceChildren(h("strong", {}, "Signing secret of ", h("code", {}, hook.id)),
        h("p", { class: "muted" }, "Copy it now: it is never shown again. Receivers verify the webhook-signature header with it."),
        h("code", { id: "webhook-secret-value", class: "secret-value" }, hook.secret));
      secret.hidden = false;
      form.reset();
      await refresh();
    } catch (error) { toast(error.message, "error"); }
    button.disabled = false;
  });
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Webhooks")),
    h("p", { class: "muted" }, "Signed POSTs (Standard Webhooks) when a job succeeds, fails or is cancelled."),
    form, secret,
    h("div", { class: "card flush" }, h("table", { id: "webhooks-table", class: "table" },
      h("thead", {}, h("tr", {}, ["Endpoint", "URL", "Events", "Enabled", "Created", ""].map((c) => h("th", {}, c)))), body)));
  await refresh();
}

async function webhookView(main, id) {
  const path = `/v1/webhooks/${encodeURIComponent(id)}`;
  const hook = await getJson(path);
  const body = h("tbody");
  let timer = null;
  onLeave(() => clearTimeout(timer));
  async function refresh() {
    const list = (await getJson(`${path}/deliveries?limit=50`)).data;
    body.replaceChildren(...list.map((d) => {
      const last = d.attempt_log[d.attempt_log.length - 1];
      return h("tr", { "data-id": d.id, "data-status": d.status },
        h("td", { "data-label": "Event" }, d.event_type),
        h("td", { "data-label": "Status" }, statusBadge(d.status)),
        h("td", { "data-label": "Attempts" }, String(d.attempts)),
        h("td", { "data-label": "HTTP" }, d.last_status_code === null ? "—" : String(d.last_status_code)),
        h("td", { "data-label": "Error", class: "wrap" }, d.last_error || "—"),
        h("td", { "data-label": "Answer", class: "wrap" }, last && last.response_body ? h("code", {}, last.response_body.slice(0, 120)) : "—"),
        h("td", { "data-label": "Created" }, fmtTime(d.created_at)),
        h("td", { "data-label": "Next try" }, d.next_attempt_at ? fmtTime(d.next_attempt_at) : "—"));
    }));
    if (!list.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted empty-row" }, "No deliveries yet.")));
    // Poll while something is on its way.
    if (list.some((d) => d.status === "pending" || d.status === "sending")) timer = setTimeout(() => refresh().catch(() => {}), 1500);
  }
  const test = h("button", { type: "button", id: "webhook-test", onclick: async () => {
    try { await postJson(`${path}/test`, {}); clearTimeout(timer); await refresh(); }
    catch (error) { toast(error.message, "error"); }
  } }, "Send test event");
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Webhook ", h("code", {}, hook.id)), test),
    h("div", { class: "card" }, definitionList([["URL", hook.url], ["Events", hook.events.join(", ")],
      ["Enabled", hook.enabled ? "yes" : "no"], ["Created", fmtTime(hook.created_at)]])),
    h("h2", {}, "Deliveries"),
    h("div", { class: "card flush" }, h("table", { id: "deliveries-table", class: "table" },
      h("thead", {}, h("tr", {}, ["Event", "Status", "Attempts", "HTTP", "Error", "Answer", "Created", "Next try"].map((c) => h("th", {}, c)))), body)));
  await refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  route();
});
