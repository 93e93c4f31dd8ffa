// The client library's reliable mode through the loss of a host: three hosts clustered on one DynamoDB
// store (moto, DYNAMODB_TEST_ENDPOINT) with `[extensions.sessions] durability = "store"` and `ordered =
// true`, behind a loopback load balancer that sends each new connection to the first host that accepts
// it. A page in headless Chromium (the library as the host serves it from functions/web/lib) sends
// 1,000 messages to the API's $default route while this process posts 1,000 messages to the page's
// connection through host-b's management API; half way, host-a, which holds the session, is SIGKILLed.
// The page resumes on host-b: the same session (`recovered: true`), and in both directions every
// message arrives exactly once and in order. It fails on any loss, duplicate or reordering, on a second
// `$connect` (the handlers must not see the drop), and on a key invoked again without host-a's death to
// explain it; it prints the counts.
//
//   DYNAMODB_TEST_ENDPOINT=http://127.0.0.1:PORT node tests/browser/cluster.test.mjs
//
// moto started one request at a time (tests/moto_dynamodb.py; tests/run.sh --only browser starts it).
// Environment as for client.test.mjs; BROWSER_TEST_TIMEOUT (default 300) bounds the run in seconds. The
// hosts' output goes to .test-run/cluster-host-{a,b,c}.log.
//
// The handler is an HTTP integration served by this process. It deduplicates on
// `requestContext.idempotencyKey`, as PROTOCOL.md section 6 asks of a handler whose effects must happen
// once: a message host-a was invoking when it died is invoked again by host-b once host-a is judged dead
// (`cluster.host_timeout`), with the same key. The poster holds back while the kill is sent: a post
// forwarded to a host that dies may have been kept though its caller is answered 503, and posting it
// again can deliver it twice (connection-host/SESSIONS.md, "Known gaps"), which is the host's open
// question and not the client's. Posts made after the kill, while the session has no host, are not held.

import { spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { chromium } from "playwright-core";
import { FailoverProxy, HOST_BIN, HostProcess, ROOT, TestFailure, fail, freePort, progressFor, sleep, until } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const OVERALL_S = Number(process.env.BROWSER_TEST_TIMEOUT || 300);
const ENDPOINT = process.env.DYNAMODB_TEST_ENDPOINT || "";
const MESSAGES = 1000;
/** The message count (each way) at which host-a is killed. */
const KILL_AT = 400;
/** How far the posts may run ahead of the page's messages, so that both flow when the kill comes. */
const POST_LEAD = 200;
/** Posts let through at once after the kill, so that some are made while the session has no host. */
const POSTS_WHILE_AWAY = 150;
const HOST_TIMEOUT = "6s";
const RUN_DIR = path.join(ROOT, ".test-run");
const progress = progressFor("cluster");
const AWS_ENV = { AWS_ACCESS_KEY_ID: "test", AWS_SECRET_ACCESS_KEY: "test", AWS_REGION: "us-east-1", AWS_EC2_METADATA_DISABLED: "true" };

// ---- the handler ------------------------------------------------------------------------------------
/** The $default route's integration: records each message's effect once per idempotency key. */
class Handler {
  constructor() {
    /** Per key: the hosts that invoked it (their `domainName`), with the time. */
    this.byKey = new Map();
    /** Effects per message `n` (invocations with a key not seen before). */
    this.effects = new Map();
    /** The `n` of each effect, in the order they happened. */
    this.order = [];
    this.connects = 0;
    this.server = http.createServer((req, res) => {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        this.event(JSON.parse(Buffer.concat(chunks).toString()));
        res.writeHead(200, { "content-type": "application/json" });
        res.end('{"statusCode":200}');
      });
    });
  }

  event(e) {
    const ctx = e.requestContext || {};
    if (ctx.eventType === "CONNECT") this.connects += 1;
    if (ctx.eventType !== "MESSAGE") return;
    const key = ctx.idempotencyKey;
    const calls = this.byKey.get(key) || [];
    // `made`: when the invoking host built the event; a request it sent just before its kill can
    // arrive here after it.
    calls.push({ host: ctx.domainName, at: Date.now(), made: ctx.requestTimeEpoch });
    this.byKey.set(key, calls);
    if (calls.length > 1) return; // seen: no second effect
    const n = JSON.parse(e.body).n;
    this.effects.set(n, (this.effects.get(n) || 0) + 1);
    this.order.push(n);
  }

  listen() {
    return new Promise((resolve) => this.server.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${this.server.address().port}/events`)));
  }
}

// ---- the poster -------------------------------------------------------------------------------------
/** Posts `{"n":"p<i>"}` one after another to a connection, each again after an error until it is answered 200. */
class Poster {
  constructor(managementPort, connectionId, paceWith) {
    this.url = `http://127.0.0.1:${managementPort}/dev/@connections/${encodeURIComponent(connectionId)}`;
    this.paceWith = paceWith;
    this.lead = POST_LEAD;
    this.done = 0;
    this.retries = 0;
    this.statuses = {};
    this.paused = null;
    this.current = Promise.resolve();
  }

  async run() {
    for (let i = 0; i < MESSAGES; i++) {
      while (this.paused || i > this.paceWith() + this.lead) await sleep(this.paused ? 10 : 20);
      this.current = this.post(`{"n":"p${i}"}`);
      await this.current;
      this.done = i + 1;
    }
  }

  async post(body) {
    const giveUp = Date.now() + 60_000;
    for (;;) {
      let status = 0;
      try {
        const res = await fetch(this.url, { method: "POST", body, signal: AbortSignal.timeout(15_000) });
        status = res.status;
        await res.arrayBuffer();
      } catch {
        // no answer: counted as status 0
      }
      if (status === 200) return;
      this.statuses[status] = (this.statuses[status] || 0) + 1;
      this.retries += 1;
      if (Date.now() > giveUp) fail(`the post ${body} was not accepted within 60 s (statuses ${JSON.stringify(this.statuses)})`);
      await sleep(100);
    }
  }

  /** Resolves once no post is in flight; none starts until {@link resume}. */
  async pause() {
    this.paused = true;
    await this.current;
  }

  resume() {
    this.paused = false;
  }
}

// ---- the page ---------------------------------------------------------------------------------------
// Runs in the page: loads the library the host serves, keeps what the client reports in window.t.
async function startClient(options) {
  const { Client } = await import("/lib/index.js");
  const t = (window.t = { states: [], connected: [], received: [], errors: [] });
  const c = (window.c = new Client({ ...options, url: `ws://${location.host}/dev` }));
  c.on("state", (s) => t.states.push(s));
  c.on("connected", (i) => t.connected.push(i));
  c.on("message", (m) => t.received.push(m));
  c.on("error", (e) => t.errors.push(`${e.code}: ${e.message}`));
  c.connect();
}

// Runs in the page: sends {"n":"m<i>"}, ten every 50 ms.
function startSending(count) {
  window.t.sending = (async () => {
    for (let i = 0; i < count; i++) {
      window.c.send(JSON.stringify({ n: `m${i}` }));
      if (i % 10 === 9) await new Promise((r) => setTimeout(r, 50));
    }
  })();
}

/** Lost, duplicated and out-of-order counts of `seen` (in arrival order) against `${prefix}0..999`. */
function tally(seen, prefix) {
  const want = Array.from({ length: MESSAGES }, (_, i) => `${prefix}${i}`);
  const counts = new Map();
  for (const n of seen) counts.set(n, (counts.get(n) || 0) + 1);
  const lost = want.filter((n) => !counts.has(n));
  const twice = want.filter((n) => counts.get(n) > 1);
  let outOfOrder = 0;
  let last = -1;
  for (const n of seen) {
    const i = Number(String(n).slice(prefix.length));
    if (i < last) outOfOrder += 1;
    last = Math.max(last, i);
  }
  const strangers = seen.filter((n) => !want.includes(n));
  return { arrived: seen.length, lost, twice, outOfOrder, strangers };
}

