// The status page: polls /status/data every second, keeps 5 minutes of readings in the page,
// and draws them. The host sends totals; rates are the difference of two readings over the time
// between them (the host's clock), so a missed poll widens one step instead of losing counts.
"use strict";

const POLL_MS = 1000;
const HISTORY_MS = 5 * 60 * 1000;
let rangeMs = HISTORY_MS; // what the charts show, up to the history kept
// Integration latency quantiles are taken over the calls of this window.
const LATENCY_WINDOW_MS = 10 * 1000;
const STALE_MS = 5000;
const REGION = document.querySelector('meta[name="region"]').content;
// "sigv4" when the host checks signatures on /status/data, "none" when it is open.
const AUTH = document.querySelector('meta[name="auth"]').content;
const KEY_STORE = "connection-host-status-key";

// ---- readings ------------------------------------------------------------------------------
const readings = []; // raw /status/data answers, oldest first
const points = []; // derived per reading: { t, connections, queue, rates..., p50, p95 }
let lastOk = 0;

function ingest(data) {
  const prev = readings[readings.length - 1];
  readings.push(data);
  const point = { t: data.at, connections: data.connections, queue: data.outboundQueueBytes };
  const dt = prev ? (data.at - prev.at) / 1000 : 0;
  const rate = (name) => {
    if (!prev || dt <= 0) return null;
    const d = data.totals[name] - prev.totals[name];
    return d < 0 ? null : d / dt; // a smaller total: the host restarted
  };
  point.in = rate("messagesIn");
  point.out = rate("messagesOut");
  point.connects = rate("connects");
  point.refused = rate("refusedConnects");
  point.clientErrors = rate("clientErrors");
  point.integrationErrors = rate("integrationErrors");
  point.executionErrors = rate("executionErrors");
  point.errors = [point.clientErrors, point.integrationErrors, point.executionErrors]
    .reduce((a, b) => (a === null || b === null ? null : a + b), 0);
  const base = readings.find((r) => r.at >= data.at - LATENCY_WINDOW_MS && r !== data) || prev;
  const recent = base ? latencyDelta(base.integrationLatency, data.integrationLatency) : null;
  point.p50 = recent ? quantile(recent, 0.5) : null;
  point.p95 = recent ? quantile(recent, 0.95) : null;
  point.latencyCalls = recent ? recent.total : 0;
  points.push(point);
  while (readings.length && readings[0].at < data.at - HISTORY_MS) readings.shift();
  while (points.length && points[0].t < data.at - HISTORY_MS) points.shift();
}

// The calls between two readings of the histogram, as cumulative counts per bound.
function latencyDelta(from, to) {
  if (to.count < from.count || to.buckets.length !== from.buckets.length) return null;
  const buckets = to.buckets.map((b, i) => ({ le: b.le, count: b.count - from.buckets[i].count }));
  const total = to.count - from.count;
  return total > 0 ? { buckets, total } : null;
}

// Prometheus's histogram_quantile: linear within the bucket that holds the rank; a rank in the
// +Inf bucket is reported as the largest finite bound.
function quantile({ buckets, total }, q) {
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      if (b.le === null) return lower;
      const inBucket = b.count - below;
      return inBucket > 0 ? lower + (b.le - lower) * ((rank - below) / inBucket) : b.le;
    }
    if (b.le !== null) lower = b.le;
    below = b.count;
  }
  return lower;
}

// ---- formatting ----------------------------------------------------------------------------
const grouped = new Intl.NumberFormat("en-US");
function fmtCount(v) {
  if (v === null || v === undefined) return "—";
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + "M";
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(v >= 1e5 ? 0 : 1) + "k";
  return grouped.format(v);
}
function fmtRate(v) {
  if (v === null || v === undefined) return "—";
  if (v >= 100) return fmtCount(Math.round(v));
  return v.toFixed(1);
}
function fmtMs(v) {
  if (v === null || v === undefined) return "—";
  if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + " s";
  if (v >= 10) return Math.round(v) + " ms";
  return v.toFixed(1) + " ms";
}
function fmtBytes(v) {
  if (v === null || v === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v >= 100 ? 0 : 1)) + " " + units[i];
}
function fmtAgo(ms) {
  const s = Math.max(0, ms / 1000);
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  return Math.floor(s / 3600) + " h ago";
}

// ---- tiles ---------------------------------------------------------------------------------
function tile(id, value, text, sub, alert = false) {
  const el = document.getElementById(id);
  el.dataset.value = value === null || value === undefined ? "" : String(value);
  el.dataset.alert = String(alert);
  el.querySelector(".value").textContent = text;
  el.querySelector(".sub").textContent = sub;
  el.querySelector(".sub").title = sub;
}

