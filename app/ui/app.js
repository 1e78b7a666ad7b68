// peftserve dashboard: plain JS, no build step. Hash routes: #/jobs, #/jobs/<id>, #/adapters, #/try, #/evaluate.
// Every API call carries the key kept in localStorage; a 401 asks for it again.
"use strict";

const KEY = "peftserve.apiKey";
const API = "../"; // the API sits one level above /ui/
const view = document.getElementById("view");
const errorBox = document.getElementById("error");
const keyForm = document.getElementById("key-form");
let leave = () => {}; // the current screen's clean-up (timers, streams, charts)
let navGen = 0; // bumped by each navigation: a screen whose await returns after the user left stops there
const left = (gen) => gen !== navGen;

// ---- helpers ----------------------------------------------------------------------------------
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const fmt = (v, d = 4) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(d)) : esc(v ?? "–"));
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const bar = (fraction, cls = "") =>
  `<div class="bar ${cls}" title="${Math.round(fraction * 100)}%"><span style="width:${(fraction * 100).toFixed(1)}%"></span></div>`;
const badge = (status) => `<span class="badge ${esc(status)}">${esc(status)}</span>`;

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  const key = localStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function askKey() {
  keyForm.hidden = false;
  document.getElementById("key-input").focus();
}

// Turn a failed response into its error envelope's message; 401 also asks for a key again.
async function failure(r) {
  let message = `${r.status} ${r.statusText}`;
  try {
    const body = await r.json();
    if (body.error) message = body.error.message + (body.error.field ? ` (${body.error.field})` : "");
  } catch (_) {}
  if (r.status === 401) {
    askKey();
    message = `${message} — enter an API key`;
  }
  showError(message);
  return new ApiError(message, r.status);
}

async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(API + path, init);
  if (!r.ok) throw await failure(r);
  showError("");
  return r.json();
}

// Server-Sent Events over fetch() (EventSource cannot send the Authorization header). Reconnects with
// after=<last id> until the server sends `event: end`.
async function follow(path, onMessage, signal) {
  let last = 0;
  while (!signal.aborted) {
    try {
      const r = await fetch(`${API}${path}${path.includes("?") ? "&" : "?"}stream=true&after=${last}`, {
        headers: headers({ Accept: "text/event-stream" }),
        signal,
      });
      if (!r.ok) throw await failure(r);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let msg = {};
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).replace(/\r$/, "");
          buffer = buffer.slice(nl + 1);
          if (line === "") {
            if (msg.data !== undefined) {
              if (msg.id) last = Number(msg.id);
              onMessage(msg.event || "message", JSON.parse(msg.data));
              if (msg.event === "end") return;
            }
            msg = {};
          } else if (!line.startsWith(":")) {
            const field = line.split(":", 1)[0];
            let value = line.slice(field.length + 1);
            if (value.startsWith(" ")) value = value.slice(1);
            if (field === "data") msg.data = msg.data === undefined ? value : `${msg.data}\n${value}`;
            else msg[field] = value;
          }
        }
      }
    } catch (e) {
      // a 4xx (unknown job, bad key) ends it; a 5xx or a dropped connection (a restarting server) retries
      if (signal.aborted || (e instanceof ApiError && e.status < 500)) return;
    }
    await sleep(2000);
  }
}

// ---- charts (uPlot) ---------------------------------------------------------------------------
// Each chart's container carries data-points (its number of x values) for tests and curious users.
window.peftserveCharts = {};

function chart(el, name, title, series, yRange) {
  const opts = {
    title,
    width: Math.max(el.clientWidth, 300),
    height: 220,
    scales: { x: { time: false }, y: yRange ? { range: yRange } : {} },
    axes: [{ label: "step" }, {}],
    series: [{ label: "step" }, ...series.map(([label, stroke]) => ({ label, stroke, width: 2, points: { size: 5 } }))],
  };
  const plot = new uPlot(opts, [[], ...series.map(() => [])], el);
  const set = (data) => {
    plot.setData(data);
    el.dataset.points = data[0].length;
    window.peftserveCharts[name] = data[0].length;
  };
  set([[], ...series.map(() => [])]);
  return { plot, set, resize: () => plot.setSize({ width: Math.max(el.clientWidth, 300), height: 220 }) };
}

