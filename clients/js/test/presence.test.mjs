// Presence notifications of the groups extension: recognised exactly, handed over typed with the
// `presence` option, every other message left as it is.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";
import { Client, parsePresence } from "../dist/index.js";
import { FakeWebSocket, fakeTime, last, realTime, record, settle, tick } from "./fake.mjs";

// As the host writes it (its keys in this order).
const JOIN = '{"type":"presence","group":"lobby","action":"join","connectionId":"c2=","principal":"alice","at":1733400000000}';
const LEAVE = '{"type":"presence","group":"g/1","action":"leave","connectionId":"c3","principal":"","at":1733400000123}';

describe("parsePresence", () => {
  test("reads the host's notifications", () => {
    assert.deepEqual(parsePresence(JOIN), { group: "lobby", action: "join", connectionId: "c2=", principal: "alice", at: 1733400000000 });
    assert.deepEqual(parsePresence(LEAVE), { group: "g/1", action: "leave", connectionId: "c3", principal: "", at: 1733400000123 });
  });

  test("anything else is not one", () => {
    const not = [
      // the chat example's own presence message
      '{"type":"presence","room":"lobby","event":"join","nickname":"bob","connectionId":"c2"}',
      // a key more, a key less, keys in another order
      JOIN.replace("}", ',"extra":1}'),
      '{"type":"presence","group":"lobby","action":"join","connectionId":"c2","at":1}',
      '{"type":"presence","action":"join","group":"lobby","connectionId":"c2","principal":"","at":1}',
      // values of the wrong type or out of range
      JOIN.replace('"join"', '"joined"'),
      JOIN.replace('"alice"', "null"),
      JOIN.replace("1733400000000", '"1733400000000"'),
      JOIN.replace("1733400000000", "1.5"),
      JOIN.replace("1733400000000", "-1"),
      JOIN.replace('"lobby"', "7"),
      // not JSON, not text, another type
      '{"type":"presence",',
      "presence",
      new TextEncoder().encode(JOIN),
      JOIN.replace('"presence"', '"message"'),
      ` ${JOIN}`,
    ];
    for (const data of not) assert.equal(parsePresence(data), undefined, String(data));
  });
});

const client = (options = {}) => new Client({ url: "ws://host.test/dev", WebSocket: FakeWebSocket, heartbeat: false, ...options });

describe("the presence option", () => {
  beforeEach(fakeTime);
  afterEach(realTime);

  test("plain mode: notifications become presence events, other messages stay messages", async () => {
    const c = client({ presence: true });
    const r = record(c);
    const seen = [];
    c.on("presence", (p) => seen.push(p));
    c.connect();
    await settle();
    last().accept();
    last().receive(JOIN);
    last().receive('{"type":"message","text":"hi"}');
    last().receive(JOIN.replace("}", ',"extra":1}'));
    last().receive(LEAVE);
    assert.deepEqual(seen, [parsePresence(JOIN), parsePresence(LEAVE)]);
    assert.deepEqual(r.of("message"), ['{"type":"message","text":"hi"}', JOIN.replace("}", ',"extra":1}')]);
  });

  test("off by default: notifications are messages like any other", async () => {
    const c = client();
    const r = record(c);
    let presence = 0;
    c.on("presence", () => presence++);
    c.connect();
    await settle();
    last().accept();
    last().receive(JOIN);
    assert.deepEqual(r.of("message"), [JOIN]);
    assert.equal(presence, 0);
  });

  test("reliable mode: a notification in a msg frame is delivered in order and acknowledged", async () => {
    const c = client({ presence: true, reliable: true });
    const r = record(c);
    const seen = [];
    c.on("presence", (p) => seen.push(p));
    c.connect();
    await settle();
    const ws = last();
    ws.accept("ch-reliable.v1");
    ws.receive({ t: "welcome", v: 1, connectionId: "c1", resumeToken: "tok", recovered: false, seq: 0, protocol: null });
    await settle();
    ws.receive({ t: "msg", s: 1, d: "before" });
    ws.receive({ t: "msg", s: 2, d: JOIN });
    ws.receive({ t: "msg", s: 2, d: JOIN }); // a replay: not delivered again
    ws.receive({ t: "msg", s: 3, d: "after" });
    assert.deepEqual(seen, [parsePresence(JOIN)]);
    assert.deepEqual(r.of("message"), ["before", "after"]);
    await tick(200);
    assert.deepEqual(ws.frames(), [{ t: "ack", s: 3 }]);
  });
});
