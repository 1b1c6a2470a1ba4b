// The Trainyard dashboard: a client of the public API. The token lives in sessionStorage
// and goes out as a bearer header; every text from the server is set as textContent.
"use strict";

const TOKEN_KEY = "trainyard-token";
const NDJSON = "application/x-ndjson";
const $ = (selector) => document.querySelector(selector);

let me = null; // {name, is_admin}
let view = null; // what the current page holds open: {close()}

// ---- the API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    logout("Your token was refused; log in again.");
    throw new ApiError(401, "unauthorized");
  }
  if (!response.ok) {
    throw new ApiError(response.status, await errorText(response));
  }
  return response.status === 204 ? null : response.json();
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) {
      // FastAPI's validation errors: name each field and what is wrong with it.
      return body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    }
    return String(body.detail ?? response.statusText);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// Follows an NDJSON event stream, resuming after the last event id it received whenever the
// connection drops, until an `end` event or close(). onState(true|false) tells connected.
function follow(path, onEvent, onState = () => {}) {
  let after = null;
  let closed = false;
  let controller = null;

  async function connect() {
    while (!closed) {
      controller = new AbortController();
      const url = after === null ? path : `${path}${path.includes("?") ? "&" : "?"}after=${after}`;
      try {
        const response = await fetch(url, {
          headers: { Authorization: `Bearer ${token()}`, Accept: NDJSON },
          signal: controller.signal,
        });
        if (response.status === 401) {
          logout("Your token was refused; log in again.");
          return;
        }
        if (!response.ok) throw new ApiError(response.status, await errorText(response));
        onState(true);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffered = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffered += decoder.decode(value, { stream: true });
          let newline;
          while ((newline = buffered.indexOf("\n")) >= 0) {
            const line = buffered.slice(0, newline).trim();
            buffered = buffered.slice(newline + 1);
            if (!line) continue;
            const event = JSON.parse(line);
            if (event.id !== null && event.id !== undefined) after = event.id;
            onEvent(event);
            if (event.event === "end") {
              closed = true;
              return;
            }
          }
        }
      } catch (error) {
        if (closed) return;
        if (error instanceof ApiError && error.status >= 400 && error.status < 500) {
          onState(false);
          return; // gone or refused: retrying will not help
        }
      }
      onState(false);
      if (!closed) await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  connect();
  return {
    close() {
      closed = true;
      if (controller) controller.abort();
    },
  };
}

// ---- small DOM helpers -------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function show(id) {
  for (const section of ["login-view", "board-view", "job-view"]) {
    $(`#${section}`).hidden = section !== id;
  }
}

// fn, called ms after the last call; cancel() drops a pending call (a closed view).
function debounce(fn, ms) {
  let timer = null;
  const call = () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
  call.cancel = () => clearTimeout(timer);
  return call;
}

// The answer to GET path, or null when a later latest(path) was sent before it came back:
// answers can overtake one another, and an older one would paint a state that is no longer
// true (with no later event to repaint it).
const sentLoads = new Map(); // path -> number of the newest load sent
async function latest(path) {
  const sent = (sentLoads.get(path) ?? 0) + 1;
  sentLoads.set(path, sent);
  const answer = await api(path);
  return sentLoads.get(path) === sent ? answer : null;
}

// Runs the board's background loads: a 401 has already logged out (api() did), anything
// else is left for the next refresh; neither may surface as an uncaught error.
function inBackground(...loads) {
  for (const load of loads) {
    load().catch((error) => {
      if (!(error instanceof ApiError && error.status === 401)) console.warn(error);
    });
  }
}

const fixed = (value, digits = 4) =>
  value === null || value === undefined ? "–" : Number(value).toFixed(digits);

// ---- log in / out ----------------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  const given = $("#token").value.trim();
  $("#login-error").textContent = "";
  const response = await fetch("/me", { headers: { Authorization: `Bearer ${given}` } });
  if (!response.ok) {
    $("#login-error").textContent =
      response.status === 401 ? "That token is not valid." : await errorText(response);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, given);
  $("#token").value = "";
  await start();
}

function logout(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  if (view) view.close();
  view = null;
  $("#session").hidden = true;
  $("#login-error").textContent = message;
  show("login-view");
}

