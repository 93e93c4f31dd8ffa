// A fake WebSocket played by the tests (the host's side), and helpers around node:test's fake timers.
import { mock } from "node:test";

export class FakeWebSocket {
  static instances = [];

  constructor(url, protocols, options) {
    this.url = url;
    this.protocols = protocols ?? [];
    this.options = options;
    this.readyState = 0;
    this.protocol = "";
    this.binaryType = "blob";
    this.sent = [];
    this.closedWith = undefined;
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    FakeWebSocket.instances.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(data);
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  // ---- the host's side ----
  accept(protocol = "") {
    this.protocol = protocol;
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(data) {
    this.onmessage?.({ data: typeof data === "string" ? data : JSON.stringify(data) });
  }

  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  refuse(message = "Received network error or non-101 status code.") {
    this.readyState = 3;
    this.onerror?.({ message });
    this.onclose?.({ code: 1006, reason: "" });
  }

  /** The frames the client sent, parsed as JSON. */
  frames() {
    return this.sent.map((s) => JSON.parse(s));
  }
}

/** The socket the client opened last. */
export const last = () => FakeWebSocket.instances.at(-1);

/** Fake setTimeout and Date, and a fresh list of sockets. */
export function fakeTime() {
  FakeWebSocket.instances = [];
  mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
}

export function realTime() {
  mock.timers.reset();
}

/** Lets promises (the token provider, onConnect) settle. */
export async function settle() {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

/** Advances the fake clock and lets what it started settle. */
export async function tick(ms) {
  mock.timers.tick(ms);
  await settle();
}

/** Records a client's events. */
export function record(client) {
  const events = [];
  for (const name of ["state", "connected", "message", "error", "retry", "queue"]) {
    client.on(name, (arg) => events.push([name, arg]));
  }
  return {
    events,
    of: (name) => events.filter(([n]) => n === name).map(([, a]) => a),
  };
}
