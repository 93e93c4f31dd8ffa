// End-to-end test of the status page (GET /status on the management listener) in headless
// Chromium, against the real host under a load of WebSocket clients driven from Node.
// Plain Node, no test framework.
//
//   node tests/browser/status.test.mjs     (Node 20 needs --experimental-websocket; tests/run.sh --only browser passes it)
//
// Environment:
//   BROWSER_TEST_HOST_BIN   host binary (default ${CARGO_TARGET_DIR:-target}/debug/connection-host)
//   CHROMIUM_PATH           browser (default /usr/bin/chromium, Debian's package)
//   STATUS_TEST_SCREENSHOT  where the screenshot goes (default .test-run/artifacts/status-page.png)
//   BROWSER_TEST_TIMEOUT    overall bound in seconds (default 120)
// The host's configuration and output go to .test-run/ (status-host.toml, status-host.log).
// Exit status 0 on success, 1 on failure.
//
// What it checks: the management listener requires SigV4 (as on a shared machine), so the page
// first asks for an access key, then signs its polls with it in the browser; the open connections,
// message and error rates, integration latency and the cluster table it shows follow a load of
// WebSocket clients (echo messages, and messages whose integration answers 500), and its totals
// match what the clients did; after the clients leave, the rates fall to zero. A screenshot taken
// under load is kept.

import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const TARGET = path.resolve(ROOT, process.env.CARGO_TARGET_DIR || "target");
const HOST_BIN = path.resolve(ROOT, process.env.BROWSER_TEST_HOST_BIN || path.join(TARGET, "debug/connection-host"));
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const OVERALL_S = Number(process.env.BROWSER_TEST_TIMEOUT || 120);
const RUN_DIR = path.join(ROOT, ".test-run");
const LOG_PATH = path.join(RUN_DIR, "status-host.log");
const CONFIG_PATH = path.join(RUN_DIR, "status-host.toml");
const SCREENSHOT = path.resolve(ROOT, process.env.STATUS_TEST_SCREENSHOT || ".test-run/artifacts/status-page.png");

const KEY_ID = "AKIASTATUSPAGE01";
const SECRET = "status-page-secret/with+odd=chars";
const CLIENTS = 8;

const T0 = Date.now();
const progress = (msg) => console.log(`[status ${((Date.now() - T0) / 1000).toFixed(1).padStart(5)}s] ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class TestFailure extends Error {}
const fail = (msg) => { throw new TestFailure(msg); };

// ---- the host -------------------------------------------------------------------------------
let host = null;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// Echo messages, and a route whose integration answers 500 (IntegrationError).
const CONFIG = `
[api]
stage = "dev"
route_selection_expression = "$request.body.action"

[routes.echo]
integration = "echo"
two_way = true

[routes.broken]
integration = "broken"
two_way = true

[integrations.echo]
type = "mock"
response_template = "$input.body"

[integrations.broken]
type = "mock"
status_code = 500
response_template = "{}"

[limits]
messages_per_second = 1000
message_burst = 1000

[management.auth]
mode = "sigv4"
[management.auth.keys.${KEY_ID}]
secret = "${SECRET}"
`;

function startHost(publicPort, managementPort) {
  if (!fs.existsSync(HOST_BIN)) fail(`host binary not found: ${HOST_BIN} (build it, or set BROWSER_TEST_HOST_BIN)`);
  fs.writeFileSync(CONFIG_PATH, CONFIG);
  const log = fs.openSync(LOG_PATH, "w");
  const child = spawn(HOST_BIN, ["--config", CONFIG_PATH, "--listen", `127.0.0.1:${publicPort}`,
    "--management-listen", `127.0.0.1:${managementPort}`], {
    cwd: ROOT, stdio: ["ignore", log, log], detached: true,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info" },
  });
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  host = { child, exited, pid: child.pid };
}

async function waitHealthy(port, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let exitedWith = null;
  host.exited.then((r) => { exitedWith = r; });
  while (Date.now() < deadline) {
    if (exitedWith) fail(`host exited before becoming healthy (${JSON.stringify(exitedWith)}); see ${LOG_PATH}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) return;
    } catch { /* not listening yet */ }
    await sleep(100);
  }
  fail(`host did not answer GET /health within ${timeoutMs / 1000} s; see ${LOG_PATH}`);
}

async function stopHost() {
  if (!host) return;
  const h = host;
  host = null;
  try { h.child.kill("SIGTERM"); } catch { /* gone */ }
  await Promise.race([h.exited, sleep(5_000)]);
  try { process.kill(-h.pid, "SIGKILL"); } catch { /* gone */ }
}

