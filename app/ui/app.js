// peftserve dashboard: plain JS, no build step. Hash routes: #/jobs, #/jobs/<id>, #/new, #/adapters, #/try,
// #/evaluate.
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
    message = localStorage.getItem(KEY) ? "this API key is not accepted: enter another" : "enter an API key";
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

// A small number's tick labels (a learning rate of 5e-4 read "0" with uPlot's default format).
const tickLabels = (u, ticks) => ticks.map((v) => (v === 0 ? "0" : Math.abs(v) < 0.01 ? v.toExponential(1) : +v.toPrecision(3)));

function showLatest(u) {
  const n = u.data[0].length;
  if (n && u.cursor.left < 0) u.setLegend({ idx: n - 1 });
}

function chart(el, name, title, series, yRange, xLabel = "step") {
  const opts = {
    title,
    width: Math.max(el.clientWidth, 300),
    height: 220,
    scales: { x: { time: false }, y: yRange ? { range: yRange } : {} },
    axes: [{ label: xLabel }, { values: tickLabels, size: 60 }],
    // the legend shows the latest values (not "--" until hovered), once the data is drawn
    hooks: { ready: [showLatest], setData: [showLatest] },
    series: [
      { label: xLabel },
      ...series.map(([label, stroke]) => ({ label, stroke, width: 2, points: { size: 5 }, value: (u, v) => (v == null ? "–" : +v.toPrecision(3)) })),
    ],
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

// Which epoch's weights a job saved, and why (the best validation macro-F1, or simply the last).
function kept(m) {
  if (m.best_step === undefined) return `<div class="muted" data-kept>kept the last step's weights (no validation)</div>`;
  const why = m.best_step === m.steps ? "the last evaluation was the best" : `an earlier evaluation had the best macro-F1 (step ${m.best_step} of ${m.steps})`;
  return `<div class="muted" data-kept>kept the weights of step ${m.best_step}: ${why}; the figures above are that evaluation's</div>`;
}

// ---- screens ----------------------------------------------------------------------------------
async function jobsScreen(gen) {
  view.innerHTML = `<h1>Jobs</h1><div class="card"><p><button id="compare" class="secondary" type="button" disabled>Compare ticked runs</button></p>
    <table id="jobs"><thead><tr><th></th>
    <th>job</th><th>adapter</th><th>base</th><th>status</th><th>progress</th><th class="num">step</th>
    <th>created</th><th>result</th></tr></thead><tbody></tbody></table></div>`;
  const body = view.querySelector("tbody");
  const ticked = new Set(); // kept across the table's refreshes
  const compare = view.querySelector("#compare");
  body.addEventListener("change", (ev) => {
    const id = ev.target.dataset?.compare;
    if (!id) return;
    ev.target.checked ? ticked.add(id) : ticked.delete(id);
    compare.disabled = ticked.size < 2;
  });
  compare.addEventListener("click", () => (location.hash = `#/compare?jobs=${[...ticked].join(",")}`));
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
            return `<tr data-status="${esc(j.status)}"><td><input type="checkbox" data-compare="${esc(j.id)}"${ticked.has(j.id) ? " checked" : ""}></td><td><a href="#/jobs/${esc(j.id)}">${esc(j.id)}</a></td>
              <td>${esc(j.adapter)}</td><td>${esc(j.base_model)}</td><td>${badge(j.status)}</td>
              <td>${bar(j.progress.fraction, j.status === "succeeded" ? "green" : "")}</td>
              <td class="num">${j.progress.step}/${j.progress.total_steps}</td><td>${when(j.created_at)}</td><td>${res}</td></tr>`;
          })
          .join("") || `<tr><td colspan="9" class="muted">No jobs yet: start one on the <a href="#/new">New job</a> page.</td></tr>`;
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
    eval: chart(el("eval"), "eval", "Validation (per evaluation)", [["accuracy", "#3aa45b"], ["macro-F1", "#e08a1e"], ["loss", "#d9534f"]]),
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
      <div class="muted" data-dataset>trained on <a href="#/new?dataset=${esc(job.train_dataset)}">${esc(job.train_dataset)}</a>${job.validation_dataset
        ? `, validated on <a href="#/new?dataset=${esc(job.validation_dataset)}">${esc(job.validation_dataset)}</a>`
        : `, validated on ${fmt(job.validation_split * 100, 3)}% of it`}</div>
      ${job.result ? `<div>accuracy <b>${fmt(job.result.metrics.accuracy, 3)}</b> · macro-F1 <b>${fmt(job.result.metrics.f1_macro, 3)}</b> · validation loss ${fmt(job.result.metrics.loss, 3)}</div>${kept(job.result.metrics)}` : ""}
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
    charts.eval.set([m.eval.map((x) => x.step), m.eval.map((x) => x.accuracy), m.eval.map((x) => x.f1_macro), m.eval.map((x) => x.loss)]);
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
        (a) => `<div class="card"><h2>${esc(a.name)} <span class="muted">latest ${esc(a.latest)}</span>${a.versions.filter((v) => v.job_id).length > 1
          ? ` <a class="small" href="#/compare?jobs=${a.versions.filter((v) => v.job_id).map((v) => encodeURIComponent(v.job_id)).join(",")}">compare versions</a>` : ""}</h2>
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

// ---- compare runs ---------------------------------------------------------------------------------
// Two or more jobs side by side: validation accuracy, macro-F1 and loss per epoch on one chart each (a line per
// job), and their hyperparameters in one table, the rows that differ highlighted.
const PALETTE = ["#2456c8", "#d9534f", "#3aa45b", "#e08a1e", "#8e44ad", "#16a2b8", "#7f8c8d", "#c0392b"];

async function compareScreen(params, gen) {
  const ids = (params.get("jobs") || "").split(",").filter(Boolean);
  if (ids.length < 2) {
    view.innerHTML = `<h1>Compare runs</h1><div class="card muted">Tick two or more jobs on the <a href="#/jobs">Jobs</a> page (or
      "compare versions" on an adapter) to compare them.</div>`;
    return;
  }
  const runs = await Promise.all(ids.map(async (id) => ({ job: await api(`jobs/${id}`), m: await api(`jobs/${id}/metrics`) })));
  if (left(gen)) return;
  const name = (r) => `${r.job.adapter} · ${r.job.id.slice(0, 12)}`;
  view.innerHTML = `<h1>Compare runs</h1>
    <div class="row">${["accuracy", "f1_macro", "loss"].map((k) => `<div class="card"><div class="chart" data-chart="cmp-${k}"></div></div>`).join("")}</div>
    <div class="card"><h2>Hyperparameters</h2><table id="compare-hp"></table></div>`;
  const epochs = [...new Set(runs.flatMap((r) => r.m.eval.map((p) => p.epoch)))].sort((a, b) => a - b);
  const series = runs.map((r, i) => [name(r), PALETTE[i % PALETTE.length]]);
  const charts = {};
  for (const [key, title] of [["accuracy", "Validation accuracy"], ["f1_macro", "Validation macro-F1"], ["loss", "Validation loss"]]) {
    const c = (charts[key] = chart(view.querySelector(`[data-chart="cmp-${key}"]`), `cmp-${key}`, `${title} per epoch`, series, null, "epoch"));
    c.set([epochs, ...runs.map((r) => epochs.map((e) => r.m.eval.find((p) => p.epoch === e)?.[key] ?? null))]);
  }
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r.job.hyperparameters)))];
  const show = (v) => (Array.isArray(v) ? v.join(", ") : v === null || v === undefined ? "default" : String(v));
  const rows = [
    ["base model", runs.map((r) => r.job.base_model)],
    ["training data", runs.map((r) => r.job.train_dataset)],
    ["validation", runs.map((r) => r.job.validation_dataset ?? `${r.job.validation_split * 100}% split`)],
    ...keys.map((k) => [k, runs.map((r) => show(r.job.hyperparameters[k]))]),
    ["accuracy (kept)", runs.map((r) => fmt(r.job.result?.metrics.accuracy, 3))],
    ["macro-F1 (kept)", runs.map((r) => fmt(r.job.result?.metrics.f1_macro, 3))],
  ];
  view.querySelector("#compare-hp").innerHTML = `<thead><tr><th></th>${runs.map((r, i) => `<th style="color:${PALETTE[i % PALETTE.length]}"><a href="#/jobs/${esc(r.job.id)}">${esc(name(r))}</a></th>`).join("")}</tr></thead>
    <tbody>${rows.map(([k, vals]) => `<tr${new Set(vals.map(String)).size > 1 ? ' class="differs" data-differs' : ""}><th>${esc(k)}</th>${vals.map((v) => `<td>${esc(v)}</td>`).join("")}</tr>`).join("")}</tbody>`;
  leave = () => Object.values(charts).forEach((c) => c.plot.destroy());
}

// ---- a new job ------------------------------------------------------------------------------------
// Upload a file (or pick an uploaded dataset), see what the server found in it, pick a base and hyperparameters
// (their defaults and help come from the API's own document), submit, land on the job's live page.
async function newJobScreen(params, gen) {
  const [{ data: datasets }, health, doc] = await Promise.all([api("datasets?limit=100"), api("health"), api("openapi.json")]);
  if (left(gen)) return;
  const hp = doc.components.schemas.Hyperparameters.properties;
  const chosen = params.get("dataset");
  const options = (none) => `<option value="">${none}</option>` + datasets
    .map((d) => `<option value="${esc(d.id)}"${d.id === chosen ? " selected" : ""}>${esc(d.filename || d.id)} · ${d.n_records} rows · ${esc(d.id)}</option>`).join("");
  view.innerHTML = `<h1>New job</h1><form class="card" id="new-job">
    <label for="file">Training data: a JSONL or CSV file with <code>text</code> and <code>label</code> (and <code>text_pair</code>)</label>
    <input type="file" id="file" accept=".jsonl,.json,.csv">
    <label for="dataset">… or a dataset uploaded before</label><select id="dataset">${options("(upload a file)")}</select>
    <div id="preview"></div>
    <div class="row">
      <div><label for="adapter">Adapter name</label><input id="adapter" required pattern="[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}" placeholder="sentiment"></div>
      <div><label for="base">Base model</label><select id="base">${health.base_models.map((b) => `<option${b === "minilm" ? " selected" : ""}>${esc(b)}</option>`).join("")}</select></div>
      <div><label for="validation">Validation</label><select id="validation">${options("a split of the training data")}</select></div>
      <div><label for="split">Split (share held out)</label><input id="split" type="number" min="0" max="0.9" step="0.05" value="0.1"></div>
    </div>
    <h2>Hyperparameters</h2><p class="muted">Empty: the default shown.</p>
    <table class="kv" id="hp-form">${Object.entries(hp).map(([name, s]) => `<tr><td><label for="hp-${name}">${esc(name)}</label></td>
      <td><input id="hp-${name}" data-hp="${esc(name)}" data-type="${esc(hpType(s))}" placeholder="${esc(typeof s.default === "string" ? s.default : JSON.stringify(s.default ?? null))}"></td>
      <td class="muted">${esc(s.description ?? "")}</td></tr>`).join("")}</table>
    <p><button type="submit">Start training</button></p></form>`;
  const form = view.querySelector("#new-job");
  const select = form.querySelector("#dataset");
  const preview = async (id) => {
    form.querySelector("#preview").innerHTML = id ? datasetPreview(await api(`datasets/${id}`)) : "";
  };
  form.querySelector("#file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    const body = new FormData();
    body.append("file", file);
    const r = await fetch(API + "datasets", { method: "POST", headers: headers(), body });
    if (!r.ok) return void (await failure(r));
    showError("");
    const d = await r.json();
    if (![...select.options].some((o) => o.value === d.id)) select.add(new Option(`${d.filename} · ${d.n_records} rows · ${d.id}`, d.id), 1);
    select.value = d.id;
    await preview(d.id).catch(() => {});
  });
  select.addEventListener("change", () => preview(select.value).catch(() => {}));
  if (chosen) await preview(chosen).catch(() => {});
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!select.value) return showError("upload a training file or pick a dataset first");
    const hyperparameters = {};
    for (const input of form.querySelectorAll("[data-hp]")) {
      if (input.value.trim() === "") continue;
      try {
        hyperparameters[input.dataset.hp] = hpValue(input.value.trim(), input.dataset.type);
      } catch (e) {
        return showError(`${input.dataset.hp}: ${e.message}`);
      }
    }
    const validation = form.querySelector("#validation").value;
    const body = {
      adapter: form.querySelector("#adapter").value.trim(),
      base_model: form.querySelector("#base").value,
      train: { dataset: select.value },
      hyperparameters,
      ...(validation ? { validation: { dataset: validation } } : { validation_split: Number(form.querySelector("#split").value) }),
    };
    try {
      const job = await api("jobs", { method: "POST", body });
      location.hash = `#/jobs/${job.id}`;
    } catch (_) {}
  });
}