const describe = (t) =>
  `${t.arrived} arrived, lost ${t.lost.length}, duplicated ${t.twice.length}, out of order ${t.outOfOrder}` +
  (t.lost.length ? ` (lost ${t.lost.slice(0, 10).join(", ")})` : "") +
  (t.twice.length ? ` (twice ${t.twice.slice(0, 10).join(", ")})` : "") +
  (t.strangers.length ? `, ${t.strangers.length} unexpected (${t.strangers.slice(0, 3).join(", ")})` : "");

// ---- the cluster ------------------------------------------------------------------------------------
function hostConfig({ id, port, management, handlerUrl, tables, secret }) {
  return `[server]
listen = "127.0.0.1:${port}"
management_listen = "127.0.0.1:${management}"
static_dir = "functions/web"
[api]
stage = "dev"
# Tells the handler which host invoked it.
domain_name = "${id}"
[store]
kind = "dynamodb"
connections_table = "${tables}-connections"
groups_table = "${tables}-groups"
sessions_table = "${tables}-sessions"
endpoint_url = "${ENDPOINT}"
[cluster]
host_id = "${id}"
advertise_url = "http://127.0.0.1:${management}"
secret = "${secret}"
# Fast liveness: the killed host's session is taken over, and its keys invoked again, within seconds.
heartbeat_interval = "500ms"
host_timeout = "${HOST_TIMEOUT}"
[limits]
messages_per_second = 0
[extensions.sessions]
enabled = true
durability = "store"
ordered = true
[integrations.handler]
type = "http"
url = "${handlerUrl}"
[routes."$default"]
integration = "handler"
[routes."$connect"]
integration = "handler"
`;
}

/** DeleteTable on the test endpoint, which (moto, LocalStack) does not check signatures; best effort. */
async function deleteTables(tables) {
  for (const kind of ["connections", "groups", "sessions"]) {
    await fetch(ENDPOINT, {
      method: "POST",
      headers: {
        "content-type": "application/x-amz-json-1.0",
        "x-amz-target": "DynamoDB_20120810.DeleteTable",
        authorization: "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
      },
      body: JSON.stringify({ TableName: `${tables}-${kind}` }),
      signal: AbortSignal.timeout(10_000),
    }).catch(() => {});
  }
}

const ctx = { browser: null, hosts: [], proxy: null, handler: null, tables: null };

async function startCluster(handlerUrl) {
  const dir = path.join(RUN_DIR, "cluster");
  fs.mkdirSync(dir, { recursive: true });
  ctx.tables = `browser-cluster-${crypto.randomBytes(4).toString("hex")}`;
  const secret = crypto.randomBytes(16).toString("hex");
  const hosts = [];
  for (const id of ["host-a", "host-b", "host-c"]) {
    const [port, management] = [await freePort(), await freePort()];
    const config = path.join(dir, `${id}.toml`);
    fs.writeFileSync(config, hostConfig({ id, port, management, handlerUrl, tables: ctx.tables, secret }));
    hosts.push({ id, port, management, config });
  }
  const init = spawnSync(HOST_BIN, ["--config", hosts[0].config, "store", "init"], { cwd: ROOT, env: { ...process.env, ...AWS_ENV }, encoding: "utf8", timeout: 60_000 });
  if (init.status !== 0) fail(`store init failed (${init.status}): ${init.stdout}${init.stderr}`);
  for (const h of hosts) {
    h.process = new HostProcess({ config: h.config, port: h.port, healthPort: h.management, logPath: path.join(RUN_DIR, `cluster-${h.id}.log`), env: AWS_ENV });
    ctx.hosts.push(h.process);
  }
  await Promise.all(hosts.map((h) => h.process.start()));
  return hosts;
}

