// The krypton-ql explorer page: plain JavaScript, no build step, nothing fetched from outside.
"use strict";

const SCALE = 2; // canvas pixels per input pixel
const params = new URLSearchParams(location.search);
const token = params.get("token");
const client = sessionStorage.getItem("kql-client") ||
  (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2));
sessionStorage.setItem("kql-client", client);

// What the page received, for people and for the browser tests.
const state = window.kql = {
  run: null, rows: 0, cols: 0, values: null, computed: null, base: null, patch: 16, stride: 4,
  status: "idle", events: 0, firstCellsAt: null, region: null, config: null, error: null,
};

const $ = (id) => document.getElementById(id);

function api(path) {
  if (!token) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function request(path, options = {}) {
  const headers = Object.assign({"X-KQL-Client": client}, options.headers || {});
  if (token) headers["X-KQL-Token"] = token;
  if (options.method === "POST" && !(options.body instanceof FormData)) {
    // The server takes JSON bodies only (a page elsewhere cannot send them unasked).
    headers["Content-Type"] = "application/json";
    options = Object.assign({}, options, {body: options.body || "{}"});
  }
  const response = await fetch(api(path), Object.assign({}, options, {headers}));
  const kind = response.headers.get("content-type") || "";
  const body = kind.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(body.error || body || response.statusText);
  return body;
}

function showError(message) {
  state.error = message;
  $("error").textContent = message;
  $("error").hidden = !message;
}

// -- photos, models, classes --------------------------------------------------------------

async function loadConfig() {
  const config = state.config = await request("/api/config");
  fillPhotos(config.photos);
  for (const name of config.models) $("model").add(new Option(name, name));
  $("sql").value = $("sql").value.replace("photos", config.images);
  drawColorbar();
  await choosePhoto();
}

function fillPhotos(photos, chosen) {
  const select = $("photo");
  select.innerHTML = "";
  for (const name of photos) select.add(new Option(name, name));
  if (chosen) select.value = chosen;
}

async function choosePhoto() {
  const name = $("photo").value;
  if (!name) return;
  showError("");
  clearHeatmap();
  const model = $("model").value;
  const image = new Image();
  image.onload = () => {
    for (const id of ["photo-canvas", "heat-canvas", "draw-canvas"]) {
      $(id).width = image.width * SCALE;
      $(id).height = image.height * SCALE;
    }
    $("colorbar").height = image.height * SCALE;
    drawColorbar();
    const context = $("photo-canvas").getContext("2d");
    context.imageSmoothingEnabled = true;
    context.drawImage(image, 0, 0, image.width * SCALE, image.height * SCALE);
    state.imageSize = [image.height, image.width];
    drawRegion();
  };
  image.onerror = () => showError("the photo could not be shown");
  image.src = api(`/api/photo?name=${encodeURIComponent(name)}&model=${encodeURIComponent(model)}`);
  try {
    const top = (await request(`/api/predict?name=${encodeURIComponent(name)}` +
      `&model=${encodeURIComponent(model)}`)).top;
    const select = $("target");
    select.innerHTML = "";
    select.add(new Option(`predicted (${top[0].label})`, ""));
    for (const entry of top) {
      select.add(new Option(`${entry.label} (${entry.prob.toFixed(3)})`, entry.class));
    }
  } catch (error) { showError(error.message); }
}

async function uploadPhoto() {
  const file = $("upload").files[0];
  if (!file) return;
  if (file.size > state.config.max_upload_bytes) {
    showError(`the file has ${file.size.toLocaleString()} bytes, above the server's limit of ` +
      `${state.config.max_upload_bytes.toLocaleString()}`);
    return;
  }
  const form = new FormData();
  form.append("file", file);
  try {
    const answer = await request("/api/upload", {method: "POST", body: form});
    fillPhotos(answer.photos, answer.name);
    await choosePhoto();
  } catch (error) { showError(error.message); }
  $("upload").value = "";
}

// -- the region -----------------------------------------------------------------------------

let dragStart = null;

function canvasPoint(event) {
  const box = $("draw-canvas").getBoundingClientRect();
  const [height, width] = state.imageSize || [224, 224];
  const x = Math.min(Math.max((event.clientX - box.left) / box.width * width, 0), width);
  const y = Math.min(Math.max((event.clientY - box.top) / box.height * height, 0), height);
  return [Math.round(y), Math.round(x)];
}

function drawRegion(preview) {
  const canvas = $("draw-canvas");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const region = preview || state.region;
  $("region-text").textContent = state.region ?
    `Region: rows ${state.region[0]}–${state.region[2]}, columns ${state.region[1]}–` +
    `${state.region[3]} (patch centres inside)` : "Region: the whole photo";
  if (!region) return;
  const [y0, x0, y1, x1] = region;
  context.lineWidth = 2;
  context.strokeStyle = "black";
  context.strokeRect(x0 * SCALE, y0 * SCALE, (x1 - x0) * SCALE, (y1 - y0) * SCALE);
  context.setLineDash([6, 4]);
  context.strokeStyle = "white";
  context.strokeRect(x0 * SCALE, y0 * SCALE, (x1 - x0) * SCALE, (y1 - y0) * SCALE);
}

function ordered(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
}

function onDown(event) { dragStart = canvasPoint(event); }

function onMove(event) {
  if (dragStart) { drawRegion(ordered(dragStart, canvasPoint(event))); return; }
  hover(event);
}

function onUp(event) {
  if (!dragStart) return;
  const box = ordered(dragStart, canvasPoint(event));
  dragStart = null;
  if (box[2] - box[0] >= 2 && box[3] - box[1] >= 2) state.region = box;
  drawRegion();
}

// -- the heatmap ----------------------------------------------------------------------------

function clearHeatmap() {
  const canvas = $("heat-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  state.values = null;
  $("downloads").hidden = true;
}

function limits() {
  const base = state.base;
  return [0.75 * base, Math.min(1, 1.25 * base)]; // kql.render's: red = the prediction dropped
}

function colour(value, low, high) {
  const lut = state.config.colormap;
  const t = Math.min(Math.max((value - low) / (high - low || 1), 0), 1);
  return lut[Math.round(t * 255)];
}

function shownValue(row, col) {
  // A computed cell, else the coarse lattice cell that stands in for it until it arrives.
  const {cols, computed, values} = state;
  for (const step of [1, 2, 4]) {
    const r = row - (row % step), c = col - (col % step);
    const index = r * cols + c;
    if (computed[index]) return values[index];
  }
  return NaN;
}

function drawHeatmap() {
  const {rows, cols, patch, stride} = state;
  if (!rows || !state.values) return;
  const [low, high] = limits();
  const cells = document.createElement("canvas");
  cells.width = cols;
  cells.height = rows;
  const context = cells.getContext("2d");
  const pixels = context.createImageData(cols, rows);
  for (let row = 0; row < rows; row++) {
    for (let col = 0; col < cols; col++) {
      const value = shownValue(row, col);
      const at = 4 * (row * cols + col);
      if (Number.isNaN(value) || !state.wanted[row * cols + col]) { pixels.data[at + 3] = 0; continue; }
      const [r, g, b] = colour(value, low, high);
      pixels.data.set([r, g, b, Math.round(255 * state.config.alpha)], at);
    }
  }
  context.putImageData(pixels, 0, 0);
  const canvas = $("heat-canvas");
  const target = canvas.getContext("2d");
  target.clearRect(0, 0, canvas.width, canvas.height);
  target.imageSmoothingEnabled = cols > 1 && rows > 1 && !state.segments;  // segments: crisp
  // Cell (i, j) is drawn at its patch centre, one stride wide (as kql.render draws it).
  const left = (patch / 2 - stride / 2) * SCALE, top = (patch / 2 - stride / 2) * SCALE;
  target.drawImage(cells, left, top, cols * stride * SCALE, rows * stride * SCALE);
  $("bar-low").textContent = low.toFixed(3);
  $("bar-high").textContent = high.toFixed(3);
}

function drawColorbar() {
  const canvas = $("colorbar");
  const context = canvas.getContext("2d");
  const lut = state.config.colormap;
  for (let y = 0; y < canvas.height; y++) {
    const [r, g, b] = lut[Math.round((1 - y / (canvas.height - 1)) * 255)];
    context.fillStyle = `rgb(${r},${g},${b})`;
    context.fillRect(0, y, canvas.width, 1);
  }
}

function hover(event) {
  const tip = $("tooltip");
  if (!state.values) { tip.hidden = true; return; }
  const [y, x] = canvasPoint(event);
  const {patch, stride, rows, cols} = state;
  const row = Math.round((y - patch / 2) / stride), col = Math.round((x - patch / 2) / stride);
  if (row < 0 || col < 0 || row >= rows || col >= cols || !state.computed[row * cols + col]) {
    tip.hidden = true;
    return;
  }
  const value = state.values[row * cols + col];
  tip.textContent = state.segments
    ? `pixel (${row}, ${col}), its superpixel hidden: ` +
      `prob ${value.toFixed(4)}, drop ${(state.base - value).toFixed(4)}`
    : `cell (${row}, ${col}), patch at (${row * stride}, ${col * stride}): ` +
      `prob ${value.toFixed(4)}, drop ${(state.base - value).toFixed(4)}`;
  tip.style.left = `${event.offsetX + 14}px`;
  tip.style.top = `${event.offsetY + 14}px`;
  tip.hidden = false;
}

// -- runs -----------------------------------------------------------------------------------

let source = null;

function options() {
  const mode = document.querySelector("input[name=mode]:checked").value;
  const hide = document.querySelector("input[name=hide]:checked").value;
  const body = {
    image: $("photo").value, model: $("model").value, patch: Number($("patch").value),
    stride: Number($("stride").value), color: Number($("color").value), mode,
    target: $("target").value === "" ? null : Number($("target").value), region: state.region,
  };
  if (hide === "segments") {
    Object.assign(body, {hide, segments: Number($("segments").value), region: null});
  }
  if (mode !== "exact") body.value = Number($("value").value);
  return body;
}

async function startRun() {
  showError("");
  if (source) source.close();
  let answer;
  try {
    answer = await request("/api/runs", {method: "POST", body: JSON.stringify(options())});
  } catch (error) { showError(error.message); return; }
  state.run = answer.run;
  state.status = "running";
  state.events = 0;
  state.firstCellsAt = null;
  state.startedAt = performance.now();
  $("cancel").disabled = false;
  $("run").disabled = true;
  $("status-text").textContent = "Compiling the plan and computing the clean forward …";
  source = new EventSource(api(`/api/runs/${answer.run}/events`));
  for (const kind of ["start", "cells", "progress", "done", "cancelled", "error"]) {
    source.addEventListener(kind, (message) => onEvent(kind, JSON.parse(message.data)));
  }
  source.onerror = () => {
    if (state.status === "running") finish("error", "the connection to the server was lost");
  };
}

function onEvent(kind, event) {
  if (event.run && event.run !== state.run) return;
  state.events++;
  if (kind === "start") {
    Object.assign(state, {rows: event.rows, cols: event.cols, base: event.base,
      patch: event.patch, stride: event.stride, segments: event.hide === "segments"});
    $("bar-caption").textContent = state.segments
      ? "probability with the pixel's superpixel hidden (red: dropped)"
      : "probability with the patch here (red: dropped)";
    state.values = new Float64Array(event.rows * event.cols).fill(NaN);
    state.computed = new Uint8Array(event.rows * event.cols);
    state.wanted = new Uint8Array(event.rows * event.cols);
    state.total = event.positions;
    state.statement = event.sql;
    state.prepareSeconds = event.prepare_seconds;
    $("statement").textContent = event.sql;
    $("copy").disabled = $("use-statement").disabled = false;
    $("n-class").textContent = `${event.label} (${event.class}), p = ${event.base.toFixed(4)}`;
    $("n-naive").textContent = `${event.naive_seconds.toFixed(2)} s`;
    $("n-theory").textContent = event.theoretical_speedup === null ? "–"
      : `${event.theoretical_speedup.toFixed(2)}×`;
    $("n-ssim").textContent = event.mode === "ssim" ? "(after the run)" : "–";
    $("progress").max = event.positions;
    $("status-text").textContent = `0 of ${event.positions} ${unit()}`;
    state.wanted.fill(1);
    showPlan();
  } else if (kind === "cells") {
    // A segment run sends every pixel at once (index null: all of them, in order).
    const indices = event.index === null ? event.values.map((_, i) => i) : event.index;
    indices.forEach((index, i) => {
      state.values[index] = event.values[i] === null ? NaN : event.values[i];
      state.computed[index] = 1;
    });
    if (state.firstCellsAt === null) state.firstCellsAt = performance.now() - state.startedAt;
    if (state.region) markWanted();
    progress(event);
    if (event.ssim_estimate !== undefined) {
      $("n-ssim").textContent = `${event.ssim_estimate.toFixed(3)}` +
        (event.reruns ? " (re-run at a larger τ)" : "");
    }
    drawHeatmap();
  } else if (kind === "progress") {
    progress(event);
  } else if (kind === "done") {
    progress(Object.assign({done: state.total}, event));
    $("n-speedup").textContent = `${event.speedup.toFixed(2)}× (${event.compute_seconds.toFixed(2)} s ` +
      `of occlusion work, after ${state.prepareSeconds.toFixed(2)} s preparing)`;
    finish("done", `Done: ${state.total} ${unit()} in ${event.elapsed.toFixed(2)} s.`);
  } else if (kind === "cancelled") {
    finish("cancelled", `Cancelled after ${event.done} ${unit()}.`);
  } else if (kind === "error") {
    finish("error", event.message);
  }
}

function unit() { return state.segments ? "superpixels" : "positions"; }

function markWanted() {
  // Only the region's cells are shown: a cell is wanted once it or a lattice cell is computed.
  state.wanted.fill(0);
  const [y0, x0, y1, x1] = state.region;
  const {rows, cols, patch, stride} = state;
  for (let row = 0; row < rows; row++) {
    for (let col = 0; col < cols; col++) {
      const cy = row * stride + Math.floor(patch / 2), cx = col * stride + Math.floor(patch / 2);
      if (cy >= y0 && cy < y1 && cx >= x0 && cx < x1) state.wanted[row * cols + col] = 1;
    }
  }
}

function progress(event) {
  if (event.done !== undefined) $("progress").value = event.done;
  if (event.queries !== undefined) $("n-queries").textContent = event.queries.toLocaleString();
  if (event.elapsed !== undefined) $("n-elapsed").textContent = `${event.elapsed.toFixed(2)} s`;
  if (event.done !== undefined) {
    $("status-text").textContent = `${event.done} of ${state.total} ${unit()}` +
      (event.stage === 0 ? " (coarse first)" : "");
  }
}

function finish(status, text) {
  state.status = status;
  if (source) { source.close(); source = null; }
  $("status-text").textContent = text;
  if (status === "error") showError(text);
  $("cancel").disabled = true;
  $("run").disabled = false;
  if (state.values && status !== "error") {
    $("downloads").hidden = false;
    for (const kind of ["png", "npy", "csv"]) {
      $(`dl-${kind}`).href = api(`/api/runs/${state.run}/heatmap.${kind}`);
    }
  }
}

async function cancelRun() {
  if (!state.run) return;
  try { await request(`/api/runs/${state.run}/cancel`, {method: "POST"}); }
  catch (error) { showError(error.message); }
}

function showPlan() {
  const picture = $("plan-picture");
  $("plan-text").textContent = "";
  if (state.segments) { picture.hidden = true; return; }  // its bucket plans: as text only
  picture.src = api(`/api/runs/${state.run}/plan.png`);
  picture.hidden = false;
}

async function planText() {
  if (!$("plan-details").open || !state.run || $("plan-text").textContent) return;
  try { $("plan-text").textContent = await request(`/api/runs/${state.run}/plan.txt`); }
  catch (error) { $("plan-text").textContent = error.message; }
}

// -- SQL ------------------------------------------------------------------------------------

async function runSql() {
  const box = $("sql-result");
  box.textContent = "running …";
  $("cancel-sql").disabled = false;
  try {
    const answer = await request("/api/sql", {method: "POST",
      body: JSON.stringify({query: $("sql").value})});
    box.innerHTML = "";
    box.appendChild(table(answer));
  } catch (error) {
    box.innerHTML = "";
    const pre = document.createElement("pre");
    pre.className = "sql-error";
    pre.textContent = error.message;
    box.appendChild(pre);
  } finally {
    $("cancel-sql").disabled = true;
  }
}

async function cancelSql() {
  try { await request("/api/sql/cancel", {method: "POST"}); }
  catch (error) { showError(error.message); }
}

function table(answer) {
  const element = document.createElement("table");
  const head = element.createTHead().insertRow();
  for (const name of answer.columns) head.insertCell().outerHTML = `<th>${escape(name)}</th>`;
  const body = element.createTBody();
  for (const row of answer.rows) {
    const line = body.insertRow();
    for (const value of row) {
      const cell = line.insertCell();
      if (Array.isArray(value) && Array.isArray(value[0])) {
        cell.textContent = `heatmap ${value.length}×${value[0].length}`;
      } else if (typeof value === "number") {
        cell.textContent = Number.isInteger(value) ? value : value.toPrecision(4);
      } else {
        cell.textContent = value === null ? "NULL" : String(value);
      }
    }
  }
  const caption = element.createCaption();
  caption.textContent = `${answer.count} rows` +
    (answer.truncated ? ` (the first ${answer.rows.length} shown)` : "");
  return element;
}

function escape(text) {
  const span = document.createElement("span");
  span.textContent = text;
  return span.innerHTML;
}

// -- wiring -----------------------------------------------------------------------------------

$("photo").addEventListener("change", choosePhoto);
$("model").addEventListener("change", choosePhoto);
$("upload").addEventListener("change", uploadPhoto);
$("run").addEventListener("click", startRun);
$("cancel").addEventListener("click", cancelRun);
$("clear-region").addEventListener("click", () => { state.region = null; drawRegion(); });
$("copy").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(state.statement));
$("use-statement").addEventListener("click", () => { $("sql").value = state.statement; });
$("run-sql").addEventListener("click", runSql);
$("cancel-sql").addEventListener("click", cancelSql);
$("plan-details").addEventListener("toggle", planText);
for (const radio of document.querySelectorAll("input[name=mode]")) {
  radio.addEventListener("change", () => {
    const mode = document.querySelector("input[name=mode]:checked").value;
    $("value").disabled = mode === "exact";
    if (mode !== "exact") $("value").value = state.config.defaults[mode];
  });
}
for (const radio of document.querySelectorAll("input[name=hide]")) {
  radio.addEventListener("change", () => {
    // Segments are hidden exactly over the whole photo: no patch, stride, region or τ.
    const segments = document.querySelector("input[name=hide]:checked").value === "segments";
    $("segments").disabled = !segments;
    $("patch").disabled = $("stride").disabled = segments;
    for (const mode of document.querySelectorAll("input[name=mode]")) {
      mode.disabled = segments && mode.value !== "exact";
      if (segments && mode.value === "exact") mode.checked = true;
    }
    $("value").disabled = segments || $("value").disabled;
    if (segments) { state.region = null; drawRegion(); }
  });
}
const draw = $("draw-canvas");
draw.addEventListener("mousedown", onDown);
draw.addEventListener("mousemove", onMove);
window.addEventListener("mouseup", onUp);
draw.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
loadConfig().catch((error) => showError(error.message));
