// What the client library's end-to-end tests share: the host as a process (started, stopped, killed),
// a TCP fault proxy in front of it, free ports, progress lines and failures. Plain Node, no framework.

import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const TARGET = path.resolve(ROOT, process.env.CARGO_TARGET_DIR || "target");
export const HOST_BIN = path.resolve(ROOT, process.env.BROWSER_TEST_HOST_BIN || path.join(TARGET, "debug/connection-host"));

export class TestFailure extends Error {}
export const fail = (msg) => {
  throw new TestFailure(msg);
};
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Progress lines with the time since `name` started. */
export function progressFor(name) {
  const t0 = Date.now();
  return (msg) => console.log(`[${name} ${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${msg}`);
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `check` every 50 ms until it returns something truthy, or fails with `what` after `timeoutMs`. */
export async function until(what, timeoutMs, check) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) fail(`${what}: not within ${timeoutMs / 1000} s`);
    await sleep(50);
  }
}

/**
 * The host binary run with `config` on 127.0.0.1:`port`, its output appended to `logPath`; started
 * again on the same port after a stop or a kill, as a restarted server would be.
 */
export class HostProcess {
  /** `healthPort`: where GET /health answers, when the configuration gives the host a management listener of its own. */
  constructor({ config, port, logPath, env = {}, healthPort = port }) {
    this.config = config;
    this.port = port;
    this.healthPort = healthPort;
    this.logPath = logPath;
    this.env = env;
    this.child = null;
    fs.mkdirSync(path.dirname(logPath), { recursive: true });
    this.logFd = fs.openSync(logPath, "a");
  }

  async start(timeoutMs = 60_000) {
    if (!fs.existsSync(HOST_BIN)) fail(`host binary not found: ${HOST_BIN} (build it, or set BROWSER_TEST_HOST_BIN)`);
    fs.writeSync(this.logFd, `\n===== ${new Date().toISOString()} start: ${HOST_BIN} --config ${this.config} --listen 127.0.0.1:${this.port}\n`);
    // Its own process group, so that a hard kill also reaches the function processes it started.
    const child = spawn(HOST_BIN, ["--config", this.config, "--listen", `127.0.0.1:${this.port}`], {
      cwd: ROOT,
      stdio: ["ignore", this.logFd, this.logFd],
      detached: true,
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info", ...this.env },
    });
    let exited = null;
    child.exitedP = new Promise((resolve) => child.once("exit", (code, signal) => resolve((exited = { code, signal }))));
    child.once("error", (e) => fs.writeSync(this.logFd, `spawn error: ${e.message}\n`));
    this.child = child;
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (exited) fail(`host exited before becoming healthy (${JSON.stringify(exited)}); see ${this.logPath}`);
      if ((await healthStatus(this.healthPort)) === 200) return;
      await sleep(50);
    }
    fail(`host did not answer GET /health within ${timeoutMs / 1000} s; see ${this.logPath}`);
  }

  /** SIGTERM: the host drains (close 1001 to every connection) and exits. */
  async stop(timeoutMs = 20_000) {
    const child = this.child;
    if (!child) return null;
    this.child = null;
    try {
      child.kill("SIGTERM");
    } catch {
      // gone
    }
    const r = await Promise.race([child.exitedP, sleep(timeoutMs).then(() => null)]);
    killGroup(child.pid, "SIGKILL");
    if (r === null) fail(`host did not exit within ${timeoutMs / 1000} s of SIGTERM`);
    return r;
  }

  /** SIGKILL to the host and its functions: connections break without a Close frame. */
  async kill() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    killGroup(child.pid, "SIGKILL");
    await child.exitedP;
  }

  /** For exit handlers: no waiting. */
  killNow() {
    if (this.child) killGroup(this.child.pid, "SIGKILL");
    this.child = null;
  }

  tail(lines = 25) {
    return fs.readFileSync(this.logPath, "utf8").split("\n").slice(-lines).join("\n");
  }
}

/**
 * GET /health on a connection of its own, closed after the answer. Not fetch(): Node's WebSocket shares
 * fetch's connection pool, and a kept-alive health check could carry a client's next handshake.
 */
function healthStatus(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: "127.0.0.1", port, path: "/health", agent: false, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(0));
  });
}

const killGroup = (pid, sig) => {
  try {
    process.kill(-pid, sig);
  } catch {
    // gone
  }
};

/**
 * A loopback TCP proxy in front of the host, for faults the browser cannot make itself:
 * `blackhole()` stops forwarding on every open connection without closing it (a network that
 * silently drops everything); `reset()` destroys them (a TCP reset). New connections pass.
 */
export class FaultProxy {
  constructor(upstreamPort) {
    this.upstreamPort = upstreamPort;
    this.pairs = new Set();
    this.holes = [];
    this.server = net.createServer((client) => {
      const upstream = net.connect(upstreamPort, "127.0.0.1");
      const pair = { client, upstream, holed: false };
      this.pairs.add(pair);
      const forget = () => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on("data", (d) => pair.holed || upstream.write(d));
      upstream.on("data", (d) => pair.holed || client.write(d));
      for (const s of [client, upstream]) {
        s.on("error", forget);
        s.on("close", () => pair.holed || forget());
      }
    });
  }

  listen() {
    return new Promise((resolve) => this.server.listen(0, "127.0.0.1", () => resolve((this.port = this.server.address().port))));
  }

  /** Drops every byte of the open connections from now on; returns how many it hit. */
  blackhole() {
    for (const p of this.pairs) p.holed = true;
    this.holes.push(...this.pairs);
    const n = this.pairs.size;
    this.pairs = new Set();
    return n;
  }

  reset() {
    const n = this.pairs.size;
    for (const p of this.pairs) {
      p.client.resetAndDestroy?.() ?? p.client.destroy();
      p.upstream.destroy();
    }
    this.pairs = new Set();
    return n;
  }

  close() {
    this.reset();
    for (const p of this.holes) {
      p.client.destroy();
      p.upstream.destroy();
    }
    this.server.close();
  }
}

/**
 * A loopback load balancer in front of several hosts: each new connection goes to the first upstream
 * that accepts it, in the order given, so clients land on the first host while it lives and on the
 * next once it is gone. `upstreamOf` tells where each connection went, in the order they came.
 */
export class FailoverProxy {
  constructor(upstreamPorts) {
    this.upstreamPorts = upstreamPorts;
    this.sockets = new Set();
    this.upstreamOf = [];
    this.server = net.createServer((client) => {
      client.pause();
      this.sockets.add(client);
      client.on("close", () => this.sockets.delete(client));
      client.on("error", () => client.destroy());
      this.connect(client, 0);
    });
  }

  connect(client, i) {
    if (i >= this.upstreamPorts.length || client.destroyed) return client.destroy();
    const upstream = net.connect(this.upstreamPorts[i], "127.0.0.1");
    let connected = false;
    upstream.on("error", () => {
      if (!connected) return this.connect(client, i + 1);
      client.destroy();
    });
    upstream.once("connect", () => {
      connected = true;
      this.upstreamOf.push(this.upstreamPorts[i]);
      this.sockets.add(upstream);
      upstream.on("close", () => {
        this.sockets.delete(upstream);
        client.destroy();
      });
      client.on("close", () => upstream.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
  }

  listen() {
    return new Promise((resolve) => this.server.listen(0, "127.0.0.1", () => resolve((this.port = this.server.address().port))));
  }

  close() {
    for (const s of this.sockets) s.destroy();
    this.server.close();
  }
}
