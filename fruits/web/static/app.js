// Fruits! page: identify a photo (POST /api/identify), add it (POST /api/photos), and a dashboard polling
// GET /api/dashboard every refresh_seconds (<= 2 s). Plain JS, no build step; data goes into the page as text only.
// With a token set on the server, every API call carries it (asked once, kept for this tab in sessionStorage);
// images come from the signed URLs the API hands out (an <img> sends no header).
"use strict";

const $ = (id) => document.getElementById(id);
let config = { token_required: false, refresh_seconds: 1.5, window_seconds: 600 };
let shownPlotsVersion = null;
let started = false;

function authHeaders() {
  const token = $("token").value || sessionStorage.getItem("fruits-token") || "";
  return token ? { Authorization: "Bearer " + token } : {};
}

function askToken(message) {
  $("token-box").hidden = false;
  $("token-hint").textContent = message;
  $("token").focus();
}

async function api(url, options = {}) {
  const response = await fetch(url, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) askToken("this server needs its token");
  return response;
}

async function post(url, form) {
  const response = await api(url, { method: "POST", body: form });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = cell === null || cell === undefined ? "–" : String(cell);
    tr.appendChild(td);
  }
  return tr;
}

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map(row));
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

// --- identify -------------------------------------------------------------------------------------------------

function chosenPhoto() {
  return $("photo").files[0];
}

$("photo").addEventListener("change", () => {
  $("identify-button").disabled = !chosenPhoto();
  if (chosenPhoto()) $("identify-form").requestSubmit();
});

$("identify-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const photo = chosenPhoto();
  if (!photo) return;
  $("identify-error").textContent = "";
  $("add-result").textContent = "";
  $("preview").src = URL.createObjectURL(photo);
  $("predicted").textContent = "…";
  $("confidence").textContent = "";
  $("result").hidden = false;
  $("neighbors").replaceChildren();
  const form = new FormData();
  form.append("file", photo, photo.name || "photo.jpg");
  try {
    const answer = await post("/api/identify", form);
    $("predicted").textContent = answer.predicted;
    $("confidence").textContent = `${Math.round(answer.confidence * 100)} %`;
    $("pca-version").textContent = `PCA v${answer.pca_version}, 5 nearest labelled photos:`;
    $("neighbors").replaceChildren(...answer.neighbors.map((n) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.alt = n.label;
      if (n.thumbnail) img.src = n.thumbnail;
      const caption = document.createElement("div");
      caption.textContent = `${n.label} · ${n.distance.toFixed(2)}`;
      li.append(img, caption);
      return li;
    }));
    $("add-label").value = answer.predicted;
    $("add-form").hidden = !config.uploads;
  } catch (error) {
    $("predicted").textContent = "?";
    $("identify-error").textContent = error.message;
  }
});

$("add-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const photo = chosenPhoto();
  if (!photo) return;
  const form = new FormData();
  form.append("file", photo, photo.name || "photo.jpg");
  if ($("add-label").value.trim()) form.append("label", $("add-label").value.trim());
  try {
    const answer = await post("/api/photos", form);
    $("add-result").textContent = answer.photos.map((p) => p.path ? `added as ${p.path}` : p.note).join(", ");
  } catch (error) {
    $("add-result").textContent = error.message;
  }
});

$("token").addEventListener("change", () => sessionStorage.setItem("fruits-token", $("token").value));
$("token-box").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("fruits-token", $("token").value);
  $("token-hint").textContent = "";
  if (!started) start();
});

// --- dashboard ------------------------------------------------------------------------------------------------