// ---- the run ----------------------------------------------------------------------------------------
async function run() {
  if (!ENDPOINT) fail("DYNAMODB_TEST_ENDPOINT is not set: start moto (tests/moto_dynamodb.py) and point it there");
  const handler = (ctx.handler = new Handler());
  const hosts = await startCluster(await handler.listen());
  const [a, b] = hosts;
  ctx.proxy = new FailoverProxy(hosts.map((h) => h.port));
  const origin = `http://127.0.0.1:${await ctx.proxy.listen()}`;
  progress(`${hosts.map((h) => `${h.id} pid ${h.process.child.pid} on ${h.port}`).join(", ")}; tables ${ctx.tables}-*; balancer at ${origin}`);

  ctx.browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
    timeout: 30_000,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await (await ctx.browser.newContext()).newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`uncaught ${e.message}`));
  page.setDefaultTimeout(15_000);
  await page.goto(`${origin}/`, { waitUntil: "load", timeout: 15_000 });
  await page.evaluate(startClient, {
    reliable: true,
    heartbeat: { interval: 1000, timeout: 3000 },
    backoff: { baseDelay: 300 },
    connectTimeout: 20_000,
    maxQueuedMessages: 5000,
  });
  const t = () => page.evaluate(() => ({ state: window.c.state, queued: window.c.queued, received: window.t.received.length, connected: window.t.connected, errors: window.t.errors }));
  await until("the page's first connection", 20_000, async () => (await t()).state === "connected");
  const first = (await t()).connected[0];
  if (!first.first || first.recovered || !first.connectionId) fail(`the first connection reported ${JSON.stringify(first)}`);
  if (ctx.proxy.upstreamOf.at(-1) !== a.port) fail("the page's connection did not go to host-a");
  progress(`chromium ${ctx.browser.version()}: session ${first.connectionId} on host-a`);

  const started = Date.now();
  const poster = new Poster(b.management, first.connectionId, () => handler.order.length);
  const posting = poster.run();
  posting.catch(() => {}); // awaited below; a failure before then must not go unhandled
  await page.evaluate(startSending, MESSAGES);

  await until(`${KILL_AT} messages each way`, 120_000, async () => handler.order.length >= KILL_AT && (await t()).received >= KILL_AT);
  await poster.pause();
  const killedAt = Date.now();
  await a.process.kill();
  const deadAt = Date.now(); // host-a has exited: it can build no event from here on
  const postedAtKill = poster.done;
  poster.lead += POSTS_WHILE_AWAY;
  poster.resume();
  const atKill = await t();
  progress(`host-a SIGKILLed with ${handler.order.length} messages handled, ${postedAtKill} posted, ${atKill.received} received, ${atKill.queued} unanswered`);
  if (handler.order.length >= MESSAGES || poster.done >= MESSAGES) fail("the kill came after a direction had finished");

  await until("the page to resume", 60_000, async () => (await t()).connected.length > 1 && (await t()).state === "connected");
  const resumed = (await t()).connected.at(-1);
  const postedAway = poster.done - postedAtKill;
  const on = hosts.find((h) => h.port === ctx.proxy.upstreamOf.at(-1));
  progress(`resumed on ${on.id} ${Date.now() - killedAt} ms after the kill, ${postedAway} posts accepted meanwhile: ${JSON.stringify(resumed)}`);
  if (!resumed.recovered || resumed.connectionId !== first.connectionId) fail(`the session did not survive host-a: ${JSON.stringify(resumed)}`);
  if (on === a) fail("resumed on host-a, which is dead");

  await posting;
  await until("every message answered and every post received", 180_000, async () => {
    const now = await t();
    return now.queued === 0 && now.received >= MESSAGES && handler.order.length >= MESSAGES;
  }).catch(async (e) => {
    const now = await t();
    throw new TestFailure(`${e.message}: ${handler.order.length} handled, ${now.received} received, ${now.queued} unanswered; errors ${JSON.stringify(now.errors.slice(-5))}`);
  });
  // Anything extra (a duplicate) would arrive right behind the rest.
  await sleep(1000);
  const elapsed = ((Date.now() - started) / 1000).toFixed(1);

  const up = tally(handler.order, "m");
  const received = await page.evaluate(() => window.t.received.map((m) => (typeof m === "string" ? JSON.parse(m).n : "<binary>")));
  const down = tally(received, "p");
  let again = 0;
  let unexplained = [];
  for (const [key, calls] of handler.byKey) {
    if (calls.length < 2) continue;
    const explained = calls.slice(1).every((c, i) => calls[i].host === "host-a" && c.at >= killedAt);
    if (explained) again += 1;
    else unexplained.push(`${key} on ${calls.map((c) => c.host).join(", ")}`);
  }
  const hostsAfter = new Set();
  for (const calls of handler.byKey.values()) for (const c of calls) if (c.at >= killedAt) hostsAfter.add(c.host);
  const final = await t();
  progress(`page -> host: ${describe(up)}; invoked again after host-a's death (deduplicated by the handler): ${again}`);
  progress(`host -> page: ${describe(down)}; posts retried ${poster.retries} (statuses ${JSON.stringify(poster.statuses)})`);
  progress(`${final.connected.length - 1} reconnect(s); invoked after the kill on ${[...hostsAfter].join(", ") || "none"}; $connect ${handler.connects}; ${elapsed} s from the first message to the last`);
  const errors = final.errors.filter((e) => !e.startsWith("Connect:"));
  if (up.lost.length || up.twice.length || up.outOfOrder || up.strangers.length) fail(`page -> host: ${describe(up)}`);
  if (down.lost.length || down.twice.length || down.outOfOrder || down.strangers.length) fail(`host -> page: ${describe(down)}`);
  if (unexplained.length) fail(`keys invoked again without host-a's death: ${unexplained.slice(0, 5).join("; ")}`);
  if (handler.connects !== 1) fail(`$connect ran ${handler.connects} times; the session should have started once`);
  const lateOnA = [...handler.byKey.values()].flat().filter((c) => c.host === "host-a" && !(c.made < deadAt));
  if (lateOnA.length) fail(`host-a built ${lateOnA.length} event(s) after it exited: ${JSON.stringify(lateOnA.slice(0, 3))}`);
  if (final.connected.some((c, i) => i > 0 && (!c.recovered || c.connectionId !== first.connectionId))) fail(`a reconnect was not recovered: ${JSON.stringify(final.connected)}`);
  if (errors.length) fail(`the client reported errors: ${errors.slice(0, 5).join("; ")}`);
  if (problems.length) fail(`problems on the page:\n  ${problems.join("\n  ")}`);
}