async function start() {
  if (!token()) {
    logout();
    return;
  }
  try {
    me = await api("/me");
  } catch {
    return;
  }
  $("#whoami").textContent = `${me.name}${me.is_admin ? " (admin)" : ""}`;
  $("#session").hidden = false;
  route();
}

function route() {
  if (!me) return;
  if (view) view.close();
  const match = location.hash.match(/^#\/jobs\/(\d+)$/);
  view = match ? openJob(Number(match[1])) : openBoard();
}

// ---- the board: jobs, GPUs, usage ----------------------------------------------------

function openBoard() {
  show("board-view");
  const refresh = debounce(() => inBackground(loadJobs, loadGpus, loadUsage), 200);
  refresh();
  inBackground(loadModels);
  // Job changes arrive on the feed; GPU utilisation and memory change without an event.
  const feed = follow("/events", refresh, (up) => $("#live").classList.toggle("down", !up));
  const timer = setInterval(() => inBackground(loadGpus, loadUsage), 5000);
  return {
    close() {
      feed.close();
      refresh.cancel();
      clearInterval(timer);
    },
  };
}

async function loadJobs() {
  const page = await latest("/jobs?limit=100");
  if (!page) return;
  const rows = page.items.map((job) => {
    const link = el("a", { href: `#/jobs/${job.id}` }, `#${job.id}`);
    const held = job.gpu_indices.length ? `${job.host}: ${job.gpu_indices.join(",")}` : "–";
    const epochs = `${job.current_epoch ?? 0}/${job.spec.epochs}`;
    const last = job.last_metrics ? fixed(job.last_metrics.val_accuracy) : "–";
    const queue =
      job.status === "queued"
        ? `#${job.queue_position}${job.waiting_reason ? `: ${job.waiting_reason}` : ""}`
        : "";
    return el(
      "tr",
      { "data-job-id": job.id, "data-status": job.status },
      el("td", {}, link),
      el("td", { class: "name" }, job.name ?? ""),
      el("td", { class: "owner" }, job.owner ?? ""),
      el("td", { class: "status" }, job.status),
      el("td", { class: "gpus" }, held),
      el("td", { class: "epoch" }, epochs),
      el("td", { class: "val-accuracy" }, last),
      el("td", { class: "queue" }, queue),
    );
  });
  $("#jobs tbody").replaceChildren(...rows);
  $("#jobs-empty").hidden = rows.length > 0;
}

async function loadModels() {
  const select = $("#submit select[name=model]");
  const chosen = select.value;
  const models = await api("/models");
  select.replaceChildren(
    ...models.map((m) =>
      el(
        "option",
        { value: m.id ?? m.name },
        m.id === null ? m.name : `#${m.id} ${m.name} (uploaded)`,
      ),
    ),
  );
  if ([...select.options].some((option) => option.value === chosen)) select.value = chosen;
}

async function loadGpus() {
  const hosts = await latest("/gpus");
  if (!hosts) return;
  const boards = hosts.map((host) => {
    const gpus = host.gpus.map((gpu) => {
      let holder = "free";
      if (gpu.state === "leased") holder = `job #${gpu.job_id} · ${gpu.user ?? "?"}`;
      if (gpu.state === "foreign") holder = `foreign process, PIDs ${gpu.foreign_pids.join(", ")}`;
      const meters = [];
      if (gpu.utilization_percent !== null) meters.push(`${gpu.utilization_percent}% busy`);
      if (gpu.memory_total_mib !== null) {
        meters.push(`${gpu.memory_used_mib ?? "?"} / ${gpu.memory_total_mib} MiB`);
      }
      return el(
        "div",
        { class: "gpu", "data-index": gpu.index, "data-state": gpu.state },
        el("strong", {}, `GPU ${gpu.index}`),
        ` ${gpu.name} — `,
        el("span", { class: "holder" }, holder),
        el("div", { class: "meter" }, meters.join(" · ")),
      );
    });
    const kind = host.simulated ? " (simulated)" : "";
    return el(
      "div",
      { class: `host${host.alive ? "" : " dead"}`, "data-host": host.name },
      el("h3", {}, `${host.name}${kind}`),
      ...(gpus.length ? gpus : [el("div", { class: "meter" }, "no GPUs")]),
    );
  });
  $("#gpus").replaceChildren(...(boards.length ? boards : [el("p", {}, "No worker hosts.")]));
}

async function loadUsage() {
  const users = await latest("/usage");
  if (!users) return;
  $("#usage tbody").replaceChildren(
    ...users.map((u) =>
      el(
        "tr",
        { "data-user": u.user },
        el("td", {}, u.user),
        el("td", { class: "h24" }, u.gpu_hours_24h.toFixed(2)),
        el("td", { class: "h7d" }, u.gpu_hours_7d.toFixed(2)),
      ),
    ),
  );
}

async function submitJob(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const spec = {
    epochs: Number(form.get("epochs")),
    gpus: Number(form.get("gpus")),
  };
  const model = String(form.get("model"));
  spec.model = /^\d+$/.test(model) ? Number(model) : model;
  const dataset = String(form.get("dataset")).trim();
  spec.dataset = /^\d+$/.test(dataset) ? Number(dataset) : dataset;
  const name = String(form.get("name")).trim();
  if (name) spec.name = name;
  const result = $("#submit-result");
  result.className = "";
  try {
    const job = await api("/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(spec),
    });
    result.replaceChildren("Submitted ", el("a", { href: `#/jobs/${job.id}` }, `job #${job.id}`));
    inBackground(loadJobs);
  } catch (error) {
    result.className = "error";
    result.textContent = error.message;
  }
}

