// In Node with `ws` as the WebSocket constructor, against a real socket: the status of a refused
// handshake is visible, so a 401 or 403 ends the client; headers carry the token.
import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { Client, UnauthorizedError } from "../dist/index.js";

describe("Node with ws", () => {
  let server;
  let port;
  const upgrades = [];
  before(async () => {
    server = http.createServer();
    server.on("upgrade", (req, socket) => {
      upgrades.push(req);
      const status = req.url.includes("forbidden") ? "403 Forbidden" : "401 Unauthorized";
      socket.end(`HTTP/1.1 ${status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
    });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    port = server.address().port;
  });
  after(() => server.close());

  for (const [path, status] of [["/dev", 401], ["/dev?forbidden", 403]]) {
    test(`a ${status} at the handshake ends the client with UnauthorizedError`, async () => {
      const before = upgrades.length;
      const c = new Client({
        url: `ws://127.0.0.1:${port}${path}`,
        WebSocket,
        heartbeat: false,
        backoff: { baseDelay: 10, jitter: 0 },
        token: () => "expired",
        tokenPlacement: { type: "header" },
      });
      const error = new Promise((resolve) => c.on("error", resolve));
      c.connect();
      const e = await error;
      assert.ok(e instanceof UnauthorizedError, String(e));
      assert.equal(e.status, status);
      assert.equal(c.state, "disconnected");
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(upgrades.length, before + 1, "no retry");
      assert.equal(upgrades.at(-1).headers.authorization, "Bearer expired");
    });
  }
});