function drawChart(points, windowSeconds) {
  const canvas = $("chart");
  const scale = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 720, height = canvas.clientHeight || 160;
  canvas.width = width * scale;
  canvas.height = height * scale;
  const g = canvas.getContext("2d");
  g.scale(scale, scale);
  g.clearRect(0, 0, width, height);
  const now = Date.now() / 1000;
  const max = Math.max(1, ...points.map((p) => p.images_per_s));
  const left = 40, bottom = height - 18, top = 8;
  g.fillStyle = "#68716c";
  g.font = "11px system-ui";
  g.fillText(max.toFixed(0), 4, top + 8);
  g.fillText("0", 4, bottom);
  g.fillText(`-${Math.round(windowSeconds / 60)} min`, left, height - 4);
  g.fillText("now", width - 28, height - 4);
  g.strokeStyle = "#e1e4dc";
  g.beginPath(); g.moveTo(left, bottom); g.lineTo(width, bottom); g.stroke();
  if (!points.length) return;
  const x = (t) => left + (width - left) * (1 - (now - t) / windowSeconds);
  const y = (v) => bottom - (bottom - top) * (v / max);
  g.strokeStyle = "#2f7d32";
  g.fillStyle = "rgba(47,125,50,.15)";
  g.lineWidth = 2;
  g.beginPath();
  g.moveTo(x(points[0].t), bottom);
  for (const p of points) g.lineTo(x(p.t), y(p.images_per_s));
  g.lineTo(x(points[points.length - 1].t), bottom);
  g.closePath();
  g.fill();
  g.beginPath();
  points.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p.images_per_s)) : g.moveTo(x(p.t), y(p.images_per_s))));
  g.stroke();
}

function render(data) {
  const status = data.status;
  const features = status.features || {};
  const quarantine = status.quarantine || {};
  const labels = features.labels || {};
  const stream = status.stream;
  $("updated").textContent = `updated ${new Date(data.at).toLocaleTimeString()}`;
  $("count-features").textContent = features.exists ? features.rows : 0;
  $("count-quarantine").textContent = quarantine.exists ? quarantine.rows : 0;
  $("count-labels").textContent = Object.keys(labels).length;
  const backlog = data.backlog;
  $("count-backlog").textContent = backlog ? backlog.pending : "n/a";
  $("count-oldest").textContent = backlog ? age(backlog.oldest_pending_age_seconds) : "n/a";
  $("count-rate").textContent = stream && stream.images_per_s !== null ? stream.images_per_s : "–";
  $("stream-state").textContent = stream ? `last batch ${age(stream.age_seconds)} ago` : "no stream progress yet";
  $("window").textContent = `${Math.round(config.window_seconds / 60)} min`;
  drawChart(data.throughput, config.window_seconds);
  fillTable("batches", data.batches.map((b) => [b.batch, b.files, (b.seconds || 0).toFixed(2), b.images_per_s, new Date(b.at).toLocaleTimeString()]));
  fillTable("reasons", Object.entries(data.quarantine_reasons));
  fillTable("labels", Object.entries(labels).sort((a, b) => b[1] - a[1]));
  const pca = data.pca;
  $("pca-title").textContent = pca.version ? `v${pca.version}, k = ${pca.k}` : "no model yet (fruits refit-pca)";
  if (pca.version !== shownPlotsVersion) {
    shownPlotsVersion = pca.version;
    $("plots").replaceChildren(...pca.plots.map((p) => {
      const img = document.createElement("img");
      img.src = p.url;
      img.alt = p.name;
      return img;
    }));
  }
}

async function refresh() {
  try {
    const response = await api("/api/dashboard");
    if (response.ok) render(await response.json());
  } catch (error) {
    $("stream-state").textContent = "server unreachable";
  } finally {
    setTimeout(refresh, config.refresh_seconds * 1000);
  }
}

async function start() {
  $("token").value = $("token").value || sessionStorage.getItem("fruits-token") || "";
  try {
    const response = await api("/api/config");
    if (response.status === 401) return;  // asked for the token: start() again once it is given
    if (response.ok) config = await response.json();
  } catch (error) { /* keep the defaults */ }
  started = true;
  $("token-box").hidden = !config.token_required;
  refresh();
}

start();