// ---- one job: card, live curves, log, cancel -----------------------------------------

function openJob(jobId) {
  show("job-view");
  const epochs = new Map(); // epoch number -> record (a retried epoch replaces its earlier record)
  let job = null;
  $("#job-title").textContent = `Job #${jobId}`;
  $("#log").textContent = "";
  $("#job-error").textContent = "";
  $("#cancel").hidden = true;
  drawCharts(epochs, 1);

  // An answer that arrives after this page closed (another job opened), or after a newer
  // reload was sent, is dropped: it would repaint the card, and its cancel button, with a
  // job that is no longer shown or a status that is no longer true.
  let closed = false;
  const redraw = () => drawCharts(epochs, job ? job.spec.epochs : 1);
  const reload = async () => {
    let answer;
    try {
      answer = await latest(`/jobs/${jobId}`);
    } catch (error) {
      if (!closed) $("#job-error").textContent = error.message;
      return;
    }
    if (closed || !answer) return;
    job = answer;
    showCard(job);
    redraw();
  };
  reload();
  const stream = follow(`/jobs/${jobId}/events`, (event) => {
    if (closed) return;
    if (event.event === "epoch") {
      epochs.set(event.data.epoch, event.data);
      if (job && event.data.epoch >= (job.current_epoch ?? 0)) {
        job.current_epoch = event.data.epoch;
        job.last_metrics = event.data;
        showCard(job);
      }
      redraw();
    } else if (event.event === "log") {
      appendLog(event.data.lines);
    } else if (event.event === "status" || event.event === "end") {
      reload();
    }
  });
  return {
    close() {
      closed = true;
      stream.close();
    },
  };
}

function showCard(job) {
  $("#job-title").textContent = `Job #${job.id}${job.name ? ` — ${job.name}` : ""}`;
  const resolved = job.resolved || {};
  const last = job.last_metrics || {};
  const rows = [
    ["Status", job.status],
    ["Owner", job.owner ?? "–"],
    ["Model", typeof job.spec.model === "number" ? `uploaded #${job.spec.model}` : job.spec.model],
    ["Parameters", resolved.params !== undefined ? Number(resolved.params).toLocaleString() : "–"],
    ["Precision", resolved.precision ?? "–"],
    ["Dataset", job.spec.dataset],
    ["GPUs", job.gpu_indices.length ? `${job.host}: ${job.gpu_indices.join(", ")}` : job.spec.gpus],
    ["Epoch", `${job.current_epoch ?? 0}/${job.spec.epochs}`],
    ["val_accuracy", fixed(last.val_accuracy)],
    ["val_loss", fixed(last.val_loss)],
    ["Attempt", job.attempt],
  ];
  if (job.status === "queued") {
    rows.push(["Queue", `#${job.queue_position}`], ["Waiting", job.waiting_reason ?? "–"]);
  }
  if (job.failure_reason) rows.push(["Failure", `${job.failure_reason}: ${job.failure_message}`]);
  $("#job-card").replaceChildren(
    ...rows.flatMap(([term, value]) => [
      el("dt", {}, term),
      el("dd", { "data-field": term.toLowerCase() }, value),
    ]),
  );
  const active = ["queued", "placed", "running"].includes(job.status);
  const allowed = me && (me.is_admin || me.name === job.owner);
  $("#cancel").hidden = !(active && allowed) || job.cancel_requested;
  $("#cancel").dataset.jobId = job.id;
}

