// genstack console: vanilla JS, no build step. Talks to the console server's /api (which talks gRPC
// to the orchestrator); live updates are server-sent events read with fetch, so that a bearer
// token can travel in the Authorization header (EventSource cannot send headers).
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") Object.assign(node.style, v);  // CSSOM: allowed by the page's CSP
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
};

const FINAL = new Set(["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"]);
const LABELS = { answer: "ask", image: "image", video: "video", agent: "agent", generate: "generate" };
const FORMS = {
  answer: [
    { name: "question", label: "Question", type: "textarea", required: true },
    { name: "collection", label: "Collection", placeholder: "default" },
    [{ name: "topK", label: "Sources (top k)", type: "number", min: 1, max: 50 },
     { name: "maxRetries", label: "Retries", type: "number", min: 0, max: 5 }],
    { name: "models", label: "Model cascade (comma separated)", placeholder: "pipeline default", list: true },
  ],
  image: [
    { name: "prompt", label: "Prompt", type: "textarea", required: true },
    { name: "negativePrompt", label: "Negative prompt" },
    [{ name: "steps", label: "Steps", type: "number", min: 1 }, { name: "seed", label: "Seed", type: "number" }],
    [{ name: "numImages", label: "Images", type: "number", min: 1 }, { name: "guidanceScale", label: "Guidance", type: "number", step: "0.1" }],
  ],
  video: [
    { name: "prompt", label: "Prompt", type: "textarea", required: true },
    [{ name: "numFrames", label: "Frames", type: "number", min: 1 }, { name: "steps", label: "Steps", type: "number", min: 1 }],
    [{ name: "fps", label: "FPS", type: "number", min: 1 }, { name: "seed", label: "Seed", type: "number" }],
    { name: "format", label: "Format", type: "select", options: ["", "VIDEO_FORMAT_MP4", "VIDEO_FORMAT_GIF", "VIDEO_FORMAT_PNG"] },
  ],
  agent: [
    { name: "goal", label: "Goal", type: "textarea", required: true },
    { name: "allowedTools", label: "Allowed tools (comma separated)", placeholder: "all registered", list: true },
    { name: "collection", label: "Collection", placeholder: "default" },
    { name: "model", label: "Model", placeholder: "default" },
  ],
  generate: [
    { name: "prompt", label: "Prompt", type: "textarea", required: true },
    { name: "model", label: "Model", placeholder: "default" },
  ],
};

const state = { kinds: [], kind: null, selected: null, watch: null, pageToken: "", record: null,
                answerAttempt: 0, refreshTimer: null, recordTimer: null };

// -- the API ------------------------------------------------------------------------------------

function token() { return sessionStorage.getItem("genstack-token") || ""; }

function headers(extra = {}) {
  const h = { ...extra };
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) { askToken(body && body.error); }
  if (!response.ok) {
    const err = new Error((body && body.error) || `${response.status} ${response.statusText}`);
    err.status = response.status; err.code = body && body.code;
    throw err;
  }
  return body;
}

function askToken(why) {
  const dialog = $("#token-dialog");
  if (!dialog.hidden) return;
  dialog.hidden = false;
  if (why) dialog.querySelector("p").textContent = why;
  $("#token-input").focus();
}

// -- submitting ----------------------------------------------------------------------------------

function fieldInput(f) {
  let input;
  if (f.type === "textarea") input = el("textarea", { name: f.name, rows: 3, required: f.required, placeholder: f.placeholder });
  else if (f.type === "select") input = el("select", { name: f.name }, f.options.map((o) => el("option", { value: o, text: o || "default" })));
  else input = el("input", { name: f.name, type: f.type || "text", min: f.min, max: f.max, step: f.step,
                              required: f.required, placeholder: f.placeholder });
  return el("div", {}, el("label", { text: f.label }), input);
}

function showForm(kind) {
  state.kind = kind;
  for (const b of document.querySelectorAll("#kind-tabs button")) b.setAttribute("aria-selected", b.dataset.kind === kind);
  const box = $("#fields");
  box.replaceChildren();
  for (const f of FORMS[kind]) box.append(Array.isArray(f) ? el("div", { class: "pair" }, f.map(fieldInput)) : fieldInput(f));
}