// ---- screens ----------------------------------------------------------------------------------
async function jobsScreen(gen) {
  view.innerHTML = `<h1>Jobs</h1><div class="card"><table id="jobs"><thead><tr>
    <th>job</th><th>adapter</th><th>base</th><th>status</th><th>progress</th><th class="num">step</th>
    <th>created</th><th>result</th></tr></thead><tbody></tbody></table></div>`;
  const body = view.querySelector("tbody");
  let timer;
  const refresh = async () => {
    if (left(gen)) return;
    try {
      const { data } = await api("jobs?limit=50");
      if (left(gen)) return;
      body.innerHTML =
        data
          .map((j) => {
            const res = j.result ? `${esc(j.result.adapter)} <span class="muted">acc ${fmt(j.result.metrics.accuracy, 3)}</span>` : esc(j.error?.message ?? "");
            return `<tr data-status="${esc(j.status)}"><td><a href="#/jobs/${esc(j.id)}">${esc(j.id)}</a></td>
              <td>${esc(j.adapter)}</td><td>${esc(j.base_model)}</td><td>${badge(j.status)}</td>
              <td>${bar(j.progress.fraction, j.status === "succeeded" ? "green" : "")}</td>
              <td class="num">${j.progress.step}/${j.progress.total_steps}</td><td>${when(j.created_at)}</td><td>${res}</td></tr>`;
          })
          .join("") || `<tr><td colspan="8" class="muted">No jobs yet: POST /jobs to train an adapter.</td></tr>`;
    } catch (_) {}
    timer = setTimeout(refresh, 2000);
  };
  refresh();
  leave = () => clearTimeout(timer);
}

