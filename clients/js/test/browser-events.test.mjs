// What the client does with a browser's online/offline and visibility events, with window, document
// and navigator played by the test.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";
import { Client } from "../dist/index.js";
import { FakeWebSocket, fakeTime, last, realTime, record, settle, tick } from "./fake.mjs";

const client = (options = {}) =>
  new Client({ url: "ws://host.test/dev", WebSocket: FakeWebSocket, backoff: { jitter: 0 }, ...options });

describe("in a browser", () => {
  let saved;
  beforeEach(() => {
    fakeTime();
    saved = Object.getOwnPropertyDescriptor(globalThis, "navigator");
    const document = new EventTarget();
    document.visibilityState = "visible";
    globalThis.window = new EventTarget();
    globalThis.document = document;
    Object.defineProperty(globalThis, "navigator", { value: { onLine: true }, configurable: true });
    // The client listens on the global object, as it does on a page's window.
    globalThis.addEventListener = window.addEventListener.bind(window);
    globalThis.removeEventListener = window.removeEventListener.bind(window);
  });
  afterEach(() => {
    realTime();
    delete globalThis.window;
    delete globalThis.document;
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
    if (saved) Object.defineProperty(globalThis, "navigator", saved);
  });

  const goOffline = () => {
    navigator.onLine = false;
    window.dispatchEvent(new Event("offline"));
  };
  const goOnline = () => {
    navigator.onLine = true;
    window.dispatchEvent(new Event("online"));
  };

  test("offline drops the connection and suspends attempts; online reconnects at once", async () => {
    const c = client({ heartbeat: false });
    const r = record(c);
    c.connect();
    await settle();
    last().accept();
    await settle();
    goOffline();
    assert.equal(c.state, "reconnecting");
    assert.ok(FakeWebSocket.instances[0].closedWith, "the connection was closed");
    c.send("while offline");
    await tick(120_000);
    assert.equal(FakeWebSocket.instances.length, 1, "no attempt while offline");
    assert.deepEqual(r.of("retry"), []);
    goOnline();
    await settle();
    assert.equal(FakeWebSocket.instances.length, 2, "an attempt at once");
    last().accept();
    await settle();
    assert.deepEqual(last().sent, ["while offline"]);
    c.close();
    goOffline();
    goOnline();
    await settle();
    assert.equal(FakeWebSocket.instances.length, 2, "no listener left after close()");
  });

  test("a page that becomes visible retries at once, or checks its connection with a heartbeat", async () => {
    const c = client({ heartbeat: { interval: 20_000, timeout: 10_000, message: "ping" } });
    c.connect();
    await settle();
    last().refuse();
    await tick(500); // half of the 1 s delay
    document.dispatchEvent(new Event("visibilitychange"));
    await settle();
    assert.equal(FakeWebSocket.instances.length, 2, "retried without waiting out the delay");
    const ws = last();
    ws.accept();
    await settle();
    await tick(5_000);
    document.dispatchEvent(new Event("visibilitychange"));
    assert.deepEqual(ws.sent, ["ping"]);
    // No answer: dead after the heartbeat timeout, not after a full interval.
    await tick(10_000);
    assert.equal(c.state, "reconnecting");
    c.close();
  });
});