let finishing = false;
async function finish(code, message) {
  if (finishing) return;
  finishing = true;
  if (message) console.error(message);
  if (ctx.browser) await Promise.race([ctx.browser.close().catch(() => {}), sleep(5_000)]);
  ctx.proxy?.close();
  for (const host of ctx.hosts) {
    await Promise.race([host.stop(4_000).catch(() => {}), sleep(5_000)]);
    host.killNow();
  }
  if (code !== 0) for (const host of ctx.hosts) console.error(`--- last lines of ${path.relative(ROOT, host.logPath)} ---\n${host.tail(15)}`);
  ctx.handler?.server.close();
  if (ctx.tables) await deleteTables(ctx.tables);
  process.exit(code);
}

for (const [sig, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]]) {
  process.on(sig, () => finish(code, `cluster test: interrupted by ${sig}`));
}
process.on("exit", () => ctx.hosts.forEach((h) => h.killNow()));
const overall = setTimeout(() => finish(1, `cluster test FAILED: did not finish within ${OVERALL_S} s`), OVERALL_S * 1000);

try {
  await run();
  clearTimeout(overall);
  progress("PASSED");
  await finish(0);
} catch (e) {
  clearTimeout(overall);
  const what = e instanceof TestFailure ? e.message : (e && e.stack) || String(e);
  await finish(1, `cluster test FAILED: ${what}`);
}
