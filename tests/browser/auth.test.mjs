// The client library's token placements against the host's own JWT authorizer, one host per
// `token_source` (header, query, subprotocol): the token provider's first token has expired, so the
// handshake is refused; the client calls the provider again before its next attempt and connects with
// the fresh token; then a reliable client (ch-reliable.v1 offered beside the token) gets its session. Node
// clients (the header placement is Node only). Loopback only.
//
//   node --experimental-websocket tests/browser/auth.test.mjs      (Node 20; Node 22+ needs no flag)

import { createHmac } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { HostProcess, ROOT, TestFailure, fail, freePort, progressFor, sleep, until } from "./harness.mjs";

const SECRET = "a-test-secret-for-the-jwt-authorizer";
const progress = progressFor("auth");

const b64url = (s) => Buffer.from(s).toString("base64url");
function jwt(claims) {
  const head = `${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify(claims))}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

function config(tokenSource) {
  return `[server]
listen = "127.0.0.1:8080"
[api]
stage = "dev"
[authorizers.jwt]
type = "jwt"
token_source = "${tokenSource}"
[[authorizers.jwt.keys]]
algorithm = "HS256"
secret = "${SECRET}"
[integrations.ok]
type = "mock"
[routes."$connect"]
integration = "ok"
authorizer = "jwt"
[extensions.sessions]
enabled = true
`;
}

const ctx = { host: null, client: null };

async function run() {
  if (typeof WebSocket !== "function") fail("no global WebSocket: run with node --experimental-websocket (Node 20) or Node 22+");
  const { Client } = await import(pathToFileURL(path.join(ROOT, "clients/js/dist/index.js")).href);
  for (const placement of ["header", "query", "subprotocol"]) {
    const file = path.join(ROOT, ".test-run", `auth-${placement}.toml`);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, config(placement));
    const port = await freePort();
    ctx.host = new HostProcess({ config: file, port, logPath: path.join(ROOT, ".test-run", "auth-host.log") });
    await ctx.host.start();

    const now = Math.floor(Date.now() / 1000);
    const tokens = [jwt({ sub: "alice", exp: now - 3600 }), jwt({ sub: "alice", exp: now + 3600 })];
    let calls = 0;
    const errors = [];
    const client = (ctx.client = new Client({
      url: `ws://127.0.0.1:${port}/dev`,
      heartbeat: false,
      backoff: { baseDelay: 100, jitter: 0 },
      tokenPlacement: { type: placement },
      // Async, as a provider that asks an identity service would be.
      token: async () => tokens[Math.min(calls++, 1)],
    }));
    client.on("error", (e) => errors.push(e.code));
    client.connect();
    await until(`${placement}: connected with the refreshed token`, 20_000, () => client.state === "connected");
    if (calls !== 2) fail(`${placement}: the token provider was called ${calls} times, expected 2 (expired, then fresh)`);
    if (errors.join() !== "Connect") fail(`${placement}: the refused attempt reported ${JSON.stringify(errors)}`);
    client.close();

    // Reliable mode offers its own subprotocols beside the token's; the authorizer still finds it.
    const reliable = (ctx.client = new Client({
      url: `ws://127.0.0.1:${port}/dev`,
      reliable: true,
      heartbeat: false,
      tokenPlacement: { type: placement },
      token: () => tokens[1],
    }));
    const welcomed = new Promise((resolve) => reliable.on("connected", resolve));
    reliable.connect();
    const info = await Promise.race([welcomed, sleep(10_000).then(() => fail(`${placement}: no reliable session within 10 s`))]);
    if (info.recovered || !info.connectionId) fail(`${placement}: reliable connection reported ${JSON.stringify(info)}`);
    reliable.close();
    ctx.client = null;
    await ctx.host.stop();
    ctx.host = null;
    progress(`${placement}: the expired token was refused, the provider was called again, the fresh token connected; a reliable session too`);
  }
}

let finishing = false;
async function finish(code, message) {
  if (finishing) return;
  finishing = true;
  if (message) console.error(message);
  ctx.client?.close();
  if (ctx.host) {
    await Promise.race([ctx.host.stop(4_000).catch(() => {}), sleep(5_000)]);
    ctx.host.killNow();
    if (code !== 0) console.error(`--- last lines of .test-run/auth-host.log ---\n${ctx.host.tail()}`);
  }
  process.exit(code);
}

for (const [sig, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]]) {
  process.on(sig, () => finish(code, `auth test: interrupted by ${sig}`));
}
process.on("exit", () => ctx.host?.killNow());
const overall = setTimeout(() => finish(1, "auth test FAILED: did not finish within 90 s"), 90_000);

try {
  await run();
  clearTimeout(overall);
  progress("PASSED");
  await finish(0);
} catch (e) {
  clearTimeout(overall);
  const what = e instanceof TestFailure ? e.message : (e && e.stack) || String(e);
  await finish(1, `auth test FAILED: ${what}`);
}
