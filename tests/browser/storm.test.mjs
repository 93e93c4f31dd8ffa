// The reconnect storm: STORM_CLIENTS (default 1,000) Node clients of clients/js connected to one host
// that restarts (SIGTERM: every connection closed with 1001, then started again on the same port).
// Each client comes back after its own backoff delay, 1 s + random(0, 1 s) for its first retry, so the
// reconnects are spread over a second instead of hitting the host at once. Prints the histogram of
// reconnect times (from the close to connected again) and fails unless every client is back within
// STORM_DEADLINE_S (default 60) seconds. Loopback only.
//
//   node --experimental-websocket tests/browser/storm.test.mjs     (Node 20; Node 22+ needs no flag)
//
// Needs the host binary (BROWSER_TEST_HOST_BIN, or ${CARGO_TARGET_DIR:-target}/debug/connection-host),
// clients/js built (dist/), and a file descriptor limit above twice the clients (ulimit -n).

import { execSync } from "node:child_process";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { HostProcess, ROOT, TestFailure, fail, freePort, progressFor, sleep, until } from "./harness.mjs";

const CLIENTS = Number(process.env.STORM_CLIENTS || 1000);
const DEADLINE_S = Number(process.env.STORM_DEADLINE_S || 60);
const BUCKET_MS = 250;
const progress = progressFor("storm");

async function run(ctx) {
  if (typeof WebSocket !== "function") fail("no global WebSocket: run with node --experimental-websocket (Node 20) or Node 22+");
  // The host holds a descriptor per client, and so does this process.
  const limit = Number(execSync("ulimit -n", { shell: "/bin/sh" }).toString().trim());
  if (Number.isFinite(limit) && limit < CLIENTS * 2 + 100) fail(`ulimit -n is ${limit}; ${CLIENTS} clients need at least ${CLIENTS * 2 + 100}`);
  const { Client } = await import(pathToFileURL(path.join(ROOT, "clients/js/dist/index.js")).href);

  const port = await freePort();
  // Warnings only: a line per connection would be most of the run's work.
  ctx.host = new HostProcess({
    config: "tests/browser/client-host.toml",
    port,
    logPath: path.join(ROOT, ".test-run", "storm-host.log"),
    env: { RUST_LOG: "warn" },
  });
  await ctx.host.start();
  progress(`host pid ${ctx.host.child.pid} on 127.0.0.1:${port}; ulimit -n ${limit}`);

  const clients = [];
  for (let i = 0; i < CLIENTS; i++) {
    const c = new Client({ url: `ws://127.0.0.1:${port}/dev`, heartbeat: false });
    const rec = { c, droppedAt: 0, backAt: 0, retries: 0, firstDelay: 0 };
    c.on("state", (s) => {
      if (s === "reconnecting" && !rec.droppedAt) rec.droppedAt = performance.now();
      if (s === "connected" && rec.droppedAt && !rec.backAt) rec.backAt = performance.now();
    });
    c.on("retry", ({ delay }) => {
      if (rec.droppedAt && !rec.retries++) rec.firstDelay = delay;
    });
    clients.push(rec);
    ctx.clients = clients;
    c.connect();
  }
  const connected = () => clients.filter((r) => r.c.state === "connected").length;
  await until(`all ${CLIENTS} clients connected`, DEADLINE_S * 1000, () => connected() === CLIENTS);
  progress(`${CLIENTS} clients connected`);

  const t0 = performance.now();
  const r = await ctx.host.stop();
  progress(`host stopped (exit ${r.code}) ${Math.round(performance.now() - t0)} ms after SIGTERM; ${CLIENTS - connected()} clients reconnecting`);
  await ctx.host.start();
  progress(`host started again ${Math.round(performance.now() - t0)} ms after SIGTERM`);
  try {
    await until(`all ${CLIENTS} clients back`, DEADLINE_S * 1000, () => clients.every((r) => r.backAt));
  } catch (e) {
    const missing = clients.filter((r) => !r.backAt);
    fail(`${e.message}: ${missing.length} not back (states: ${JSON.stringify(countBy(missing.map((r) => r.c.state)))})`);
  }

  const times = clients.map((r) => r.backAt - r.droppedAt).sort((a, b) => a - b);
  const pct = (p) => Math.round(times[Math.min(times.length - 1, Math.floor((p / 100) * times.length))]);
  console.log(`reconnect time after the close (ms): min ${Math.round(times[0])}, p50 ${pct(50)}, p90 ${pct(90)}, p99 ${pct(99)}, max ${Math.round(times.at(-1))}`);
  const delays = clients.map((r) => r.firstDelay).sort((a, b) => a - b);
  console.log(`first retry's backoff delay drawn (ms): min ${Math.round(delays[0])}, max ${Math.round(delays.at(-1))}; the rest of a reconnect time is the handshake under the storm`);
  console.log(`retries per client: ${JSON.stringify(countBy(clients.map((r) => r.retries)))}`);
  const buckets = countBy(times.map((t) => Math.floor(t / BUCKET_MS) * BUCKET_MS));
  const widest = Math.max(...Object.values(buckets));
  for (const [from, n] of Object.entries(buckets).sort((a, b) => a[0] - b[0])) {
    const label = `${String(from).padStart(6)}-${String(Number(from) + BUCKET_MS).padEnd(6)} ms`;
    console.log(`  ${label} ${String(n).padStart(5)} ${"#".repeat(Math.ceil((n / widest) * 50))}`);
  }
  // The first retry waits 1 s + random(0, 1 s): without jitter they would all land in one bucket.
  if (times.at(-1) - times[0] < 500) fail(`reconnects were not spread: all within ${Math.round(times.at(-1) - times[0])} ms`);
  progress(`all ${CLIENTS} clients back, spread over ${Math.round(times.at(-1) - times[0])} ms`);
}

function countBy(values) {
  const out = {};
  for (const v of values) out[v] = (out[v] || 0) + 1;
  return out;
}

const ctx = { host: null, clients: [] };
let finishing = false;
async function finish(code, message) {
  if (finishing) return;
  finishing = true;
  if (message) console.error(message);
  for (const r of ctx.clients) r.c.close();
  if (ctx.host) {
    await Promise.race([ctx.host.stop(8_000).catch(() => {}), sleep(10_000)]);
    ctx.host.killNow();
    if (code !== 0) console.error(`--- last lines of .test-run/storm-host.log ---\n${ctx.host.tail()}`);
  }
  process.exit(code);
}

for (const [sig, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]]) {
  process.on(sig, () => finish(code, `storm test: interrupted by ${sig}`));
}
process.on("exit", () => ctx.host?.killNow());
const overall = setTimeout(() => finish(1, "storm test FAILED: did not finish in time"), (DEADLINE_S * 2 + 60) * 1000);

try {
  await run(ctx);
  clearTimeout(overall);
  progress("PASSED");
  await finish(0);
} catch (e) {
  clearTimeout(overall);
  const what = e instanceof TestFailure ? e.message : (e && e.stack) || String(e);
  await finish(1, `storm test FAILED: ${what}`);
}