function renderTiles() {
  const data = readings[readings.length - 1];
  const p = points[points.length - 1];
  const t = data.totals;
  tile("tile-connections", data.connections, fmtCount(data.connections), `peak ${fmtCount(Math.max(...points.map((x) => x.connections)))} in 5 min`);
  tile("tile-connects", p.connects, fmtRate(p.connects), `${fmtCount(t.connects)} total · ${fmtCount(t.refusedConnects)} refused`);
  tile("tile-messages-in", p.in, fmtRate(p.in), `${fmtCount(t.messagesIn)} total · ${fmtBytes(t.bytesIn)}`);
  tile("tile-messages-out", p.out, fmtRate(p.out), `${fmtCount(t.messagesOut)} total · ${fmtBytes(t.bytesOut)}`);
  const errorTotal = t.clientErrors + t.integrationErrors + t.executionErrors;
  tile("tile-errors", p.errors, fmtRate(p.errors), `${fmtCount(errorTotal)} total`, p.errors > 0);
  document.getElementById("tile-errors").title =
    `client ${t.clientErrors}, integration ${t.integrationErrors}, execution ${t.executionErrors} since the host started`;
  tile("tile-p50", p.p50, fmtMs(p.p50), `${fmtCount(data.integrationLatency.count)} calls in all`);
  tile("tile-p95", p.p95, fmtMs(p.p95), `${fmtCount(p.latencyCalls)} calls in 10 s`);
  tile("tile-queue", data.outboundQueueBytes, fmtBytes(data.outboundQueueBytes),
    `${fmtCount(t.slowConsumerCloses)} slow-consumer closes`);
}

// ---- charts --------------------------------------------------------------------------------
const CHARTS = {
  connections: { format: fmtCount, series: [["Open", "connections", "--s1"]] },
  messages: { format: fmtRate, series: [["In", "in", "--s1"], ["Out", "out", "--s2"]] },
  errors: {
    format: fmtRate,
    series: [["Client", "clientErrors", "--s4"], ["Integration", "integrationErrors", "--s3"], ["Execution", "executionErrors", "--s5"]],
  },
  latency: { format: fmtMs, series: [["p50", "p50", "--s1"], ["p95", "p95", "--s5"]] },
  connects: { format: fmtRate, series: [["Accepted", "connects", "--s2"], ["Refused", "refused", "--s3"]] },
  queue: { format: fmtBytes, series: [["Bytes", "queue", "--s4"]], bytes: true },
};

function setupCharts() {
  for (const fig of document.querySelectorAll("figure.chart")) {
    const chart = CHARTS[fig.dataset.chart];
    const legend = document.createElement("span");
    legend.className = "legend";
    for (const [label, key, color] of chart.series) {
      const item = document.createElement("span");
      item.dataset.series = key;
      const swatch = document.createElement("i");
      swatch.style.background = `var(${color})`;
      const value = document.createElement("b");
      value.textContent = "—";
      item.append(swatch, label + " ", value);
      legend.append(item);
    }
    fig.querySelector("figcaption").append(legend);
    chart.canvas = fig.querySelector("canvas");
    chart.legend = legend;
  }
}