// ---- /status/data, signed here with Node's crypto (an implementation apart from the page's) ----
function hmac(key, text) { return crypto.createHmac("sha256", key).update(text).digest(); }
const sha256hex = (text) => crypto.createHash("sha256").update(text).digest("hex");

async function statusData(port, { sign = true } = {}) {
  const amzDate = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+/, "");
  const day = amzDate.slice(0, 8);
  const scope = `${day}/us-east-1/execute-api/aws4_request`;
  const hostHeader = `127.0.0.1:${port}`;
  const canonical = ["GET", "/status/data", "", `host:${hostHeader}`, `x-amz-date:${amzDate}`, "", "host;x-amz-date", sha256hex("")].join("\n");
  const toSign = ["AWS4-HMAC-SHA256", amzDate, scope, sha256hex(canonical)].join("\n");
  let k = hmac(`AWS4${SECRET}`, day);
  for (const part of ["us-east-1", "execute-api", "aws4_request"]) k = hmac(k, part);
  const headers = sign ? {
    "x-amz-date": amzDate,
    authorization: `AWS4-HMAC-SHA256 Credential=${KEY_ID}/${scope}, SignedHeaders=host;x-amz-date, Signature=${hmac(k, toSign).toString("hex")}`,
  } : {};
  const res = await fetch(`http://${hostHeader}/status/data`, { headers, signal: AbortSignal.timeout(5000) });
  return { status: res.status, body: await res.json() };
}

// ---- load: WebSocket clients from Node ------------------------------------------------------
class Client {
  constructor(url) {
    this.ws = new WebSocket(url);
    this.replies = 0;
    this.errors = 0;
    this.open = new Promise((resolve, reject) => {
      this.ws.onopen = resolve;
      this.ws.onerror = () => reject(new Error("WebSocket error"));
    });
    this.closed = new Promise((resolve) => { this.ws.onclose = resolve; });
    this.ws.onmessage = (m) => {
      const text = String(m.data);
      if (text.startsWith('{"action":"echo"')) this.replies++;
      else this.errors++;
    };
  }
  send(action, n) { this.ws.send(JSON.stringify({ action, n })); }
}

// A load client, opened one at a time. Node 20's experimental WebSocket (undici) now and then fails
// a handshake before it reaches the host; one such failure is retried, and said.
async function connectClient(url) {
  for (let attempt = 1; ; attempt++) {
    const c = new Client(url);
    try {
      await c.open;
      return c;
    } catch (e) {
      if (attempt >= 2) throw e;
      progress(`a load client's handshake failed (${e.message}); trying once more`);
    }
  }
}

const sent = { echo: 0, broken: 0 };

// `clients` each send `perSecond` echo messages a second for `seconds`, and every `brokenEvery`th
// message goes to the failing route instead.
async function drive(clients, perSecond, seconds, brokenEvery) {
  const ticks = Math.round(seconds * 10);
  let i = 0;
  for (let t = 0; t < ticks; t++) {
    for (const c of clients) {
      for (let k = 0; k < perSecond / 10; k++) {
        i++;
        if (brokenEvery && i % brokenEvery === 0) { c.send("broken", i); sent.broken++; } else { c.send("echo", i); sent.echo++; }
      }
    }
    await sleep(100);
  }
}

// ---- the page ---------------------------------------------------------------------------------
const pageProblems = [];

async function tileValue(page, id) {
  const v = await page.locator(`#${id}`).getAttribute("data-value");
  return v === "" || v === null ? null : Number(v);
}

// Waits until `predicate(value of tile id)` holds; fails with what the tile showed.
async function waitTile(page, id, what, predicate, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  let v;
  while (Date.now() < deadline) {
    v = await tileValue(page, id);
    if (predicate(v)) return v;
    await sleep(200);
  }
  const text = await page.locator(`#${id}`).innerText().catch(() => "?");
  fail(`${id}: expected ${what} within ${timeoutMs / 1000} s; last data-value ${v}, shown ${JSON.stringify(text)}`);
}

async function updates(page) {
  return Number(await page.evaluate(() => document.body.dataset.updates || 0));
}

