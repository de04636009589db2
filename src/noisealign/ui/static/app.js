// noisealign ui: choose the Demon step's candidates you prefer. No framework, no build.
// The session token comes from the URL fragment (#token=...) and goes with every API call
// as the X-Noisealign-Token header; the server never sees the fragment itself.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
const POLL_MS = 1500;
let state = null;           // the last full state from /api/state
let selected = new Set();   // candidate indices selected in this tab
let inFlight = false;       // an action of this tab is running
let stopped = false;        // the token was refused: nothing more to ask

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { "X-Noisealign-Token": token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  return response;
}

function showError(error) {
  const status = error instanceof ApiError ? error.status : 0;
  $("banner-text").textContent = status ? `${status}: ${error.message}` : `no answer from the server (${error.message}); is noisealign ui still running?`;
  $("reload").hidden = status === 403;
  $("banner").hidden = false;
  if (status === 403) stopped = true;
}

function clearError() { $("banner").hidden = true; }

function setImage(img, url) {
  img.onload = () => img.classList.toggle("pixelated", img.naturalWidth < 128);
  if (url && img.src !== url) img.src = url;
}

async function refresh(full) {
  if (stopped || inFlight) return;
  const known = full || !state ? "" : `?known=${state.version}`;
  try {
    const answer = await (await api("GET", `/api/state${known}`)).json();
    $("busy").hidden = !answer.busy;
    if (!answer.unchanged) render(answer);
  } catch (error) {
    showError(error);
  }
}

async function act(path, extra) {
  if (inFlight || !state) return;
  inFlight = true;
  $("busy").hidden = false;
  updateButtons();
  try {
    const answer = await (await api("POST", path, { version: state.version, ...extra })).json();
    clearError();
    render(answer);
  } catch (error) {
    showError(error);
  } finally {
    inFlight = false;
    $("busy").hidden = true;
    updateButtons();
  }
  if (!$("banner").hidden && !stopped) refresh(true);  // e.g. after a 409: show what the other tab did
}

function render(next) {
  if (!state || state.version !== next.version) selected = new Set();
  state = next;
  $("run").textContent = `${state.model}${state.prompt ? ` · “${state.prompt}”` : ""} · seed ${state.seed} · K = ${state.K}`;
  const status = $("status");
  status.dataset.step = state.step;
  status.dataset.version = state.version;
  status.dataset.finished = state.finished;
  status.textContent = state.finished ? `finished after ${state.step} chosen steps`
    : state.candidates.length === 0 ? `all ${state.steps_total} steps chosen · σ = ${state.sigma.toPrecision(3)}`
    : `step ${state.step + 1} of ${state.steps_total} · σ = ${state.sigma.toPrecision(3)}`;
  setImage($("preview"), state.preview);
  renderReference();
  renderCandidates();
  renderTrajectory();
  $("result").hidden = !state.finished;
  if (state.finished) {
    setImage($("final"), state.image);
    setImage($("baseline"), state.baseline);
    $("run-dir").textContent = `run folder: ${state.run_dir}`;
  }
  updateButtons();
}

function renderCandidates() {
  const grid = $("candidates");
  grid.replaceChildren();
  const open = !state.finished && state.candidates.length > 0;
  $("step-title").textContent = state.finished ? "Candidates"
    : open ? `Step ${state.step + 1}: pick the candidates you prefer`
    : "Every demon step is taken: finish to integrate the ODE to the end";
  $("hint").hidden = !open;
  state.candidates.forEach((url, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "candidate";
    button.dataset.index = index;
    button.setAttribute("aria-pressed", selected.has(index));
    const img = document.createElement("img");
    img.alt = `candidate ${index + 1}`;
    setImage(img, url);
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = index + 1;
    button.append(img, key);
    button.addEventListener("click", () => toggle(index));
    grid.append(button);
  });
}

// The DINOv2 similarity of each state's D(x, σ) to the reference image, when the run has one.
function renderReference() {
  const similarities = state.similarities;
  $("reference-figure").hidden = !state.reference;
  $("similarity").hidden = !similarities;
  $("final-similarity").hidden = state.final_similarity === null;
  if (!state.reference) return;
  setImage($("reference"), state.reference);
  $("similarity").textContent = `DINOv2 similarity to the reference: ${similarities[similarities.length - 1].toFixed(3)}`;
  if (state.final_similarity !== null) {
    $("final-similarity").textContent = `DINOv2 similarity of the aligned sample to the reference: ${state.final_similarity.toFixed(3)}`;
  }
}

function renderTrajectory() {
  const list = $("trajectory");
  list.replaceChildren();
  state.trajectory.forEach((url, i) => {
    const item = document.createElement("li");
    const img = document.createElement("img");
    img.alt = i === 0 ? "start" : `after step ${i}`;
    setImage(img, url);
    const chosen = i === 0 ? "start" : `${i}: ${state.history[i - 1].chosen.map((k) => k + 1).join(",")}`;
    item.append(img, chosen);
    if (state.similarities) {
      const similarity = document.createElement("span");
      similarity.className = "similarity";
      similarity.textContent = state.similarities[i].toFixed(3);
      similarity.title = "DINOv2 similarity to the reference";
      item.append(similarity);
    }
    list.append(item);
  });
}

function toggle(index) {
  if (!state || state.finished || inFlight) return;
  if (selected.has(index)) selected.delete(index); else selected.add(index);
  const button = $("candidates").querySelector(`[data-index="${index}"]`);
  if (button) button.setAttribute("aria-pressed", selected.has(index));
  updateButtons();
}

function updateButtons() {
  const idle = state && !state.finished && !inFlight;
  $("choose").textContent = `Choose selected (${selected.size})`;
  $("choose").disabled = !idle || selected.size === 0 || state.candidates.length === 0;
  $("undo").disabled = !idle || state.step === 0;
  $("finish").disabled = !idle;
  $("download").disabled = inFlight;
}

async function download() {
  try {
    const response = await api("GET", "/api/download");
    const name = (response.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = name ? name[1] : "run.zip";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (error) {
    showError(error);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("choose").addEventListener("click", () => act("/api/choose", { chosen: [...selected].sort((a, b) => a - b) }));
  $("undo").addEventListener("click", () => act("/api/undo"));
  $("finish").addEventListener("click", () => act("/api/finish"));
  $("download").addEventListener("click", download);
  $("reload").addEventListener("click", () => { clearError(); refresh(true); });
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey || event.altKey) return;
    if (/^[1-9]$/.test(event.key)) {
      event.preventDefault();
      toggle(Number(event.key) - 1);
    } else if (event.key === "Enter") {
      event.preventDefault();  // not also a click on the focused candidate
      if (!$("choose").disabled) $("choose").click();
    }
  });
  if (!token) {
    showError(new ApiError(403, "this address has no session token: open the full URL that `noisealign ui` printed (it ends in #token=...)"));
    return;
  }
  refresh(true);
  setInterval(() => refresh(false), POLL_MS);
});