// A round upper bound for the axis: 1, 2 or 5 times a power of ten (powers of 1024 for bytes).
function niceMax(v, bytes) {
  if (!(v > 0)) return bytes ? 1024 : 1;
  if (bytes && v >= 1024) {
    const unit = 1024 ** Math.floor(Math.log(v) / Math.log(1024));
    return niceMax(v / unit, false) * unit;
  }
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// How many grid steps divide an axis up to `top` into round values: fifths of 1 and 5, quarters
// of 2 and of byte sizes (powers of 1024).
function ticks(top, bytes) {
  if (bytes) return 4;
  return Math.round(top / 10 ** Math.floor(Math.log10(top))) === 2 ? 4 : 5;
}

function drawChart(chart, now, css) {
  const canvas = chart.canvas;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pad = { left: 56, right: 8, top: 6, bottom: 18 };
  const pw = w - pad.left - pad.right, ph = h - pad.top - pad.bottom;
  let max = 0;
  // One reading before the range too, so a line enters from the left edge.
  const first = Math.max(0, points.findIndex((p) => p.t >= now - rangeMs) - 1);
  const shown = points.slice(first);
  for (const [, key] of chart.series) for (const p of shown) if (p[key] > max) max = p[key];
  const top = niceMax(max, chart.bytes);
  const x = (t) => pad.left + pw * (1 - (now - t) / rangeMs);
  const y = (v) => pad.top + ph * (1 - v / top);

  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  ctx.strokeStyle = css.grid;
  ctx.fillStyle = css.muted;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  const steps = ticks(top, chart.bytes);
  for (let i = 0; i <= steps; i++) {
    const v = (top * i) / steps;
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(pad.left, yy); ctx.lineTo(w - pad.right, yy); ctx.stroke();
    ctx.fillText(chart.format(v).replace(/\.0(?!\d)/, ""), pad.left - 6, yy);
  }
  ctx.textBaseline = "alphabetic";
  const step = rangeMs > 60000 ? 60000 : 15000;
  for (let ago = rangeMs; ago >= 0; ago -= step) {
    ctx.textAlign = ago === rangeMs ? "left" : ago === 0 ? "right" : "center";
    const label = ago === 0 ? "now" : step === 60000 ? `-${ago / 60000} min` : `-${ago / 1000} s`;
    ctx.fillText(label, x(now - ago), h - 4);
  }

  ctx.save();
  ctx.beginPath();
  ctx.rect(pad.left, 0, pw, h);
  ctx.clip();
  ctx.lineJoin = "round";
  // Each series a little thinner than the one before, so equal ones still show both colours.
  for (const [i, [, key, color]] of chart.series.entries()) {
    ctx.lineWidth = 2.4 - 0.6 * i;
    ctx.strokeStyle = css[color];
    ctx.beginPath();
    let drawing = false;
    for (const p of shown) {
      const v = p[key];
      if (v === null || v === undefined) { drawing = false; continue; }
      const px = x(p.t), py = y(v);
      if (drawing) ctx.lineTo(px, py); else ctx.moveTo(px, py);
      drawing = true;
    }
    ctx.stroke();
  }
  ctx.restore();
  const last = points[points.length - 1];
  for (const item of chart.legend.children) item.querySelector("b").textContent = chart.format(last[item.dataset.series]);
}

function renderCharts() {
  const style = getComputedStyle(document.documentElement);
  const css = { grid: style.getPropertyValue("--grid").trim(), muted: style.getPropertyValue("--muted").trim() };
  for (const n of [1, 2, 3, 4, 5]) css[`--s${n}`] = style.getPropertyValue(`--s${n}`).trim();
  const now = readings[readings.length - 1].at;
  for (const chart of Object.values(CHARTS)) drawChart(chart, now, css);
}

// ---- cluster -------------------------------------------------------------------------------
function renderCluster() {
  const data = readings[readings.length - 1];
  const body = document.getElementById("cluster-hosts");
  const rows = data.cluster ? data.cluster.hosts : [{
    hostId: data.host.hostId, endpoint: "", heartbeatAt: null, state: "live", thisHost: true,
  }];
  document.getElementById("cluster-summary").textContent = data.cluster
    ? `${rows.filter((r) => r.state === "live").length} of ${rows.length} live · heartbeat every ${data.cluster.heartbeatIntervalMs / 1000} s, lapsed after ${data.cluster.hostTimeoutMs / 1000} s`
    : "not clustered: this host alone";
  body.replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.host = r.hostId;
    const cell = (text) => { const td = document.createElement("td"); td.textContent = text; tr.append(td); return td; };
    cell(r.thisHost ? `${r.hostId} (this host)` : r.hostId);
    cell(r.endpoint || "—");
    cell(r.heartbeatAt === null ? "—" : fmtAgo(data.at - r.heartbeatAt));
    const state = document.createElement("span");
    state.className = "state";
    state.dataset.state = r.state;
    const dot = document.createElement("span");
    dot.className = "dot";
    state.append(dot, r.state);
    cell("").append(state);
    return tr;
  }));
}

// ---- freshness -----------------------------------------------------------------------------
function setFreshness(state, text) {
  const el = document.getElementById("freshness");
  el.dataset.state = state;
  document.getElementById("freshness-text").textContent = text;
}

setInterval(() => {
  if (!lastOk) return;
  const age = Date.now() - lastOk;
  if (age > STALE_MS) setFreshness("stale", `no answer for ${Math.round(age / 1000)} s`);
}, 1000);

// ---- signing (SigV4, as the AWS SDKs sign management calls) -------------------------------
// SHA-256 and HMAC written out, because crypto.subtle exists only on https:// and loopback pages
// and a management listener is often plain http on a private network.
const K = Uint32Array.of(
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2);
const ror = (x, n) => (x >>> n) | (x << (32 - n));