async function run(ctx) {
  fs.mkdirSync(RUN_DIR, { recursive: true });
  fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  if (!fs.existsSync(CHROMIUM)) fail(`Chromium not found at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  if (typeof WebSocket !== "function") fail("this Node.js has no global WebSocket: run it with --experimental-websocket (Node 20) or use Node 22+");

  const [publicPort, managementPort] = [await freePort(), await freePort()];
  startHost(publicPort, managementPort);
  await waitHealthy(managementPort, 60_000);
  progress(`host pid ${host.pid}: public 127.0.0.1:${publicPort}, management 127.0.0.1:${managementPort}`);

  // The data is protected as the management API is; the page itself holds none.
  const unsigned = await statusData(managementPort, { sign: false });
  if (unsigned.status !== 403) fail(`unsigned GET /status/data answered ${unsigned.status}, expected 403`);
  const publicPage = await fetch(`http://127.0.0.1:${publicPort}/status`);
  if (publicPage.status === 200) fail("the public listener serves /status; it belongs to the management listener only");

  ctx.browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    handleSIGINT: false, handleSIGTERM: false, handleSIGHUP: false,
    timeout: 30_000,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  progress(`chromium ${ctx.browser.version()} started`);
  const context = await ctx.browser.newContext({ viewport: { width: 1440, height: 720 }, colorScheme: "dark" });
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  page.on("pageerror", (e) => pageProblems.push(`uncaught ${e.message}`));
  // The refused polls (before signing in, and with the wrong secret) are logged as failed loads.
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource: .* 403/.test(m.text())) pageProblems.push(`console error: ${m.text()}`);
  });
  const offsite = [];
  page.on("request", (r) => { if (!r.url().startsWith(`http://127.0.0.1:${managementPort}/`)) offsite.push(r.url()); });
  await page.goto(`http://127.0.0.1:${managementPort}/status`, { waitUntil: "load", timeout: 15_000 });

  // Signed out: the page asks for a key; a wrong secret is refused with the host's message.
  await page.locator("#sign-in").waitFor({ state: "visible", timeout: 10_000 })
    .catch(() => fail("the page did not ask for an access key although the host requires signatures"));
  await page.fill("#key-id", KEY_ID);
  await page.fill("#secret", "not-the-secret");
  await page.click("#sign-in-form button[type=submit]");
  await page.locator("#sign-in-error").filter({ hasText: /signature/i }).waitFor({ timeout: 10_000 })
    .catch(() => fail("a wrong secret did not show the host's refusal"));
  await page.fill("#key-id", KEY_ID);
  await page.fill("#secret", SECRET);
  await page.click("#sign-in-form button[type=submit]");
  await page.locator("#sign-in").waitFor({ state: "hidden", timeout: 10_000 })
    .catch(() => fail("signing in with the configured key did not bring the data"));
  await page.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 3, null, { timeout: 10_000 })
    .catch(() => fail("the page did not update three times within 10 s of signing in"));
  progress("signed in with the configured key; the page polls /status/data signed in the browser");

  if ((await tileValue(page, "tile-connections")) !== 0) fail("connections shown before any client connected");
  const hostId = (await statusData(managementPort)).body.host.hostId;
  const row = page.locator(`#cluster-hosts tr[data-host="${hostId}"]`);
  if (!(await row.innerText()).includes("this host")) fail(`the cluster table does not show this host (${hostId})`);

  // Load: first half the clients, then all of them at a higher rate, some messages failing.
  const url = `ws://127.0.0.1:${publicPort}/dev`;
  ctx.clients = [];
  for (let i = 0; i < CLIENTS; i++) ctx.clients.push(await connectClient(url));
  progress(`${CLIENTS} clients connected`);
  await waitTile(page, "tile-connections", `${CLIENTS} open connections`, (v) => v === CLIENTS);
  await drive(ctx.clients.slice(0, CLIENTS / 2), 20, 6, 0);
  const inRate = await waitTile(page, "tile-messages-in", "a message rate above 0", (v) => v > 0);
  await waitTile(page, "tile-p50", "an integration latency", (v) => v !== null && v >= 0);
  progress(`page shows ${CLIENTS} connections, ${inRate.toFixed(1)} messages in/s and a p50 latency`);
  const heavy = drive(ctx.clients, 40, 10, 10);
  await waitTile(page, "tile-errors", "an error rate above 0", (v) => v > 0);
  const peakIn = await waitTile(page, "tile-messages-in", "a higher message rate", (v) => v > inRate * 1.5);
  progress(`page shows ${peakIn.toFixed(1)} messages in/s and a non-zero error rate under the heavier load`);
  // The screenshot under load, on the 1-minute range, once the heavier load has shown for a while.
  await page.click('.range button[data-range="60000"]');
  await sleep(5_000);
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  progress(`screenshot under load: ${path.relative(ROOT, SCREENSHOT)}`);
  await heavy;
  await drive(ctx.clients.slice(0, CLIENTS / 2), 10, 4, 0);

  // Every echo answered before the totals are compared.
  const deadline = Date.now() + 15_000;
  const answered = () => ctx.clients.reduce((n, c) => n + c.replies, 0);
  const refused = () => ctx.clients.reduce((n, c) => n + c.errors, 0);
  while ((answered() < sent.echo || refused() < sent.broken) && Date.now() < deadline) await sleep(100);
  if (answered() !== sent.echo || refused() !== sent.broken) {
    fail(`clients got ${answered()} echoes for ${sent.echo} and ${refused()} error frames for ${sent.broken}`);
  }
  const before = await updates(page);
  await page.waitForFunction((n) => Number(document.body.dataset.updates || 0) >= n + 2, before, { timeout: 10_000 });

  // The page's totals are what the clients did, and what the host reports.
  const data = (await statusData(managementPort)).body;
  const messages = sent.echo + sent.broken;
  const want = { messagesIn: messages, messagesOut: messages, integrationErrors: sent.broken, clientErrors: 0, executionErrors: 0, connects: CLIENTS };
  for (const [name, value] of Object.entries(want)) {
    if (data.totals[name] !== value) fail(`host reports ${name} = ${data.totals[name]}, the clients did ${value}`);
  }
  if (data.integrationLatency.count !== messages) fail(`host timed ${data.integrationLatency.count} integration calls for ${messages} messages`);
  const grouped = (n) => new Intl.NumberFormat("en-US").format(n);
  const shown = {
    "tile-messages-in": `${grouped(messages)} total`,
    "tile-messages-out": `${grouped(messages)} total`,
    "tile-errors": `${grouped(sent.broken)} total`,
    "tile-p50": `${grouped(messages)} calls in all`,
    "tile-connects": `${CLIENTS} total`,
  };
  for (const [id, text] of Object.entries(shown)) {
    const sub = await page.locator(`#${id} .sub`).textContent();
    if (!sub.includes(text)) fail(`${id} says ${JSON.stringify(sub)}, expected ${JSON.stringify(text)}`);
  }
  progress(`page totals match the load: ${messages} messages in and out, ${sent.broken} integration errors, ${CLIENTS} connects`);

  // The clients leave: connections fall to 0, and so do the rates.
  for (const c of ctx.clients) c.ws.close(1000);
  await Promise.all(ctx.clients.map((c) => c.closed));
  await waitTile(page, "tile-connections", "0 open connections after the clients left", (v) => v === 0);
  await waitTile(page, "tile-errors", "an error rate of 0 once the load stopped", (v) => v === 0);
  progress("after the clients left: 0 connections and no errors per second");

  if (offsite.length) fail(`the page requested other origins: ${offsite.join(", ")}`);
  if (pageProblems.length) fail(`problems on the page:\n  ${pageProblems.join("\n  ")}`);
}