function formInput(kind) {
  const input = {};
  const form = $("#submit-form");
  for (const f of FORMS[kind].flat()) {
    const raw = form.elements[f.name].value.trim();
    if (raw === "") continue;
    if (f.list) input[f.name] = raw.split(",").map((s) => s.trim()).filter(Boolean);
    else if (f.type === "number") input[f.name] = Number(raw);
    else input[f.name] = raw;
  }
  const extra = $("#extra-json").value.trim();
  if (extra) Object.assign(input, JSON.parse(extra));
  return input;
}

async function submit(event) {
  event.preventDefault();
  const status = $("#submit-status");
  let input;
  try { input = formInput(state.kind); } catch (e) { status.textContent = `not JSON: ${e.message}`; return; }
  $("#submit-button").disabled = true;
  status.textContent = "submitting…";
  try {
    const r = await api("/api/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
                                       body: JSON.stringify({ kind: state.kind, input }) });
    status.textContent = `job ${r.job_id.slice(0, 8)} ${r.created ? "submitted" : "already existed"}`;
    openJob(r.job_id);
    loadJobs();
  } catch (e) {
    status.textContent = e.message;
  } finally {
    $("#submit-button").disabled = false;
  }
}

// -- the job list -----------------------------------------------------------------------------------

const short = (s) => (s || "").replace("JOB_STATE_", "").toLowerCase();
const when = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "");
const took = (ms) => (ms ? (ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`) : "");

async function loadJobs(append = false) {
  const params = new URLSearchParams({ page_size: "25" });
  if ($("#filter-state").value) params.set("state", $("#filter-state").value);
  if ($("#filter-kind").value) params.set("kind", $("#filter-kind").value);
  if (append && state.pageToken) params.set("page_token", state.pageToken);
  let page;
  try { page = await api(`/api/jobs?${params}`); } catch (e) { return; }
  const body = $("#jobs tbody");
  if (!append) body.replaceChildren();
  for (const job of page.jobs) {
    body.append(el("tr", { "data-job": job.jobId, class: job.jobId === state.selected ? "selected" : "",
                           onclick: () => openJob(job.jobId) },
      el("td", { class: "mono", text: job.jobId.slice(0, 8) }), el("td", { text: job.kind }),
      el("td", {}, el("span", { class: `badge s-${short(job.state)}`, text: short(job.state) })),
      el("td", { text: when(job.createdAt) }), el("td", { text: took(job.durationMs) })));
  }
  state.pageToken = page.next_page_token;
  $("#more").hidden = !page.next_page_token;
}

// -- one job -------------------------------------------------------------------------------------------

function citeHtml(text) {
  const box = document.createDocumentFragment();
  for (const part of (text || "").split(/(\[\d+\])/)) {
    box.append(/^\[\d+\]$/.test(part) ? el("span", { class: "cite", text: part }) : document.createTextNode(part));
  }
  return box;
}

function mediaOf(result) {
  // every image or clip in a result, inline bytes or a stored artifact, whatever the kind
  const found = [];
  const walk = (v) => {
    if (!v || typeof v !== "object") return;
    if (Array.isArray(v)) { v.forEach(walk); return; }
    if (typeof v.png === "string" && v.png) found.push({ src: `data:image/png;base64,${v.png}`, mime: "image/png" });
    else if (typeof v.data === "string" && v.data && v.mimeType) found.push({ src: `data:${v.mimeType};base64,${v.data}`, mime: v.mimeType });
    else if (Array.isArray(v.frames) && v.frames.length && typeof v.frames[0] === "string") found.push({ src: `data:image/png;base64,${v.frames[0]}`, mime: "image/png" });
    else if (v.artifact && v.artifact.uri) found.push({ src: `/api/artifact?uri=${encodeURIComponent(v.artifact.uri)}`, mime: v.artifact.mimeType || "image/png" });
    for (const [k, x] of Object.entries(v)) if (!["png", "data", "frames", "artifact"].includes(k)) walk(x);
  };
  walk(result);
  return found;
}

function renderVerdict(v, title) {
  const box = el("div", { class: "verdict" },
    el("div", { class: "row" }, el("strong", { text: title || v.policy || "verdict" }),
       el("span", { class: `badge ${v.passed ? "ok" : "bad"}`, text: v.passed ? "passed" : "failed" }),
       el("span", { class: "muted small", text: `score ${(v.score || 0).toFixed(2)}` })));
  for (const c of v.results || []) {
    box.append(el("div", { class: "check" },
      el("span", { class: `badge ${c.passed ? "ok" : "bad"}`, text: c.passed ? "✓" : "✗" }), " ",
      el("strong", { text: c.name }), c.advisory ? el("span", { class: "muted small", text: " (advisory)" }) : null,
      el("span", { class: "muted", text: c.message ? ` — ${c.message}` : "" }),
      (c.evidence || []).slice(0, 6).map((e) => el("div", { class: "evidence", text: `${e.kind || "evidence"}: ${e.text || ""}${e.where ? ` (${e.where})` : ""}` }))));
  }
  if (v.feedback) box.append(el("div", { class: "evidence", text: `feedback: ${v.feedback}` }));
  return box;
}

function renderTimeline(job) {
  const steps = job.steps || [];
  const box = $("#timeline");
  box.replaceChildren();
  if (!steps.length) { box.append(el("div", { class: "muted", text: "no steps yet" })); return; }
  const t0 = Math.min(...steps.map((s) => Date.parse(s.startedAt)));
  const end = Math.max(...steps.map((s) => Date.parse(s.startedAt) + (s.durationMs || 0)));
  const span = Math.max(end - t0, 1);
  for (const s of steps) {
    const left = ((Date.parse(s.startedAt) - t0) / span) * 100;
    const width = Math.max(((s.durationMs || 0) / span) * 100, 0.4);
    const label = `${s.name}${s.attempt > 1 ? ` #${s.attempt}` : ""}`;
    box.append(el("div", { class: "bar-row", title: `${s.service || "local"} ${s.transport || ""} ${s.status}${s.error ? `: ${s.error}` : ""}` },
      el("span", { class: "mono", text: label }),
      el("div", { class: "bar-track" }, el("div", { class: `bar ${s.status}`, style: { left: `${left}%`, width: `${width}%` } })),
      el("span", { class: "muted", text: took(s.durationMs) || "<1 ms" })));
  }
}

function renderRetries(job, events) {
  const box = $("#retries");
  box.replaceChildren();
  const lines = [];
  for (const e of events) {
    if (e.type === "job.retry") lines.push(`retry ${e.data.retry} from ${e.step}: ${e.data.feedback || ""}`);
    if (e.type === "cascade.escalated") lines.push(`escalated ${e.data.from_model || "default"} → ${e.data.to_model || "default"} (attempt ${e.data.attempt})`);
    if (e.type === "step.retry") lines.push(`${e.step}: ${e.data.method} retried after ${e.data.code} (${e.data.error})`);
  }
  for (const s of job.steps || []) for (const r of s.retryErrors || []) lines.push(`${s.name}: ${r}`);
  for (const line of [...new Set(lines)]) box.append(el("div", { class: "small", text: line }));
}

function renderJob(job) {
  state.record = job;
  $("#empty").hidden = true;
  $("#job").hidden = false;
  $("#job-title").textContent = `${job.kind} ${job.jobId.slice(0, 8)}`;
  const badge = $("#job-state");
  badge.textContent = short(job.state);
  badge.className = `badge s-${short(job.state)}`;
  $("#cancel").hidden = FINAL.has(job.state);
  $("#job-meta").textContent = [`pipeline ${job.pipeline}`, `created ${when(job.createdAt)}`,
    job.durationMs ? `took ${took(job.durationMs)}` : "", job.traceId ? `trace ${job.traceId}` : "",
    `id ${job.jobId}`].filter(Boolean).join(" · ");
  // why it failed: the job's error, the failed steps' errors, the last verdict's feedback
  const err = $("#job-error");
  const why = [];
  if (job.state === "JOB_STATE_FAILED" || job.state === "JOB_STATE_CANCELLED") {
    why.push(`${job.errorCode || short(job.state)}: ${job.error || ""}`);
    for (const s of job.steps || []) if (s.status === "failed") why.push(`step ${s.name} (attempt ${s.attempt}) failed: ${s.error}`);
  }
  err.hidden = !why.length;
  err.textContent = why.join("\n");
  const result = job.answer || job.image || job.video || job.generate || job.agent || job.ingest;
  $("#result-card").hidden = !result && !$("#answer").textContent;
  if (job.answer && job.answer.answer) $("#answer").replaceChildren(citeHtml(job.answer.answer));
  else if (job.answer && job.answer.rejectedAnswer) {
    // a failed job keeps no answer; its best attempt is shown as what the validator rejected
    $("#answer").replaceChildren(el("div", { class: "muted small", text: "rejected by the validator:" }),
                                 citeHtml(job.answer.rejectedAnswer));
  }
  else if (job.generate) $("#answer").textContent = job.generate.text || "";
  else if (job.agent && job.agent.finalAnswer) $("#answer").textContent = job.agent.finalAnswer;
  else if (job.ingest) $("#answer").textContent = `ingested ${JSON.stringify(job.ingest.documents || job.ingest)}`;
  const media = mediaOf(job.image || job.video || job.agent || null);
  const box = $("#media");
  box.replaceChildren(...media.map((m) => (m.mime.startsWith("video/") ?
    el("video", { src: m.src, controls: true, loop: true, autoplay: true, muted: true }) :
    el("img", { src: m.src, alt: "result", class: "result-image" }))));
  const citations = (job.answer && job.answer.citations) || [];
  $("#sources-card").hidden = !citations.length;
  $("#sources").replaceChildren(...citations.map((c) => el("li", { class: c.cited ? "cited" : "", value: c.index },
    el("div", { class: "row" }, el("strong", { text: c.source || c.documentId }),
       el("span", { class: "muted small", text: `score ${(c.score || 0).toFixed(3)}` }),
       c.cited ? el("span", { class: "badge ok", text: "cited" }) : el("span", { class: "badge", text: "not cited" })),
    el("div", { class: "passage", text: c.text }))));
  const verdicts = [];
  if (job.answer && job.answer.verdict) verdicts.push(renderVerdict(job.answer.verdict));
  for (const [i, v] of ((job.image && job.image.verdicts) || []).entries()) verdicts.push(renderVerdict(v, `image ${i + 1}`));
  if (job.video && job.video.verdict) verdicts.push(renderVerdict(job.video.verdict));
  if (verdicts.length) { $("#verdict-card").hidden = false; $("#verdicts").replaceChildren(...verdicts); }
  renderTimeline(job);
  renderRetries(job, state.events || []);
}

function addEvent(e) {
  state.events.push(e);
  const log = $("#events");
  const detail = e.type === "generate.delta" ? JSON.stringify(e.data.delta) :
    e.type === "image.progress" ? `step ${e.data.step}/${e.data.total_steps}` : JSON.stringify(e.data).slice(0, 160);
  log.append(el("li", { "data-type": e.type }, el("span", { class: "t", text: `${when(e.time)} ` }),
    el("span", { class: "ty", text: e.type }), e.step ? ` ${e.step} ` : " ", el("span", { class: "muted", text: detail })));
  log.scrollTop = log.scrollHeight;
  // live views before the record catches up
  if (e.type === "generate.delta") {
    const attempt = e.data.attempt || 1;
    if (attempt !== state.answerAttempt) { state.answerAttempt = attempt; $("#answer").textContent = ""; }
    $("#result-card").hidden = false;
    $("#answer").append(document.createTextNode(e.data.delta));
  } else if (e.type === "answer.cited") {
    $("#answer").replaceChildren(citeHtml(e.data.answer));
  } else if (e.type === "image.progress" || e.type === "video.progress") {
    $("#result-card").hidden = false;
    const previews = (e.data.previews || []).map((p) => el("img", { src: `data:image/png;base64,${p}`, alt: `step ${e.data.step}`, class: "preview" }));
    if (previews.length) $("#previews").replaceChildren(el("div", { class: "muted small", text: `preview at step ${e.data.step} of ${e.data.total_steps}` }), ...previews);
  } else if (e.type === "validate.verdict") {
    $("#verdict-card").hidden = false;
  }
  if (e.type.startsWith("step.") || e.type.startsWith("job.") || e.type === "validate.verdict" || e.type === "cascade.escalated") {
    scheduleRecord();
  }
  if (state.record) renderRetries(state.record, state.events);
}

function scheduleRecord() {
  if (state.recordTimer) return;
  state.recordTimer = setTimeout(async () => {
    state.recordTimer = null;
    if (!state.selected) return;
    try { renderJob(await api(`/api/jobs/${state.selected}`)); } catch (_) { /* shown on the next try */ }
  }, 150);
}

async function watch(jobId) {
  // server-sent events over fetch; resumes after the last event id when the connection drops
  const controller = new AbortController();
  state.watch = controller;
  $("#live").textContent = "live";
  $("#live").className = "badge s-running";
  let last = "";
  for (let tries = 0; tries < 20 && !controller.signal.aborted; tries++) {
    try {
      const response = await fetch(`/api/jobs/${jobId}/events`, { signal: controller.signal,
        headers: headers(last ? { "Last-Event-ID": last } : {}) });
      if (response.status === 401) { askToken(); break; }
      if (!response.ok) break;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let ended = false;
      while (!ended) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let type = "message", data = "", id = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) type = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
            else if (line.startsWith("id: ")) id = line.slice(4);
          }
          if (type === "job") { if (id) last = id; addEvent(JSON.parse(data)); }
          else if (type === "end" || type === "error") ended = true;
        }
      }
      if (ended) break;
    } catch (e) {
      if (controller.signal.aborted) break;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  if (state.watch === controller) {
    $("#live").textContent = "ended";
    $("#live").className = "badge";
    scheduleRecord();
    loadJobs();
  }
}

async function openJob(jobId) {
  if (state.watch) state.watch.abort();
  state.selected = jobId;
  state.events = [];
  state.answerAttempt = 0;
  state.record = null;
  history.replaceState(null, "", `#job=${jobId}`);
  for (const id of ["#answer", "#media", "#previews", "#events", "#sources", "#verdicts", "#timeline", "#retries"]) $(id).replaceChildren();
  $("#verdict-card").hidden = true;
  for (const tr of document.querySelectorAll("#jobs tbody tr")) tr.classList.toggle("selected", tr.dataset.job === jobId);
  try { renderJob(await api(`/api/jobs/${jobId}`)); } catch (e) {
    $("#empty").hidden = false; $("#job").hidden = true; $("#empty").textContent = e.message; return;
  }
  watch(jobId);  // replays every event from the first, then follows until the job ends
}

// -- start ----------------------------------------------------------------------------------------------

async function start() {
  $("#submit-form").addEventListener("submit", submit);
  $("#refresh").addEventListener("click", () => loadJobs());
  $("#more").addEventListener("click", () => loadJobs(true));
  $("#filter-state").addEventListener("change", () => loadJobs());
  $("#filter-kind").addEventListener("change", () => loadJobs());
  $("#cancel").addEventListener("click", async () => {
    if (state.selected) { await api(`/api/jobs/${state.selected}/cancel`, { method: "POST" }).catch(() => {}); scheduleRecord(); }
  });
  $("#token-button").addEventListener("click", () => askToken());
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("genstack-token", $("#token-input").value.trim());
    $("#token-dialog").hidden = true;
    start();
  });
  $("#token-clear").addEventListener("click", () => { sessionStorage.removeItem("genstack-token"); $("#token-dialog").hidden = true; });
  let info;
  try { info = await api("/api/info"); } catch (e) { $("#orchestrator").textContent = e.message; return; }
  $("#orchestrator").textContent = `orchestrator ${info.orchestrator}`;
  state.kinds = info.kinds;
  const tabs = $("#kind-tabs");
  tabs.replaceChildren();
  for (const kind of Object.keys(FORMS)) {
    if (!info.kinds.includes(kind)) continue;  // only what the orchestrator offers
    tabs.append(el("button", { type: "button", role: "tab", "data-kind": kind, text: LABELS[kind], onclick: () => showForm(kind) }));
  }
  const fk = $("#filter-kind");
  fk.replaceChildren(el("option", { value: "", text: "any kind" }), ...info.kinds.map((k) => el("option", { value: k, text: k })));
  const fs = $("#filter-state");
  fs.replaceChildren(el("option", { value: "", text: "any state" }), ...info.states.map((s) => el("option", { value: s, text: s })));
  if (tabs.firstChild) showForm(tabs.firstChild.dataset.kind);
  await loadJobs();
  const m = location.hash.match(/job=([\w-]+)/);
  if (m) openJob(m[1]);
  clearInterval(state.refreshTimer);
  state.refreshTimer = setInterval(() => { if (!document.hidden) loadJobs(); }, 4000);
}

document.addEventListener("DOMContentLoaded", start);