function sha256(bytes) {
  const blocks = new Uint8Array(((bytes.length + 9 + 63) >> 6) << 6);
  blocks.set(bytes);
  blocks[bytes.length] = 0x80;
  const view = new DataView(blocks.buffer);
  view.setUint32(blocks.length - 8, Math.floor(bytes.length / 0x20000000));
  view.setUint32(blocks.length - 4, (bytes.length << 3) >>> 0);
  const H = Uint32Array.of(0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19);
  const W = new Uint32Array(64);
  for (let off = 0; off < blocks.length; off += 64) {
    for (let i = 0; i < 16; i++) W[i] = view.getUint32(off + i * 4);
    for (let i = 16; i < 64; i++) {
      const s0 = ror(W[i - 15], 7) ^ ror(W[i - 15], 18) ^ (W[i - 15] >>> 3);
      const s1 = ror(W[i - 2], 17) ^ ror(W[i - 2], 19) ^ (W[i - 2] >>> 10);
      W[i] = W[i - 16] + s0 + W[i - 7] + s1;
    }
    let [a, b, c, d, e, f, g, h] = H;
    for (let i = 0; i < 64; i++) {
      const t1 = (h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
      const t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    H[0] += a; H[1] += b; H[2] += c; H[3] += d; H[4] += e; H[5] += f; H[6] += g; H[7] += h;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  H.forEach((word, i) => outView.setUint32(i * 4, word));
  return out;
}

const utf8 = (s) => new TextEncoder().encode(s);
const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

function hmac(key, message) {
  if (key.length > 64) key = sha256(key);
  const inner = new Uint8Array(64 + message.length);
  const outer = new Uint8Array(64 + 32);
  for (let i = 0; i < 64; i++) {
    inner[i] = (key[i] || 0) ^ 0x36;
    outer[i] = (key[i] || 0) ^ 0x5c;
  }
  inner.set(message, 64);
  outer.set(sha256(inner), 64);
  return sha256(outer);
}

// The headers of a signed GET of `path` (no query) on this page's host.
function signature(key, path) {
  const amzDate = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+/, "");
  const day = amzDate.slice(0, 8);
  const scope = `${day}/${REGION}/execute-api/aws4_request`;
  const canonical = ["GET", path, "", `host:${location.host}`, `x-amz-date:${amzDate}`, "", "host;x-amz-date",
    hex(sha256(new Uint8Array(0)))].join("\n");
  const toSign = ["AWS4-HMAC-SHA256", amzDate, scope, hex(sha256(utf8(canonical)))].join("\n");
  let k = hmac(utf8("AWS4" + key.secret), utf8(day));
  for (const part of [REGION, "execute-api", "aws4_request"]) k = hmac(k, utf8(part));
  return {
    "X-Amz-Date": amzDate,
    Authorization: `AWS4-HMAC-SHA256 Credential=${key.id}/${scope}, SignedHeaders=host;x-amz-date, Signature=${hex(hmac(k, utf8(toSign)))}`,
  };
}

function storedKey() {
  try { return JSON.parse(sessionStorage.getItem(KEY_STORE)); } catch { return null; }
}

function showSignIn(message) {
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = message || "";
  document.getElementById("sign-out").hidden = true;
  setFreshness("signed-out", "sign in to see live data");
}

// ---- polling -------------------------------------------------------------------------------
let timer = null;

async function poll() {
  clearTimeout(timer);
  const key = storedKey();
  if (AUTH === "sigv4" && !key) {
    showSignIn("");
    return; // until the operator signs in
  }
  try {
    const headers = key ? signature(key, "/status/data") : {};
    const response = await fetch("/status/data", { headers, cache: "no-store", signal: AbortSignal.timeout(5000) });
    if (response.status === 403) {
      const body = await response.json().catch(() => ({}));
      const missing = response.headers.get("x-amzn-ErrorType")?.startsWith("MissingAuthenticationToken");
      showSignIn(key || !missing ? body.message || "refused" : "");
      return; // until the operator signs in
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const data = await response.json();
    document.getElementById("sign-in").hidden = true;
    document.getElementById("sign-out").hidden = !key;
    lastOk = Date.now();
    ingest(data);
    document.getElementById("identity").textContent =
      `${data.host.apiId}/${data.host.stage} · host ${data.host.hostId} · v${data.host.version}`;
    renderTiles();
    renderCharts();
    renderCluster();
    setFreshness("live", `live · ${new Date(data.at).toLocaleTimeString()}`);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (e) {
    if (!lastOk || Date.now() - lastOk > STALE_MS) setFreshness("down", `host unreachable (${e.message})`);
  }
  timer = setTimeout(poll, POLL_MS);
}

document.getElementById("region").textContent = REGION;
document.getElementById("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = document.getElementById("key-id").value.trim();
  const secret = document.getElementById("secret").value;
  sessionStorage.setItem(KEY_STORE, JSON.stringify({ id, secret }));
  document.getElementById("secret").value = "";
  poll();
});
document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  showSignIn("");
});
for (const button of document.querySelectorAll(".range button")) {
  button.addEventListener("click", () => {
    rangeMs = Number(button.dataset.range);
    for (const b of document.querySelectorAll(".range button")) b.setAttribute("aria-pressed", String(b === button));
    if (readings.length) renderCharts();
  });
}
window.addEventListener("resize", () => { if (readings.length) renderCharts(); });
setupCharts();
poll();