async function cleanup(ctx) {
  for (const c of ctx.clients) { try { c.ws.close(); } catch { /* closed */ } }
  if (ctx.browser) await Promise.race([ctx.browser.close().catch(() => {}), sleep(5_000)]);
  await stopHost();
}

const ctx = { browser: null, clients: [] };
let finishing = false;

async function finish(code, message) {
  if (finishing) return;
  finishing = true;
  if (message) console.error(message);
  await cleanup(ctx).catch(() => {});
  if (code !== 0 && fs.existsSync(LOG_PATH)) {
    const tail = fs.readFileSync(LOG_PATH, "utf8").split("\n").slice(-25).join("\n");
    console.error(`--- last lines of ${path.relative(ROOT, LOG_PATH)} ---\n${tail}`);
  }
  process.exit(code);
}

for (const [sig, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]]) {
  process.on(sig, () => finish(code, `status page test: interrupted by ${sig}`));
}
process.on("exit", () => { if (host) try { process.kill(-host.pid, "SIGKILL"); } catch { /* gone */ } });

const overall = setTimeout(() => finish(1, `status page test FAILED: did not finish within ${OVERALL_S} s`), OVERALL_S * 1000);

try {
  await run(ctx);
  clearTimeout(overall);
  progress("PASSED");
  await finish(0);
} catch (e) {
  clearTimeout(overall);
  const what = e instanceof TestFailure ? e.message : (e && e.stack) || String(e);
  await finish(1, `status page test FAILED: ${what}`);
}
