// Plain mode: lifecycle, backoff, queue, requests, tokens and heartbeats against a fake WebSocket.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";
import { backoffDelay, Client, QueueFullError, TimeoutError, UnauthorizedError, ClosedError } from "../dist/index.js";
import { FakeWebSocket, fakeTime, last, realTime, record, settle, tick } from "./fake.mjs";

const URL = "ws://host.test/dev";
const client = (options = {}) => new Client({ url: URL, WebSocket: FakeWebSocket, heartbeat: false, ...options });

describe("backoff", () => {
  test("follows min(maxDelay, baseDelay * 2^attempt + random(0, jitter))", () => {
    const quarter = () => 0.25;
    assert.equal(backoffDelay(0, {}, quarter), 1250);
    assert.equal(backoffDelay(1, {}, quarter), 2250);
    assert.equal(backoffDelay(3, {}, quarter), 8250);
    assert.equal(backoffDelay(4, {}, quarter), 16250);
    // 32 s + jitter is past the cap; so is 16 s when the jitter alone pushes past it.
    assert.equal(backoffDelay(5, {}, quarter), 30_000);
    assert.equal(backoffDelay(4, { jitter: 20_000 }, () => 0.9), 30_000);
    assert.equal(backoffDelay(2, { baseDelay: 100, maxDelay: 1000, jitter: 0 }), 400);
  });

  test("huge attempts stay at the cap", () => {
    assert.equal(backoffDelay(1100, {}, () => 0.999), 30_000);
    assert.equal(backoffDelay(60, { maxDelay: 5000 }, () => 0), 5000);
  });

  test("drawn delays stay within the jitter range", () => {
    for (let attempt = 0; attempt < 8; attempt++) {
      const low = Math.min(30_000, 1000 * 2 ** attempt);
      const high = Math.min(30_000, 1000 * 2 ** attempt + 1000);
      for (let i = 0; i < 200; i++) {
        const d = backoffDelay(attempt);
        assert.ok(d >= low && d < high + (high === 30_000 ? 1 : 0), `attempt ${attempt}: ${d} not in [${low}, ${high})`);
      }
    }
  });
});