function appendLog(lines) {
  const log = $("#log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(document.createTextNode(lines.map((line) => `${line}\n`).join("")));
  // Keep the page light on a long run: the newest 2,000 lines.
  const text = log.textContent;
  const extra = text.split("\n").length - 2001;
  if (extra > 0) log.textContent = text.split("\n").slice(extra).join("\n");
  if (atBottom) log.scrollTop = log.scrollHeight;
}

async function cancelJob() {
  const jobId = $("#cancel").dataset.jobId;
  $("#job-error").textContent = "";
  const stillShown = () => location.hash === `#/jobs/${jobId}`;
  try {
    const job = await api(`/jobs/${jobId}/cancel`, { method: "POST" });
    if (stillShown()) showCard(job);
  } catch (error) {
    if (stillShown()) $("#job-error").textContent = error.message;
  }
}

// ---- charts (SVG, drawn here: no charting library to vendor) ---------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

function drawCharts(epochs, plannedEpochs) {
  const records = [...epochs.values()].sort((a, b) => a.epoch - b.epoch);
  drawChart($("#loss-chart"), records, plannedEpochs, [
    ["loss", "train", "loss"],
    ["val_loss", "val", "val_loss"],
  ]);
  drawChart($("#accuracy-chart"), records, plannedEpochs, [
    ["accuracy", "train", "accuracy"],
    ["val_accuracy", "val", "val_accuracy"],
  ]);
}

function drawChart(chart, records, plannedEpochs, series) {
  const box = { left: 44, right: 470, top: 14, bottom: 228 };
  const values = records.flatMap((r) => series.map(([key]) => r[key])).filter(Number.isFinite);
  const maxEpoch = Math.max(plannedEpochs, ...records.map((r) => r.epoch), 1);
  let low = values.length ? Math.min(...values) : 0;
  let high = values.length ? Math.max(...values) : 1;
  if (high - low < 1e-9) {
    low -= 0.5;
    high += 0.5;
  }
  const x = (epoch) => box.left + ((epoch - 1) / Math.max(maxEpoch - 1, 1)) * (box.right - box.left);
  const y = (value) => box.bottom - ((value - low) / (high - low)) * (box.bottom - box.top);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const value = low + ((high - low) * i) / 4;
    parts.push(svg("line", { class: "grid", x1: box.left, x2: box.right, y1: y(value), y2: y(value) }));
    parts.push(svg("text", { x: 4, y: y(value) + 4 }, value.toFixed(3)));
  }
  parts.push(svg("line", { class: "axis", x1: box.left, x2: box.right, y1: box.bottom, y2: box.bottom }));
  parts.push(svg("text", { x: box.left, y: 244 }, "epoch 1"));
  parts.push(svg("text", { x: box.right - 50, y: 244 }, `epoch ${maxEpoch}`));
  series.forEach(([key, kind, label], n) => {
    const points = records.filter((r) => Number.isFinite(r[key]));
    if (points.length) {
      const path = points.map((r) => `${x(r.epoch).toFixed(1)},${y(r[key]).toFixed(1)}`).join(" ");
      parts.push(svg("polyline", { class: kind, points: path, "data-series": key }));
      for (const r of points) parts.push(svg("circle", { class: kind, cx: x(r.epoch), cy: y(r[key]), r: 2.5 }));
    }
    parts.push(svg("text", { class: `legend ${kind}`, x: box.left + 10 + n * 120, y: 262 }, `— ${label}`));
  });
  chart.replaceChildren(...parts);
  chart.dataset.points = String(records.length);
}

// ---- start -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", login);
  $("#logout").addEventListener("click", () => logout());
  $("#submit").addEventListener("submit", submitJob);
  $("#cancel").addEventListener("click", cancelJob);
  window.addEventListener("hashchange", route);
  start();
});
