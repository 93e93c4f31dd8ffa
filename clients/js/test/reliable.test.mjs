// Reliable mode (ch-reliable.v1): welcome, in-order delivery, acknowledgements, replays, gaps, resume,
// idempotency keys and replies, against a fake host.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";
import { Client, ReliableNotSupportedError, ReplyError, TimeoutError } from "../dist/index.js";
import { FakeWebSocket, fakeTime, last, realTime, record, settle, tick } from "./fake.mjs";

const client = (options = {}) =>
  new Client({ url: "ws://host.test/dev", WebSocket: FakeWebSocket, reliable: true, heartbeat: false, backoff: { jitter: 0 }, ...options });

const welcome = (ws, { id = "c1", token = "tok1", recovered = false, seq = 0, reason } = {}) =>
  ws.receive({ t: "welcome", v: 1, connectionId: id, resumeToken: token, recovered, seq, protocol: null, ...(reason ? { reason } : {}) });

async function connected(c, options) {
  c.connect();
  await settle();
  const ws = last();
  ws.accept("ch-reliable.v1");
  welcome(ws, options);
  await settle();
  return ws;
}

describe("reliable mode", () => {
  beforeEach(fakeTime);
  afterEach(realTime);

  test("delivers in order, acknowledges, resumes after a drop and never delivers a replay twice", async () => {
    const c = client();
    const r = record(c);
    c.connect();
    await settle();
    let ws = last();
    assert.deepEqual(ws.protocols, ["ch-reliable.v1"]);
    ws.accept("ch-reliable.v1");
    assert.equal(c.state, "connecting", "not connected before the welcome");
    welcome(ws);
    await settle();
    assert.equal(c.state, "connected");
    assert.deepEqual(r.of("connected"), [{ first: true, recovered: false, connectionId: "c1", protocol: null }]);

    ws.receive({ t: "msg", s: 1, d: "a" });
    ws.receive({ t: "msg", s: 2, b: "AAE=" });
    assert.deepEqual(r.of("message"), ["a", new Uint8Array([0, 1])]);
    assert.deepEqual(ws.frames(), [], "acknowledged after ackDelay, not per frame");
    await tick(200);
    assert.deepEqual(ws.frames(), [{ t: "ack", s: 2 }]);

    // An abrupt drop: the resume offers the last sequence number and the token.
    ws.drop(1006);
    await tick(1000);
    ws = last();
    assert.deepEqual(ws.protocols, ["ch-reliable.v1", "ch-resume.2.tok1"]);
    ws.accept("ch-reliable.v1");
    welcome(ws, { token: "tok2", recovered: true, seq: 2 });
    await settle();
    assert.deepEqual(r.of("connected").at(-1), { first: false, recovered: true, connectionId: "c1", protocol: null });
    ws.receive({ t: "msg", s: 2, b: "AAE=" }); // a replay
    ws.receive({ t: "msg", s: 3, d: "c" });
    assert.deepEqual(r.of("message"), ["a", new Uint8Array([0, 1]), "c"]);
    await tick(200);
    assert.deepEqual(ws.frames(), [{ t: "ack", s: 3 }]);

    // The next resume uses the rotated token.
    ws.drop(4000, "Resume");
    await tick(2000); // the second retry in a row waits 2 s
    assert.deepEqual(last().protocols, ["ch-reliable.v1", "ch-resume.3.tok2"]);
    c.close();
  });

  test("acknowledges at once every 64 frames", async () => {
    const c = client();
    const ws = await connected(c);
    for (let s = 1; s <= 64; s++) ws.receive({ t: "msg", s, d: String(s) });
    assert.deepEqual(ws.frames(), [{ t: "ack", s: 64 }]);
    c.close();
  });

  test("a gap is not delivered: the client closes with 4000 and resumes from its last frame in order", async () => {
    const c = client();
    const r = record(c);
    const ws = await connected(c);
    ws.receive({ t: "msg", s: 1, d: "a" });
    ws.receive({ t: "msg", s: 3, d: "c" });
    assert.deepEqual(r.of("message"), ["a"]);
    assert.deepEqual(ws.closedWith, { code: 4000, reason: "Resume" });
    assert.equal(c.state, "reconnecting");
    await tick(1000);
    assert.deepEqual(last().protocols, ["ch-reliable.v1", "ch-resume.1.tok1"]);
    c.close();
  });

  test("every message carries an idempotency key and is sent again with it until its reply", async () => {
    const c = client();
    const r = record(c);
    const early = c.send('{"action":"early"}');
    let ws = await connected(c);
    const key = c.send('{"action":"send"}');
    const reply = c.request('{"action":"join"}');
    const frames = ws.frames();
    assert.deepEqual(frames.map((f) => f.d), ['{"action":"early"}', '{"action":"send"}', '{"action":"join"}']);
    assert.equal(frames[0].id, early);
    assert.equal(frames[1].id, key);
    const ids = new Set(frames.map((f) => f.id));
    assert.equal(ids.size, 3);
    for (const id of ids) assert.match(id, /^[A-Za-z0-9_-]{12}-\d+$/);
    assert.equal(c.queued, 3, "held until answered");

    ws.receive({ t: "reply", s: 1, id: early });
    await settle();
    assert.equal(c.queued, 2);

    // The connection drops before the other replies: both are sent again, in order, with their keys.
    ws.drop(1006);
    await tick(1000);
    ws = last();
    ws.accept("ch-reliable.v1");
    welcome(ws, { token: "tok2", recovered: true, seq: 1 });
    await settle();
    assert.deepEqual(ws.frames().map((f) => [f.id, f.d]), [[frames[1].id, frames[1].d], [frames[2].id, frames[2].d]]);

    ws.receive({ t: "reply", s: 2, id: frames[2].id, d: '{"joined":true}' });
    assert.equal(await reply, '{"joined":true}');
    // A second reply to the same key (it was sent twice) is ignored.
    ws.receive({ t: "reply", s: 3, id: frames[2].id, d: "again" });
    ws.receive({ t: "reply", s: 4, id: key, error: { message: "Forbidden", requestId: "r-1" } });
    const error = r.of("error").at(-1);
    assert.ok(error instanceof ReplyError);
    assert.equal(error.message, "Forbidden");
    assert.equal(error.id, key);
    assert.equal(c.queued, 0);
    c.close();
  });

  test("a fresh session after a failed resume numbers from the welcome again and resends what is unanswered", async () => {
    const c = client();
    const r = record(c);
    let ws = await connected(c);
    ws.receive({ t: "msg", s: 1, d: "a" });
    ws.receive({ t: "msg", s: 2, d: "b" });
    c.send("pending");
    const [first] = ws.frames();
    ws.drop(1006);
    await tick(1000);
    ws = last();
    assert.deepEqual(ws.protocols, ["ch-reliable.v1", "ch-resume.2.tok1"]);
    ws.accept("ch-reliable.v1");
    welcome(ws, { id: "c2", token: "tok9", recovered: false, seq: 0, reason: "expired" });
    await settle();
    assert.deepEqual(r.of("connected").at(-1), { first: false, recovered: false, connectionId: "c2", reason: "expired", protocol: null });
    const [again] = ws.frames();
    assert.equal(again.d, "pending");
    assert.equal(again.id, first.id, "sent again with its key");
    ws.receive({ t: "msg", s: 1, d: "new" });
    assert.deepEqual(r.of("message"), ["a", "b", "new"]);
    c.close();
  });

  test("after a close that ends the session, the next connection offers its token and sends the unanswered again with their keys", async () => {
    const c = client();
    let ws = await connected(c);
    ws.receive({ t: "msg", s: 1, d: "a" });
    c.send("pending");
    const [sent] = ws.frames();
    ws.drop(1001, "Going away");
    await tick(1000);
    ws = last();
    assert.deepEqual(ws.protocols, ["ch-reliable.v1", "ch-resume.1.tok1"]);
    ws.accept("ch-reliable.v1");
    welcome(ws, { id: "c2", token: "tok2", recovered: false, seq: 0, reason: "expired" });
    await settle();
    assert.deepEqual(ws.frames(), [sent]);
    c.close();
  });

  test("a request that times out before it was written is withdrawn; one written waits for its reply", async () => {
    const c = client();
    const unsent = assert.rejects(c.request("x", { timeout: 500 }), TimeoutError);
    await tick(500);
    await unsent;
    assert.equal(c.queued, 0);
    const ws = await connected(c);
    const sent = assert.rejects(c.request("y", { timeout: 500 }), TimeoutError);
    await tick(500);
    await sent;
    assert.equal(c.queued, 1, "kept until its reply: the host may have invoked it");
    ws.receive({ t: "reply", s: 1, id: ws.frames()[0].id });
    assert.equal(c.queued, 0);
    c.close();
  });

  test("a message the host did not invoke (Service Unavailable) is sent again with its key after the backoff delay", async () => {
    const c = client();
    const r = record(c);
    let ws = await connected(c);
    const msgs = () => ws.frames().filter((f) => f.t === "msg");
    const reply = c.request("x");
    c.send("y");
    const [x, y] = msgs().map((f) => f.id);
    ws.receive({ t: "reply", s: 1, id: x, error: { message: "Service Unavailable", requestId: "r-1" } });
    assert.deepEqual(r.of("error"), [], "not an error: the client tries again");
    assert.equal(c.queued, 2);
    await tick(999);
    assert.equal(msgs().length, 2);
    await tick(1);
    assert.deepEqual(msgs()[2], { t: "msg", id: x, d: "x" });
    // Refused again: the delay grows as the reconnect backoff's does.
    ws.receive({ t: "reply", s: 2, id: x, error: { message: "Service Unavailable" } });
    await tick(1999);
    assert.equal(msgs().length, 3);
    // A reconnect meanwhile sends it at once with everything else unanswered.
    ws.drop(1006);
    await tick(1000);
    ws = last();
    ws.accept("ch-reliable.v1");
    welcome(ws, { token: "tok2", recovered: true, seq: 2 });
    await settle();
    assert.deepEqual(msgs().map((f) => f.id), [x, y]);
    await tick(5000);
    assert.deepEqual(msgs().map((f) => f.id), [x, y], "nothing more is due");
    ws.receive({ t: "reply", s: 3, id: x, d: "done" });
    assert.equal(await reply, "done");
    c.close();
  });

  test("a host that does not select ch-reliable.v1 ends the client", async () => {
    const c = client();
    const r = record(c);
    c.connect();
    await settle();
    last().accept("");
    assert.equal(c.state, "disconnected");
    assert.ok(r.of("error").at(-1) instanceof ReliableNotSupportedError);
    await tick(60_000);
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  test("a missing welcome counts as a failed connection", async () => {
    const c = client({ connectTimeout: 2000 });
    c.connect();
    await settle();
    last().accept("ch-reliable.v1");
    await tick(2000);
    assert.equal(c.state, "connecting");
    assert.ok(FakeWebSocket.instances[0].closedWith);
    c.close();
  });

  test("heartbeats are ping frames, answered by the host's pong", async () => {
    const c = client({ heartbeat: { interval: 20_000, timeout: 10_000 } });
    const ws = await connected(c);
    await tick(20_000);
    assert.deepEqual(ws.frames(), [{ t: "ping" }]);
    ws.receive({ t: "pong" });
    await tick(15_000);
    assert.equal(c.state, "connected");
    c.close();
  });
});