describe("plain mode", () => {
  beforeEach(fakeTime);
  afterEach(realTime);

  test("connects, reconnects with growing delays, and stops for good on close()", async () => {
    const c = client({ backoff: { jitter: 0 } });
    const r = record(c);
    assert.equal(c.state, "disconnected");
    c.connect();
    await settle();
    assert.equal(c.state, "connecting");
    last().accept();
    await settle();
    assert.equal(c.state, "connected");
    assert.deepEqual(r.of("connected"), [{ first: true, recovered: false, protocol: null }]);

    // A drop right away: retries after 1 s, then 2 s, 4 s while the attempts fail.
    last().drop();
    assert.equal(c.state, "reconnecting");
    assert.equal(FakeWebSocket.instances.length, 1);
    await tick(999);
    assert.equal(FakeWebSocket.instances.length, 1);
    await tick(1);
    assert.equal(FakeWebSocket.instances.length, 2);
    last().refuse();
    await tick(1999);
    assert.equal(FakeWebSocket.instances.length, 2);
    await tick(1);
    assert.equal(FakeWebSocket.instances.length, 3);
    last().refuse();
    assert.deepEqual(r.of("retry"), [{ attempt: 1, delay: 1000 }, { attempt: 2, delay: 2000 }, { attempt: 3, delay: 4000 }]);
    await tick(4000);
    last().accept();
    await settle();
    assert.equal(c.state, "connected");
    assert.deepEqual(r.of("connected").at(-1), { first: false, recovered: false, protocol: null });
    assert.deepEqual(r.of("state"), ["connecting", "connected", "reconnecting", "connected"]);

    c.close();
    assert.equal(c.state, "disconnected");
    assert.deepEqual(last().closedWith, { code: 1000, reason: "" });
    await tick(120_000);
    assert.equal(FakeWebSocket.instances.length, 4, "no reconnect after close()");
    assert.throws(() => c.send("late"), ClosedError);
  });

  test("a stable connection resets the backoff, a short-lived one does not", async () => {
    const c = client({ backoff: { jitter: 0 }, stableAfter: 10_000 });
    const r = record(c);
    c.connect();
    await settle();
    last().accept();
    last().drop();
    await tick(1000);
    last().accept();
    last().drop(); // up for no time: the next delay doubles
    await tick(2000);
    last().accept();
    await tick(10_000); // up 10 s: stable
    last().drop();
    assert.deepEqual(r.of("retry").map((x) => x.delay), [1000, 2000, 1000]);
    c.close();
  });

  test("queues while offline, in order, and refuses past the bound without dropping anything", async () => {
    const c = client({ maxQueuedMessages: 2 });
    const r = record(c);
    c.send("a");
    c.send("b");
    assert.throws(() => c.send("c"), QueueFullError);
    assert.equal(c.queued, 2);
    c.connect();
    await settle();
    last().accept();
    await settle();
    assert.deepEqual(last().sent, ["a", "b"]);
    assert.equal(c.queued, 0);
    assert.deepEqual(r.of("queue"), [1, 2, 0]);
    c.send("d");
    assert.deepEqual(last().sent, ["a", "b", "d"]);
    c.close();
  });

  test("a write that fails keeps what was not written for the next connection", async () => {
    const c = client({ backoff: { jitter: 0 } });
    c.send("a");
    c.send("b");
    c.send("c");
    c.connect();
    await settle();
    const ws = last();
    const send = ws.send.bind(ws);
    ws.send = (d) => {
      if (d === "b") throw new Error("broken pipe");
      send(d);
    };
    ws.accept();
    await settle();
    assert.deepEqual(ws.sent, ["a"]);
    assert.equal(c.state, "reconnecting");
    assert.equal(c.queued, 2);
    await tick(1000);
    last().accept();
    await settle();
    assert.deepEqual(last().sent, ["b", "c"]);
    c.close();
  });

  test("the byte bound admits one large message into an empty queue only", () => {
    const c = client({ maxQueuedBytes: 10 });
    c.send("x".repeat(50));
    assert.throws(() => c.send("y"), QueueFullError);
  });

  test("requests are answered by the message carrying their ID, and time out otherwise", async () => {
    const c = client({ requestTimeout: 5000 });
    const r = record(c);
    c.connect();
    await settle();
    last().accept();
    await settle();
    const answered = c.request({ action: "echo" });
    const sent = JSON.parse(last().sent[0]);
    assert.equal(sent.action, "echo");
    assert.match(sent.requestId, /^[A-Za-z0-9_-]+-\d+$/);
    last().receive({ other: true });
    last().receive({ requestId: sent.requestId, ok: 1 });
    assert.deepEqual(JSON.parse(await answered), { requestId: sent.requestId, ok: 1 });
    assert.deepEqual(r.of("message"), ['{"other":true}'], "the answer is not also a message");

    const late = c.request('{"action":"slow"}');
    await tick(4999);
    let outcome = "pending";
    late.then(() => (outcome = "resolved"), (e) => (outcome = e));
    await settle();
    assert.equal(outcome, "pending");
    await tick(1);
    assert.ok(outcome instanceof TimeoutError, String(outcome));
    // An answer after the timeout is an ordinary message.
    last().receive({ requestId: JSON.parse(last().sent[1]).requestId });
    assert.equal(r.of("message").length, 2);
    await assert.rejects(c.request("[1]"), /JSON objects/);
    c.close();
  });

  test("a queued request that times out is withdrawn", async () => {
    const c = client();
    const p = assert.rejects(c.request({ a: 1 }, { timeout: 100 }), TimeoutError);
    assert.equal(c.queued, 1);
    await tick(100);
    await p;
    assert.equal(c.queued, 0);
  });

  test("the token provider is called before every connection, in each placement", async () => {
    let n = 0;
    const c = client({ token: async () => `t${++n}`, backoff: { jitter: 0 } });
    c.connect();
    await settle();
    assert.equal(last().url, `${URL}?token=t1`);
    last().refuse();
    await tick(1000);
    assert.equal(last().url, `${URL}?token=t2`, "a new token on reconnect");
    c.close();

    const sub = client({ token: () => "abc.def", tokenPlacement: { type: "subprotocol" }, protocols: ["chat"] });
    sub.connect();
    await settle();
    assert.deepEqual(last().protocols, ["chat", "bearer", "abc.def"]);
    sub.close();

    const header = client({ token: () => "abc", tokenPlacement: { type: "header" }, headers: { "x-tenant": "acme" } });
    header.connect();
    await settle();
    assert.deepEqual(last().options, { headers: { "x-tenant": "acme", Authorization: "Bearer abc" } });
    assert.equal(last().url, URL);
    header.close();

    const query = new Client({ url: `${URL}?room=a b`, WebSocket: FakeWebSocket, token: () => "a+b/=", tokenPlacement: { type: "query", parameter: "jwt" } });
    query.connect();
    await settle();
    assert.equal(last().url, `${URL}?room=a b&jwt=a%2Bb%2F%3D`);
    query.close();
  });

  test("a failing token provider is retried with backoff; an UnauthorizedError from it ends the client", async () => {
    let calls = 0;
    const c = client({
      backoff: { jitter: 0 },
      token: () => {
        calls += 1;
        if (calls === 1) throw new Error("identity service down");
        if (calls === 3) throw new UnauthorizedError("logged out");
        return "ok";
      },
    });
    const r = record(c);
    c.connect();
    await settle();
    assert.equal(FakeWebSocket.instances.length, 0);
    assert.equal(r.of("error")[0].code, "Token");
    await tick(1000);
    assert.equal(FakeWebSocket.instances.length, 1);
    last().refuse();
    await tick(2000);
    assert.equal(calls, 3);
    assert.equal(c.state, "disconnected");
    assert.ok(r.of("error").at(-1) instanceof UnauthorizedError);
    await tick(60_000);
    assert.equal(calls, 3);
  });

  test("a token provider that never answers counts as a failed attempt after connectTimeout", async () => {
    let calls = 0;
    const c = client({ connectTimeout: 5000, backoff: { jitter: 0 }, token: () => (++calls === 1 ? new Promise(() => {}) : "t") });
    const r = record(c);
    c.connect();
    await tick(4999);
    assert.equal(FakeWebSocket.instances.length, 0);
    await tick(1);
    assert.match(r.of("error")[0].message, /did not answer in time/);
    await tick(1000);
    assert.equal(calls, 2);
    assert.equal(last().url, "ws://host.test/dev?token=t");
    c.close();
  });

  test("a 401 at the handshake, where the platform shows it, is terminal", async () => {
    const c = client();
    const r = record(c);
    c.connect();
    await settle();
    last().refuse("Unexpected server response: 401");
    assert.equal(c.state, "disconnected");
    const e = r.of("error").at(-1);
    assert.ok(e instanceof UnauthorizedError);
    assert.equal(e.status, 401);
    await tick(60_000);
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  test("an error without a close (Node's own WebSocket after a refused handshake) is a failed attempt", async () => {
    const c = client({ backoff: { jitter: 0 } });
    const r = record(c);
    c.connect();
    await settle();
    last().onerror({ message: "Received network error or non-101 status code." });
    assert.equal(r.of("error").at(-1).code, "Connect");
    assert.deepEqual(r.of("retry"), [{ attempt: 1, delay: 1000 }]);
    await tick(1000);
    assert.equal(FakeWebSocket.instances.length, 2);
    c.close();
  });

  test("a handshake that hangs is given up after connectTimeout", async () => {
    const c = client({ connectTimeout: 3000, backoff: { jitter: 0 } });
    c.connect();
    await settle();
    await tick(3000);
    assert.ok(FakeWebSocket.instances[0].closedWith, "the hanging socket was closed");
    assert.equal(c.state, "connecting");
    await tick(1000);
    assert.equal(FakeWebSocket.instances.length, 2);
    c.close();
  });

  test("heartbeats go out after an idle interval, and a silent connection is declared dead", async () => {
    const c = client({ heartbeat: { interval: 20_000, timeout: 10_000, message: '{"action":"ping"}' }, backoff: { jitter: 0 } });
    c.connect();
    await settle();
    const ws = last();
    ws.accept();
    await settle();
    await tick(19_999);
    assert.deepEqual(ws.sent, []);
    await tick(1);
    assert.deepEqual(ws.sent, ['{"action":"ping"}']);
    ws.receive({ type: "pong" });
    // Traffic both ways postpones the next one: it goes out 20 s after the last frame either way.
    await tick(10_000);
    ws.receive({ type: "message" });
    await tick(5_000);
    c.send("x");
    await tick(14_999);
    assert.deepEqual(ws.sent, ['{"action":"ping"}', "x"]);
    await tick(1);
    assert.equal(ws.sent.length, 3);
    // No answer within 10 s: dead, and the client reconnects by itself.
    await tick(9_999);
    assert.equal(c.state, "connected");
    await tick(1);
    assert.equal(c.state, "reconnecting");
    assert.ok(ws.closedWith);
    await tick(1000);
    assert.equal(FakeWebSocket.instances.length, 2);
    c.close();
  });

  test("onConnect sends before the queue, which waits for it", async () => {
    let release;
    const c = client({
      onConnect: (info, sendNow) => {
        sendNow(`join ${info.first}`);
        return new Promise((r) => (release = r));
      },
    });
    c.send("queued");
    c.connect();
    await settle();
    last().accept();
    await settle();
    assert.deepEqual(last().sent, ["join true"]);
    c.send("more");
    assert.deepEqual(last().sent, ["join true"]);
    release();
    await settle();
    assert.deepEqual(last().sent, ["join true", "queued", "more"]);
    c.close();
  });
});