async function jobScreen(id, gen) {
  view.innerHTML = `<h1>Job <code>${esc(id)}</code></h1>
    <div class="card" id="summary">Loading…</div>
    <div class="row">
      <div class="card"><div class="chart" data-chart="loss"></div></div>
      <div class="card"><div class="chart" data-chart="lr"></div></div>
      <div class="card"><div class="chart" data-chart="eval"></div></div>
    </div>
    <div class="row">
      <div class="card"><h2>Hyperparameters</h2><table class="kv" id="hp"></table></div>
      <div class="card"><h2>Events</h2><div class="events" id="events"></div></div>
    </div>`;
  const el = (name) => view.querySelector(`[data-chart="${name}"]`);
  const charts = {
    loss: chart(el("loss"), "loss", "Training loss", [["loss", "#d9534f"]]),
    lr: chart(el("lr"), "lr", "Learning rate", [["learning rate", "#4a7bdc"]]),
    eval: chart(el("eval"), "eval", "Validation (per evaluation)", [["accuracy", "#3aa45b"], ["macro-F1", "#e08a1e"]], [0, 1]),
  };
  const stop = new AbortController();
  let pending = null;

  const render = async () => {
    const [job, m] = await Promise.all([api(`jobs/${id}`), api(`jobs/${id}/metrics`)]);
    if (left(gen)) return;
    const p = job.progress;
    const live = ["queued", "running", "paused"].includes(job.status);
    const cancel = [
      live ? `<button class="secondary" id="cancel">Cancel</button>` : "",
      ["queued", "running"].includes(job.status) ? `<button class="secondary" id="pause">Pause</button>` : "",
      job.status === "paused" ? `<button class="secondary" id="resume">Resume</button>` : "",
    ].join(" ");
    view.querySelector("#summary").innerHTML = `
      <div class="row" style="align-items:center">
        <div>${badge(job.status)} adapter <b>${esc(job.adapter)}</b> on <b>${esc(job.base_model)}</b></div>
        <div style="flex:1">${bar(p.fraction, job.status === "succeeded" ? "wide green" : "wide")}</div>
        <div class="muted">step ${p.step}/${p.total_steps} · epoch ${fmt(p.epoch, 3)}</div> ${cancel}
      </div>
      <div class="muted">created ${when(job.created_at)} · started ${when(job.started_at)} · finished ${when(job.finished_at)}
        · attempts ${job.attempts}${job.estimated_finish ? ` · <span data-eta>ETA ${when(job.estimated_finish)}</span>` : ""}${job.result ? ` · result <a href="#/adapters">${esc(job.result.adapter)}</a>` : ""}</div>
      ${job.error ? `<div class="error">${esc(job.error.code)}: ${esc(job.error.message)}</div>` : ""}
      ${job.result ? `<div>accuracy <b>${fmt(job.result.metrics.accuracy, 3)}</b> · macro-F1 <b>${fmt(job.result.metrics.f1_macro, 3)}</b></div>` : ""}
      ${(job.result?.warnings ?? []).map(w => `<div class="warning" data-warning>warning: ${esc(w)}</div>`).join("")}`;
    for (const action of ["cancel", "pause", "resume"]) {
      view.querySelector(`#${action}`)?.addEventListener("click", () => api(`jobs/${id}/${action}`, { method: "POST" }).then(render, () => {}));
    }
    view.querySelector("#hp").innerHTML = Object.entries(job.hyperparameters)
      .map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(Array.isArray(v) ? v.join(", ") : v ?? "default")}</td></tr>`)
      .join("");
    const t = m.train;
    charts.loss.set([t.map((x) => x.step), t.map((x) => x.loss)]);
    charts.lr.set([t.map((x) => x.step), t.map((x) => x.learning_rate)]);
    charts.eval.set([m.eval.map((x) => x.step), m.eval.map((x) => x.accuracy), m.eval.map((x) => x.f1_macro)]);
  };
  // At most one refresh in flight and one waiting: bursts of events cost one or two reloads.
  const refresh = () => {
    if (pending) return pending.then(() => (pending ? null : refresh()));
    pending = render()
      .catch(() => {})
      .finally(() => (pending = null));
    return pending;
  };
  const events = view.querySelector("#events");
  const onMessage = (type, e) => {
    if (type === "end") {
      refresh();
      return;
    }
    const line = document.createElement("div");
    line.className = e.level;
    line.textContent = `${new Date(e.created_at).toLocaleTimeString()}  ${e.message}`;
    const atBottom = events.scrollTop + events.clientHeight >= events.scrollHeight - 4;
    events.append(line);
    if (atBottom) events.scrollTop = events.scrollHeight;
    refresh();
  };
  const onResize = () => Object.values(charts).forEach((c) => c.resize());
  window.addEventListener("resize", onResize);
  leave = () => {  // set before the first await: leaving early stops everything this screen starts
    stop.abort();
    window.removeEventListener("resize", onResize);
    Object.values(charts).forEach((c) => c.plot.destroy());
    window.peftserveCharts = {};
  };
  await refresh();
  if (left(gen)) return;
  follow(`jobs/${id}/events`, onMessage, stop.signal);
}

async function adaptersScreen(gen) {
  view.innerHTML = `<h1>Adapters</h1><div id="adapters">Loading…</div>`;
  const { data, loaded } = await api("adapters");
  if (left(gen)) return;
  const resident = new Set(loaded.map((l) => l.adapter));
  view.querySelector("#adapters").innerHTML =
    data
      .map(
        (a) => `<div class="card"><h2>${esc(a.name)} <span class="muted">latest ${esc(a.latest)}</span></h2>
      <table><thead><tr><th>version</th><th>base</th><th>labels</th><th class="num">accuracy</th><th class="num">macro-F1</th>
      <th>created</th><th class="num">size</th><th>job</th><th></th></tr></thead><tbody>
      ${a.versions
        .map(
          (v) => `<tr><td>${esc(v.ref)}${resident.has(v.ref) ? ' <span class="badge">loaded</span>' : ""}</td>
        <td>${esc(v.base_model)}</td><td>${esc(v.labels.join(", "))}</td>
        <td class="num">${fmt(v.metrics.accuracy, 3)}</td><td class="num">${fmt(v.metrics.f1_macro, 3)}</td>
        <td>${when(v.created_at)}</td><td class="num">${(v.size_bytes / 1024).toFixed(0)} KiB</td>
        <td>${v.job_id ? `<a href="#/jobs/${esc(v.job_id)}">job</a>` : ""}</td>
        <td><a href="#/try?adapter=${encodeURIComponent(v.ref)}">try</a> · <a href="#/evaluate?adapter=${encodeURIComponent(v.ref)}">evaluate</a></td></tr>`,
        )
        .join("")}</tbody></table></div>`,
      )
      .join("") || `<div class="card muted">No adapters yet.</div>`;
}

// An adapter picker filled from GET /adapters: each name (newest version) and each pinned version.
async function adapterSelect(selected) {
  const { data } = await api("adapters");
  const refs = data.flatMap((a) => [a.name, ...a.versions.map((v) => v.ref).reverse()]);
  if (selected && !refs.includes(selected)) refs.unshift(selected);
  return `<select id="adapter">${refs.map((r) => `<option${r === selected ? " selected" : ""}>${esc(r)}</option>`).join("")}</select>`;
}

async function tryScreen(params, gen) {
  const select = await adapterSelect(params.get("adapter"));
  if (left(gen)) return;
  view.innerHTML = `<h1>Try it</h1><form class="card" id="try">
    <label for="adapter">Adapter</label>${select}
    <label for="inputs">Texts, one per line</label><textarea id="inputs" required>A lovely, superb film.</textarea>
    <p><button type="submit">Predict</button></p><div id="predictions"></div></form>`;
  view.querySelector("#try").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const inputs = view.querySelector("#inputs").value.split("\n").filter((s) => s.trim());
    const out = view.querySelector("#predictions");
    try {
      const r = await api("predict", { method: "POST", body: { adapter: view.querySelector("#adapter").value, inputs } });
      out.innerHTML = `<div class="muted">served by ${esc(r.adapter)}</div>` + r.predictions
        .map((p, i) => `<div class="prediction"><div class="text">“${esc(inputs[i])}” → ${"labels" in p
            ? `<b class="label">${p.labels.length ? p.labels.map(esc).join(", ") : "(none)"}</b>`
            : `<b class="label">${esc(p.label)}</b> ${fmt(p.score, 3)}`}</div>
          ${Object.entries(p.scores)
            .sort((a, b) => b[1] - a[1])
            .map(([label, s]) => `<div class="score" data-label="${esc(label)}"><span>${esc(label)}</span>${bar(s, "wide")}<span class="num">${s.toFixed(3)}</span></div>`)
            .join("")}</div>`)
        .join("");
    } catch (_) {}
  });
}

async function evaluateScreen(params, gen) {
  const select = await adapterSelect(params.get("adapter"));
  if (left(gen)) return;
  view.innerHTML = `<h1>Evaluate</h1><form class="card" id="evaluate">
    <label for="adapter">Adapter</label>${select}
    <label for="records">Labelled records, JSONL: one <code>{"text": …, "label": …}</code> per line</label>
    <textarea id="records" required placeholder='{"text": "a lovely film", "label": "pos"}'></textarea>
    <p><button type="submit">Evaluate</button></p><div id="result"></div></form>`;
  view.querySelector("#evaluate").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = view.querySelector("#result");
    const lines = view.querySelector("#records").value.split("\n").filter((s) => s.trim());
    let records;
    try {
      records = lines.map((l, i) => {
        try {
          return JSON.parse(l);
        } catch (e) {
          throw new Error(`line ${i + 1} is not JSON: ${e.message}`);
        }
      });
    } catch (e) {
      showError(e.message);
      return;
    }
    try {
      const r = await api("evaluate", { method: "POST", body: { adapter: view.querySelector("#adapter").value, records } });
      if (!r.confusion_matrix) {  // a multi-label adapter: its figures and each label's
        out.innerHTML = `<p>${esc(r.adapter)} on ${r.n} records: micro-F1 <b>${fmt(r.f1_micro, 3)}</b> · macro-F1
          <b>${fmt(r.f1_macro, 3)}</b> · subset accuracy ${fmt(r.subset_accuracy, 3)} · Hamming loss ${fmt(r.hamming_loss, 3)}</p>
          <table style="width:auto"><thead><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr></thead><tbody>
          ${Object.entries(r.per_label).map(([l, m]) => `<tr><th>${esc(l)}</th><td>${fmt(m.precision, 3)}</td><td>${fmt(m.recall, 3)}</td><td>${fmt(m.f1, 3)}</td><td>${m.support}</td></tr>`).join("")}
          </tbody></table>`;
        return;
      }
      const max = Math.max(1, ...r.confusion_matrix.flat());
      out.innerHTML = `<p>${esc(r.adapter)} on ${r.n} records: accuracy <b>${fmt(r.accuracy, 3)}</b> · macro-F1
        <b>${fmt(r.f1_macro, 3)}</b> · macro precision ${fmt(r.precision_macro, 3)} · macro recall ${fmt(r.recall_macro, 3)}</p>
        <table class="confusion" style="width:auto"><thead><tr><th class="true">true ↓ / predicted →</th>
        ${r.labels.map((l) => `<th class="pred">${esc(l)}</th>`).join("")}</tr></thead><tbody>
        ${r.confusion_matrix
          .map((row, i) => `<tr><th>${esc(r.labels[i])}</th>${row
            .map((n, j) => `<td style="background:rgba(${i === j ? "58,164,91" : "217,83,79"},${(0.08 + (0.6 * n) / max).toFixed(2)})">${n}</td>`)
            .join("")}</tr>`)
          .join("")}</tbody></table>`;
    } catch (_) {}
  });
}

// ---- routing ----------------------------------------------------------------------------------
async function route() {
  const gen = ++navGen;
  leave();
  leave = () => {};
  showError("");
  const [path, query] = (location.hash.slice(1) || "/jobs").split("?");
  const params = new URLSearchParams(query);
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === `#${path}`));
  const job = path.match(/^\/jobs\/([\w-]+)$/);
  try {
    if (job) await jobScreen(job[1], gen);
    else if (path === "/adapters") await adaptersScreen(gen);
    else if (path === "/try") await tryScreen(params, gen);
    else if (path === "/evaluate") await evaluateScreen(params, gen);
    else await jobsScreen(gen);
  } catch (e) {
    if (!(e instanceof ApiError) && !left(gen)) showError(String(e));
  }
}

keyForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem(KEY, document.getElementById("key-input").value.trim());
  keyForm.hidden = true;
  route();
});
document.getElementById("change-key").addEventListener("click", askKey);
window.addEventListener("hashchange", route);
if (!localStorage.getItem(KEY)) askKey();
route();