// A hyperparameter's kind, from its JSON schema (anyOf: the first non-null one).
function hpType(s) {
  const kinds = [s, ...(s.anyOf ?? [])];
  if (kinds.some((x) => x.enum)) return "string";
  return kinds.map((x) => x.type).find((t) => t && t !== "null") ?? "string";
}

function hpValue(text, type) {
  if (type === "integer" || type === "number") {
    const n = Number(text);
    if (!Number.isFinite(n) || (type === "integer" && !Number.isInteger(n))) throw new Error(`${text} is not ${type === "integer" ? "a whole number" : "a number"}`);
    return n;
  }
  if (type === "boolean") return ["true", "1", "yes"].includes(text.toLowerCase());
  if (type === "array") return text.split(",").map((x) => x.trim()).filter(Boolean);
  return text;
}

// What the server found in a dataset: rows per label (with a warning when classes are tiny or badly
// imbalanced), text lengths and the first rows.
function datasetPreview(d) {
  const counts = Object.entries(d.labels);
  const max = Math.max(1, ...counts.map(([, n]) => n));
  const min = Math.min(...counts.map(([, n]) => n));
  const warnings = [];
  const tiny = counts.filter(([, n]) => n < 20).map(([l, n]) => `${l} (${n})`);
  if (tiny.length) warnings.push(`few rows of ${tiny.join(", ")}: a label wants dozens of examples at least, more for a good adapter`);
  if (counts.length > 1 && max / Math.max(1, min) >= 5) warnings.push(`badly imbalanced (${max}:${min}): set class_weighting to "balanced" so the rare labels count as much`);
  if (d.n_records < 100) warnings.push(`${d.n_records} rows in all: expect a weak adapter and noisy validation figures`);
  return `<div class="preview" data-preview="${esc(d.id)}"><h2>${esc(d.filename || d.id)}: ${d.n_records} rows${d.multi_label ? ", multi-label" : ""}</h2>
    <table class="kv" id="label-counts">${counts.map(([l, n]) => `<tr><td>${esc(l)}</td><td class="num">${n}</td><td style="width:50%">${bar(n / max, "wide")}</td></tr>`).join("")}</table>
    ${warnings.map((w) => `<div class="warning" data-warning>${esc(w)}</div>`).join("")}
    ${(d.notes ?? []).map((n) => `<div class="muted">${esc(n)}</div>`).join("")}
    <div class="muted">characters per row: median ${d.length_chars.p50}, 90% under ${d.length_chars.p90}, longest ${d.length_chars.max}</div>
    <table id="first-rows"><thead><tr><th>text</th><th>label</th></tr></thead><tbody>${d.first_rows
      .map((r) => `<tr><td>${esc(r.text)}${r.text_pair ? ` <span class="muted">/ ${esc(r.text_pair)}</span>` : ""}</td><td>${esc(Array.isArray(r.label) ? r.label.join(", ") : r.label)}</td></tr>`).join("")}</tbody></table></div>`;
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
    else if (path === "/new") await newJobScreen(params, gen);
    else if (path === "/compare") await compareScreen(params, gen);
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
if (localStorage.getItem(KEY)) route();
else askKey(); // a first visit: the key first, no call that could only answer 401
