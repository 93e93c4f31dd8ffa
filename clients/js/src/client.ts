/**
 * The client: one WebSocket at a time, reconnected with backoff; a queue while offline; heartbeats;
 * requests; and in reliable mode the `ch-reliable.v1` session (connection-host's PROTOCOL.md).
 */

import { backoffDelay, type BackoffOptions } from "./backoff.js";
import {
  ClientError,
  ClosedError,
  ProtocolError,
  QueueFullError,
  ReliableNotSupportedError,
  ReplyError,
  TimeoutError,
  UnauthorizedError,
} from "./errors.js";
import {
  ackFrame,
  isProtocolToken,
  msgFrame,
  order,
  parseHostFrame,
  PING_FRAME,
  RELIABLE,
  resumeEntry,
  type Payload,
  type Welcome,
} from "./frames.js";
import { parsePresence, type Presence } from "./presence.js";

/** The connection's lifecycle. */
export type State = "connecting" | "connected" | "reconnecting" | "disconnected";

/** A message: text, or bytes. */
export type { Payload };

/**
 * Where the token goes in the upgrade request, matching the host's JWT authorizer `token_source`:
 * `header` (`Authorization: Bearer <token>`; Node only, browsers cannot set WebSocket headers),
 * `query` (`?token=<token>`), `subprotocol` (the entries `bearer, <token>`).
 */
export type TokenPlacement =
  | { type: "header"; name?: string; prefix?: string }
  | { type: "query"; parameter?: string }
  | { type: "subprotocol"; marker?: string };

/** The part of the WebSocket interface the client uses (browsers' `WebSocket`, Node's, or `ws`'s). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  binaryType: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/**
 * A WebSocket constructor. A constructor passed in {@link ClientOptions.WebSocket} is called as
 * `ws` is, `new C(url, protocols, { headers })`; the global one of Node as `new WebSocket(url, { protocols, headers })`.
 */
export type WebSocketConstructor = new (url: string, protocols?: unknown, options?: unknown) => WebSocketLike;

/** What the `connected` event tells. */
export interface ConnectedInfo {
  /** The first connection of this client (since `connect()`). */
  first: boolean;
  /** Reliable mode: the session survived the reconnect, nothing from the host was lost. Always `false` in plain mode. */
  recovered: boolean;
  /** Reliable mode: the session's connection ID. */
  connectionId?: string;
  /** Reliable mode, a resume that failed: why (`expired`, `unknown`, `principal`, `overflow`, `lost`, `sequence`). */
  reason?: string;
  /** The subprotocol the API selected (reliable mode: from the `welcome`). */
  protocol?: string | null;
}

/** What the `retry` event tells: attempt `attempt` (1 for the first retry) starts in `delay` ms. */
export interface RetryInfo {
  /** 1 for the first retry after a drop or a failed first attempt. */
  attempt: number;
  /** Milliseconds until the attempt. */
  delay: number;
}

/** Heartbeat settings, in milliseconds. */
export interface HeartbeatOptions {
  /** Send a heartbeat after this long without a frame in either direction. Default 20000. */
  interval?: number;
  /** After a heartbeat, the connection counts as dead when nothing at all arrives within this. 0: never. Default 10000. */
  timeout?: number;
  /**
   * Plain mode: the message sent through the API's routes, which must answer it with any message
   * (a two-way route, or a post). Default `{"action":"ping"}`. Reliable mode sends `{"t":"ping"}`, answered by the host.
   */
  message?: string;
}

/** Options of a {@link Client}; durations in milliseconds. */
export interface ClientOptions {
  /** The WebSocket URL (`ws://` or `wss://`), with the API's query string if it has one. */
  url: string;
  /** Reliable delivery with `ch-reliable.v1` (needs `[extensions.sessions]` on the host). Default `false`. */
  reliable?: boolean;
  /** Subprotocols the API itself expects. */
  protocols?: string[];
  /** Called before every connection attempt, so that an expired token is replaced on reconnect. */
  token?: () => string | Promise<string>;
  /** Where the token goes. Default `{ type: "query" }` (parameter `token`). */
  tokenPlacement?: TokenPlacement;
  /** Headers of every upgrade request (Node only). */
  headers?: Record<string, string>;
  /** The WebSocket constructor; default the global `WebSocket`. In Node, `ws`'s also works (and shows a refused handshake's status). */
  WebSocket?: WebSocketConstructor;
  /** Reconnect delays: `min(maxDelay, baseDelay · 2^attempt + random(0, jitter))`. Defaults 1000, 30000, 1000. */
  backoff?: BackoffOptions;
  /** A connection up this long resets the backoff to attempt 0. Default 10000. */
  stableAfter?: number;
  /** Bound of the queue in messages. Default 1000. */
  maxQueuedMessages?: number;
  /** Bound of the queue in bytes (UTF-16 code units for text). Default 1 MiB. */
  maxQueuedBytes?: number;
  /** Default wait of {@link Client.request}. Default 30000. */
  requestTimeout?: number;
  /** Plain mode: the JSON field that carries a request's ID, which the API echoes in its answer. Default `requestId`. */
  requestIdField?: string;
  /** Heartbeats; `false` turns them off. */
  heartbeat?: HeartbeatOptions | false;
  /** How long a handshake (and, in reliable mode, the `welcome`) may take. Default 10000. */
  connectTimeout?: number;
  /** Reliable mode: latest acknowledgement after a frame arrives (and at once every 64). Default 200. */
  ackDelay?: number;
  /**
   * Called on every connection before the queue is sent: re-create server-side state (join rooms,
   * subscribe). Messages given to `sendNow` go out at once, before the queue; the queue follows when
   * the returned promise settles.
   */
  onConnect?: (info: ConnectedInfo, sendNow: (data: Payload) => void) => void | Promise<void>;
  /** Browsers: follow `online`/`offline` and page visibility. Default `true`. */
  watchNetwork?: boolean;
  /**
   * Emit the groups extension's presence notifications (`[extensions.groups] presence = "frames"` on
   * the host) as `presence` events instead of `message`. Default `false`: every message is a `message`.
   */
  presence?: boolean;
}

/** The events of a {@link Client} and their listeners' arguments. */
export interface ClientEvents {
  /** The state changed. */
  state: [state: State];
  /** A connection is ready (reliable mode: its `welcome` arrived); sent before `onConnect` and the queue. */
  connected: [info: ConnectedInfo];
  /** A message from the host: a string, or a `Uint8Array` for a binary one. */
  message: [data: Payload];
  /** With the `presence` option: a member joined or left one of this connection's groups. */
  presence: [presence: Presence];
  /** Something failed: an attempt (retried), an error reply to a `send`, or the terminal error before `disconnected`. */
  error: [error: ClientError];
  /** A reconnect attempt is scheduled. */
  retry: [info: RetryInfo];
  /** The number of messages held changed. */
  queue: [size: number];
}

/** The close code with which the client asks to resume (PROTOCOL.md 5.3). */
const CLOSE_RESUME = 4000;
/** Close codes that say the credentials were refused after the handshake. */
const CLOSE_UNAUTHORIZED = new Set([4401, 4403]);
/** The error of a `reply` whose message the host did not invoke, because it could not claim its key (PROTOCOL.md 6). */
const NOT_INVOKED = "Service Unavailable";
/** Acknowledge at once after this many unacknowledged frames (PROTOCOL.md 5.2). */
const ACK_EVERY = 64;
const OPEN = 1;

interface Pending {
  resolve: (reply: Payload | undefined) => void;
  reject: (error: ClientError) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** A message the client holds: unsent (plain), or unanswered (reliable). */
interface Outgoing {
  id: string;
  data: Payload;
  size: number;
  /** The connection it was last written to (0: never written); the host may have it once written. */
  writtenOn: number;
  request: Pending | undefined;
  /** When to write it again after the host did not invoke it (0: not waiting). */
  resendAt: number;
  /** How many times the host did not invoke it: the backoff attempt of the next delay. */
  refusals: number;
}

/** Per connection. */
interface Link {
  gen: number;
  ws: WebSocketLike;
  /** Messages may flow: plain once open, reliable once welcomed, and after `onConnect`. */
  ready: boolean;
  welcomed: boolean;
  readySince: number;
  lastHeard: number;
  lastSent: number;
  /** When the last heartbeat went out: the next one waits a full interval after it. */
  lastPing: number;
  unacked: number;
  timers: Map<string, ReturnType<typeof setTimeout>>;
}

/** A listener of the event `K`. */
export type Listener<K extends keyof ClientEvents> = (...args: ClientEvents[K]) => void;
type AnyListener = (...args: unknown[]) => void;

/**
 * A WebSocket client that stays connected.
 *
 * ```js
 * const client = new Client({ url: "wss://ws.example.com/prod", reliable: true });
 * client.on("message", (m) => console.log(m));
 * client.connect();
 * const reply = await client.request('{"action":"join","room":"lobby"}');
 * ```
 */
export class Client {
  private readonly o: Required<Omit<ClientOptions, "token" | "tokenPlacement" | "WebSocket" | "onConnect" | "heartbeat">> &
    Pick<ClientOptions, "token" | "onConnect"> & {
      tokenPlacement: TokenPlacement;
      heartbeat: Required<HeartbeatOptions> | false;
    };
  private readonly listeners = new Map<keyof ClientEvents, Set<AnyListener>>();
  private currentState: State = "disconnected";
  private link: Link | undefined;
  /** Bumped for every connection and by `close()`: callbacks of an older one are ignored. */
  private gen = 0;
  private running = false;
  /** Closed by `close()` or a terminal error, until the next `connect()`. */
  private closed = false;
  private everConnected = false;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private waitingOnline = false;
  private outbox: Outgoing[] = [];
  private outboxBytes = 0;
  /** Plain mode: requests written, waiting for their answer, by ID. */
  private readonly awaiting = new Map<string, Pending>();
  /** Random per client, so that idempotency keys stay unique across sessions and processes. */
  private readonly keyPrefix = randomPrefix();
  private nextKey = 1;
  private lastSeq = 0;
  private resumeToken: string | undefined;
  private unwatch: (() => void) | undefined;
  private readonly ctor: WebSocketConstructor | undefined;

  /** Makes a client; it connects when {@link connect} is called. */
  constructor(options: ClientOptions) {
    const hb = options.heartbeat === false ? false : { interval: 20_000, timeout: 10_000, message: '{"action":"ping"}', ...options.heartbeat };
    this.o = {
      url: options.url,
      reliable: options.reliable ?? false,
      protocols: options.protocols ?? [],
      token: options.token,
      tokenPlacement: options.tokenPlacement ?? { type: "query" },
      headers: options.headers ?? {},
      backoff: options.backoff ?? {},
      stableAfter: options.stableAfter ?? 10_000,
      maxQueuedMessages: options.maxQueuedMessages ?? 1000,
      maxQueuedBytes: options.maxQueuedBytes ?? 1024 * 1024,
      requestTimeout: options.requestTimeout ?? 30_000,
      requestIdField: options.requestIdField ?? "requestId",
      heartbeat: hb,
      connectTimeout: options.connectTimeout ?? 10_000,
      ackDelay: options.ackDelay ?? 200,
      onConnect: options.onConnect,
      watchNetwork: options.watchNetwork ?? true,
      presence: options.presence ?? false,
    };
    this.ctor = options.WebSocket;
  }

  /** The current state. */
  get state(): State {
    return this.currentState;
  }

  /** How many messages the client holds: unsent in plain mode, unanswered in reliable mode. */
  get queued(): number {
    return this.outbox.length;
  }

  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof ClientEvents>(event: K, listener: Listener<K>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as unknown as AnyListener);
    return () => this.off(event, listener);
  }

  /** Removes a listener. */
  off<K extends keyof ClientEvents>(event: K, listener: Listener<K>): void {
    this.listeners.get(event)?.delete(listener as unknown as AnyListener);
  }

  /** Starts connecting (and keeps reconnecting until {@link close}). Does nothing when already started. */
  connect(): void {
    if (this.running) return;
    this.running = true;
    this.closed = false;
    this.everConnected = false;
    this.attempt = 0;
    this.unwatch = this.o.watchNetwork ? this.watchNetwork() : undefined;
    void this.open();
  }

  /**
   * Sends a message: at once when connected, otherwise queued and sent in order once connected.
   * Returns the message's idempotency key in reliable mode (its `requestContext.idempotencyKey`).
   * Throws {@link QueueFullError} when the queue is at its bound (nothing queued is dropped).
   */
  send(data: Payload): string | undefined {
    const out = this.enqueue(data, undefined);
    this.flush();
    return this.o.reliable ? out.id : undefined;
  }

  /**
   * Sends a message and resolves with its answer. Reliable mode: the `reply` of the host (the two-way
   * route's body, or `undefined` when there is none; an error reply rejects with {@link ReplyError}).
   * Plain mode: `data` must be a JSON object (or its text); the request's ID goes into its
   * `requestIdField`, and the first message from the host whose JSON has that ID answers it.
   */
  request(data: Payload | Record<string, unknown>, options: { timeout?: number } = {}): Promise<Payload | undefined> {
    let payload: Payload;
    let id: string | undefined;
    if (this.o.reliable) {
      payload = typeof data === "string" || data instanceof Uint8Array ? data : JSON.stringify(data);
    } else {
      const obj = typeof data === "string" ? safeJson(data) : data instanceof Uint8Array ? undefined : data;
      if (!obj || typeof obj !== "object" || Array.isArray(obj)) {
        return Promise.reject(new ClientError("InvalidRequest", "plain-mode requests must be JSON objects"));
      }
      id = this.key();
      payload = JSON.stringify({ ...obj, [this.o.requestIdField]: id });
    }
    return new Promise((resolve, reject) => {
      const pending: Pending = { resolve, reject, timer: undefined };
      let out: Outgoing;
      try {
        out = this.enqueue(payload, pending, id);
      } catch (e) {
        reject(e as ClientError);
        return;
      }
      pending.timer = setTimeout(() => this.expire(out), options.timeout ?? this.o.requestTimeout);
      this.flush();
    });
  }

  /** Closes deliberately (code 1000 by default): no reconnect; queued messages and pending requests fail with {@link ClosedError}. */
  close(code = 1000, reason = ""): void {
    this.stop(undefined, code, reason);
  }

  // ---- connection ----------------------------------------------------------------------------

  private async open(): Promise<void> {
    this.retryTimer = undefined;
    const gen = ++this.gen;
    this.setState(this.everConnected ? "reconnecting" : "connecting");
    let token: string | undefined;
    if (this.o.token) {
      try {
        // A provider that never answers must not stall the client: it counts against the connect timeout.
        token = await withTimeout(Promise.resolve().then(this.o.token), this.o.connectTimeout, "the token provider did not answer in time");
      } catch (e) {
        if (gen !== this.gen) return;
        if (e instanceof UnauthorizedError) return this.stop(e);
        this.emit("error", new ClientError("Token", `the token provider failed: ${errorText(e)}`));
        return this.retry();
      }
      if (gen !== this.gen) return;
    }
    let ws: WebSocketLike;
    try {
      ws = this.makeSocket(token);
    } catch (e) {
      return this.stop(e instanceof ClientError ? e : new ClientError("InvalidOptions", errorText(e)));
    }
    const now = Date.now();
    const link: Link = {
      gen,
      ws,
      ready: false,
      welcomed: false,
      readySince: 0,
      lastHeard: now,
      lastSent: now,
      lastPing: 0,
      unacked: 0,
      timers: new Map(),
    };
    this.link = link;
    let opened = false;
    this.timer(link, "connect", this.o.connectTimeout, () => this.drop(link, "the handshake timed out"));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      if (link !== this.link) return;
      opened = true;
      if (this.o.reliable) {
        // Without the selection the host speaks plain WebSocket: envelopes must not be sent (PROTOCOL.md 1.3).
        if (ws.protocol !== RELIABLE) return this.stop(new ReliableNotSupportedError());
        return; // ready at the welcome, which the connect timer also waits for
      }
      this.clearTimer(link, "connect");
      void this.ready(link, { first: !this.everConnected, recovered: false, protocol: ws.protocol || null });
    };
    ws.onmessage = (ev) => {
      if (link !== this.link) return;
      link.lastHeard = Date.now();
      this.clearTimer(link, "dead");
      this.receive(link, ev.data);
    };
    // An error ends the connection. Browsers follow it with a close, but Node's own WebSocket (undici)
    // does not after a refused handshake, so the error alone must be enough.
    ws.onerror = (ev) => {
      if (link !== this.link) return;
      const status = handshakeStatus(ev);
      if (!opened && (status === 401 || status === 403)) {
        return this.stop(new UnauthorizedError(`the handshake was refused with HTTP ${status}`, status));
      }
      this.drop(link, opened ? "the connection failed" : status ? `the handshake was refused with HTTP ${status}` : "the connection attempt failed");
    };
    ws.onclose = (ev) => {
      if (link !== this.link) return;
      if (CLOSE_UNAUTHORIZED.has(ev.code)) {
        return this.stop(new UnauthorizedError(`the host closed the connection with ${ev.code} ${ev.reason}`, ev.code));
      }
      // Any code from the host but 4000 and 4001 (or a connection lost without a Close frame, 1006)
      // means the session ended (PROTOCOL.md 7). The next connection offers its token all the same:
      // the host cannot resume an ended session, but the token proves this client held it, so the
      // new session carries on its idempotency keys and the unanswered messages sent again are not
      // invoked twice (6.7).
      this.drop(link, opened ? `closed with ${ev.code}` : "the connection attempt failed");
    };
  }

  private makeSocket(token: string | undefined): WebSocketLike {
    let url = this.o.url;
    const headers: Record<string, string> = { ...this.o.headers };
    const protocols: string[] = [];
    if (this.o.reliable) {
      protocols.push(RELIABLE);
      if (this.resumeToken) protocols.push(resumeEntry(this.lastSeq, this.resumeToken));
    }
    protocols.push(...this.o.protocols);
    if (token !== undefined) {
      const p = this.o.tokenPlacement;
      if (p.type === "header") headers[p.name ?? "Authorization"] = `${p.prefix ?? "Bearer "}${token}`;
      else if (p.type === "query") url = appendQuery(url, p.parameter ?? "token", token);
      else {
        if (!isProtocolToken(token)) throw new ClientError("Token", "the token has characters a subprotocol cannot carry");
        protocols.push(p.marker ?? "bearer", token);
      }
    }
    const Ctor = this.ctor ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Ctor) throw new ClientError("InvalidOptions", "no WebSocket: pass a constructor in options.WebSocket (Node 20: ws, or --experimental-websocket)");
    const withHeaders = Object.keys(headers).length > 0;
    if (this.ctor) return new Ctor(url, protocols, withHeaders ? { headers } : undefined);
    if (withHeaders) {
      if (!isNode()) throw new ClientError("InvalidOptions", "browsers cannot set WebSocket headers: use the query or subprotocol token placement");
      // Node's own WebSocket (undici) takes headers in its init object.
      return new Ctor(url, { protocols, headers });
    }
    return new Ctor(url, protocols);
  }

  /** The connection can carry messages: report it, run `onConnect`, then send everything held. */
  private async ready(link: Link, info: ConnectedInfo): Promise<void> {
    this.everConnected = true;
    link.readySince = Date.now();
    this.setState("connected");
    this.emit("connected", info);
    this.armHeartbeat(link);
    if (this.o.onConnect) {
      try {
        await this.o.onConnect(info, (data) => this.sendNow(link, data));
      } catch (e) {
        this.emit("error", new ClientError("OnConnect", errorText(e)));
      }
      if (link !== this.link) return;
    }
    link.ready = true;
    this.flush();
  }

  /** Lost, dead or refused: forget the connection and retry after the backoff delay. */
  private drop(link: Link, why: string): void {
    if (link !== this.link) return;
    this.detach(link, this.o.reliable ? CLOSE_RESUME : 1000, "Resume");
    if (link.readySince && Date.now() - link.readySince >= this.o.stableAfter) this.attempt = 0;
    if (!link.readySince) this.emit("error", new ClientError("Connect", why));
    // Plain requests already written are lost with the connection; reliable ones are sent again.
    for (const [id, p] of this.awaiting) {
      this.awaiting.delete(id);
      clearTimeout(p.timer);
      p.reject(new ClientError("Connect", `the connection was lost before the reply (${why})`));
    }
    this.retry();
  }

  private detach(link: Link, code: number, reason: string): void {
    for (const t of link.timers.values()) clearTimeout(t);
    link.timers.clear();
    this.link = undefined;
    const ws = link.ws;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      ws.close(code, reason);
    } catch {
      // Already closed or closing.
    }
  }

  private retry(): void {
    if (!this.running) return;
    this.setState(this.everConnected ? "reconnecting" : "connecting");
    if (this.offline()) {
      this.waitingOnline = true;
      return;
    }
    const delay = backoffDelay(this.attempt, this.o.backoff);
    this.attempt += 1;
    this.emit("retry", { attempt: this.attempt, delay });
    this.retryTimer = setTimeout(() => void this.open(), delay);
  }

  /** Retries now instead of at the end of the backoff delay (back online, page visible again). */
  private retryNow(): void {
    if (!this.running || this.link || this.retryTimer === undefined) return;
    clearTimeout(this.retryTimer);
    void this.open();
  }

  private stop(error: ClientError | undefined, code = 1000, reason = ""): void {
    if (!this.running && this.currentState === "disconnected") return;
    this.running = false;
    this.closed = true;
    this.gen++;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.waitingOnline = false;
    this.unwatch?.();
    this.unwatch = undefined;
    if (this.link) this.detach(this.link, code, reason);
    if (error) this.emit("error", error);
    this.setState("disconnected");
    const failure = error ?? new ClosedError();
    const held = this.outbox;
    this.outbox = [];
    this.outboxBytes = 0;
    for (const out of held) if (out.request) settle(out.request, failure);
    for (const p of this.awaiting.values()) settle(p, failure);
    this.awaiting.clear();
    this.resumeToken = undefined;
    this.lastSeq = 0;
    if (held.length) this.emit("queue", 0);
  }

  // ---- browsers -------------------------------------------------------------------------------

  private offline(): boolean {
    const nav = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
    return this.o.watchNetwork && isBrowser() && nav?.onLine === false;
  }

  private watchNetwork(): (() => void) | undefined {
    if (!isBrowser()) return undefined;
    const g = globalThis as unknown as Window;
    const onOnline = () => {
      if (this.waitingOnline) {
        this.waitingOnline = false;
        void this.open();
      } else this.retryNow();
    };
    // The network is gone: the connection is as good as dead, and attempts would fail until `online`.
    const onOffline = () => {
      if (this.link) this.drop(this.link, "the browser went offline");
    };
    const onVisible = () => {
      if (g.document.visibilityState !== "visible") return;
      // Back from the background (or a sleep): reconnect now, or check the connection is still alive.
      if (this.link?.ready && this.o.heartbeat) this.heartbeat(this.link);
      else this.retryNow();
    };
    g.addEventListener("online", onOnline);
    g.addEventListener("offline", onOffline);
    g.document?.addEventListener("visibilitychange", onVisible);
    return () => {
      g.removeEventListener("online", onOnline);
      g.removeEventListener("offline", onOffline);
      g.document?.removeEventListener("visibilitychange", onVisible);
    };
  }

  // ---- heartbeats -----------------------------------------------------------------------------

  private armHeartbeat(link: Link): void {
    const hb = this.o.heartbeat;
    if (!hb) return;
    const due = () => Math.max(Math.min(link.lastHeard, link.lastSent), link.lastPing) + hb.interval;
    this.timer(link, "heartbeat", Math.max(0, due() - Date.now()), () => {
      if (due() <= Date.now()) this.heartbeat(link);
      else this.armHeartbeat(link);
    });
  }

  private heartbeat(link: Link): void {
    const hb = this.o.heartbeat;
    if (!hb) return;
    this.write(link, this.o.reliable ? PING_FRAME : hb.message);
    link.lastPing = link.lastSent;
    if (hb.timeout > 0 && !link.timers.has("dead")) {
      this.timer(link, "dead", hb.timeout, () => this.drop(link, "no answer to the heartbeat"));
    }
    this.armHeartbeat(link);
  }

  // ---- receiving ------------------------------------------------------------------------------

  private receive(link: Link, data: unknown): void {
    if (this.o.reliable) {
      if (typeof data === "string") this.onFrame(link, data);
      return; // binary messages are not part of the protocol
    }
    const payload = typeof data === "string" ? data : data instanceof ArrayBuffer ? new Uint8Array(data) : undefined;
    if (payload === undefined) return;
    if (typeof payload === "string" && this.awaiting.size > 0 && payload.includes(this.o.requestIdField)) {
      const id = (safeJson(payload) as Record<string, unknown> | undefined)?.[this.o.requestIdField];
      const pending = typeof id === "string" ? this.awaiting.get(id) : undefined;
      if (pending && typeof id === "string") {
        this.awaiting.delete(id);
        clearTimeout(pending.timer);
        pending.resolve(payload);
        return;
      }
    }
    this.deliver(payload);
  }

  /** A message for the application: a presence notification, when asked for, or a `message`. */
  private deliver(payload: Payload): void {
    const presence = this.o.presence ? parsePresence(payload) : undefined;
    if (presence) this.emit("presence", presence);
    else this.emit("message", payload);
  }

  private onFrame(link: Link, text: string): void {
    const frame = parseHostFrame(text);
    if (!frame) return;
    switch (frame.t) {
      case "welcome":
        return this.onWelcome(link, frame.welcome);
      case "msg":
        if (!this.inOrder(link, frame.s)) return;
        if (frame.payload !== undefined) this.deliver(frame.payload);
        return this.noteSequenced(link);
      case "reply": {
        if (!this.inOrder(link, frame.s)) return;
        if (frame.error?.message === NOT_INVOKED && this.resendLater(link, frame.id)) return this.noteSequenced(link);
        const error = frame.error ? new ReplyError(frame.id, frame.error.message, frame.error.requestId) : undefined;
        this.answer(frame.id, error, frame.payload);
        return this.noteSequenced(link);
      }
      case "error": {
        const error = new ProtocolError(frame.code, frame.message);
        // The host ignored the frame: sending the message again would not help.
        const i = frame.id === undefined ? -1 : this.outbox.findIndex((o) => o.id === frame.id);
        if (i >= 0) {
          const out = this.remove(i);
          if (out.request) return settle(out.request, error);
        }
        this.emit("error", error);
        return;
      }
      default:
        return;
    }
  }

  /** Whether a sequenced frame is the next one; a replay is acknowledged, a gap resumes. */
  private inOrder(link: Link, s: number): boolean {
    if (!link.welcomed) return false;
    switch (order(this.lastSeq, s)) {
      case "next":
        this.lastSeq = s;
        return true;
      case "replay":
        this.noteSequenced(link);
        return false;
      case "gap":
        // Not delivered: close with 4000, which keeps the session, and resume from the last frame in order.
        this.drop(link, `sequence gap: expected ${this.lastSeq + 1}, got ${s}`);
        return false;
    }
  }

  private noteSequenced(link: Link): void {
    if (link !== this.link) return;
    link.unacked += 1;
    if (link.unacked >= ACK_EVERY) return this.sendAck(link);
    if (!link.timers.has("ack")) this.timer(link, "ack", this.o.ackDelay, () => this.sendAck(link));
  }

  private sendAck(link: Link): void {
    link.unacked = 0;
    this.clearTimer(link, "ack");
    this.write(link, ackFrame(this.lastSeq));
  }

  private onWelcome(link: Link, w: Welcome): void {
    if (link.welcomed) return;
    // A fresh session numbers from 1 again (PROTOCOL.md 4).
    if (!w.recovered) this.lastSeq = w.seq;
    // The token goes back inside a subprotocol name; one that cannot be is not kept, and the next
    // connection starts a new session instead of failing its handshake.
    this.resumeToken = isProtocolToken(w.resumeToken) ? w.resumeToken : undefined;
    link.welcomed = true;
    this.clearTimer(link, "connect");
    void this.ready(link, {
      first: !this.everConnected,
      recovered: w.recovered,
      connectionId: w.connectionId,
      protocol: w.protocol,
      ...(w.reason !== undefined ? { reason: w.reason } : {}),
    });
  }

  private answer(id: string, error: ClientError | undefined, payload: Payload | undefined): void {
    const i = this.outbox.findIndex((o) => o.id === id);
    // Not found: a second reply to a message sent twice, or one withdrawn; already settled.
    if (i < 0) return;
    const out = this.remove(i);
    if (out.request) settle(out.request, error, payload);
    else if (error) this.emit("error", error);
  }

  // ---- sending --------------------------------------------------------------------------------

  private key(): string {
    return `${this.keyPrefix}-${this.nextKey++}`;
  }

  private enqueue(data: Payload, request: Pending | undefined, id = this.key()): Outgoing {
    if (this.closed) throw new ClosedError();
    const size = typeof data === "string" ? data.length : data.byteLength;
    const full =
      this.outbox.length >= this.o.maxQueuedMessages || (this.outbox.length > 0 && this.outboxBytes + size > this.o.maxQueuedBytes);
    if (full) throw new QueueFullError();
    const out: Outgoing = { id, data, size, writtenOn: 0, request, resendAt: 0, refusals: 0 };
    this.outbox.push(out);
    this.outboxBytes += size;
    this.emit("queue", this.outbox.length);
    return out;
  }

  private remove(i: number): Outgoing {
    const [out] = this.outbox.splice(i, 1) as [Outgoing];
    this.outboxBytes -= out.size;
    this.emit("queue", this.outbox.length);
    return out;
  }

  /**
   * Writes what the client holds, in order: in reliable mode every message not yet written to this
   * connection (after a welcome: a resume or a new session may not have them); in plain mode the queue.
   */
  private flush(): void {
    const link = this.link;
    if (!link?.ready || link.ws.readyState !== OPEN) return;
    if (this.o.reliable) {
      for (const out of this.outbox) {
        if (out.writtenOn === link.gen) continue;
        out.writtenOn = link.gen;
        out.resendAt = 0;
        if (!this.write(link, msgFrame(out.id, out.data))) return;
      }
      return;
    }
    if (this.outbox.length === 0) return;
    let sent = 0;
    // Stops at a failed write: the connection is gone, and what is left waits for the next one.
    while (sent < this.outbox.length && this.write(link, this.outbox[sent].data)) {
      const out = this.outbox[sent++];
      if (out.request) this.awaiting.set(out.id, out.request);
      this.outboxBytes -= out.size;
    }
    this.outbox.splice(0, sent);
    this.emit("queue", this.outbox.length);
  }

  /**
   * The host did not invoke message `id` (it could not claim its key): write it again, with the same key,
   * after the backoff delay for its refusals so far (a reconnect sends it at once). `false` when it is no
   * longer held.
   */
  private resendLater(link: Link, id: string): boolean {
    const out = this.outbox.find((o) => o.id === id);
    if (!out) return false;
    out.resendAt = Date.now() + backoffDelay(out.refusals++, this.o.backoff);
    this.armResend(link);
    return true;
  }

  private armResend(link: Link): void {
    const due = Math.min(...this.outbox.map((o) => o.resendAt || Infinity));
    if (due === Infinity) return;
    this.timer(link, "resend", Math.max(0, due - Date.now()), () => {
      const now = Date.now();
      for (const out of this.outbox) {
        if (!out.resendAt || out.resendAt > now) continue;
        out.resendAt = 0;
        if (!this.write(link, msgFrame(out.id, out.data))) return;
      }
      this.armResend(link);
    });
  }

  /** `onConnect`'s sends: straight to the connection, before the queue. */
  private sendNow(link: Link, data: Payload): void {
    if (link !== this.link) return;
    if (!this.o.reliable) {
      this.write(link, data);
      return;
    }
    const out = this.enqueue(data, undefined);
    out.writtenOn = link.gen;
    this.write(link, msgFrame(out.id, out.data));
  }

  /** Whether the write was accepted; a failed one drops the connection. */
  private write(link: Link, data: Payload): boolean {
    link.lastSent = Date.now();
    try {
      link.ws.send(data);
      return true;
    } catch (e) {
      this.drop(link, `send failed: ${errorText(e)}`);
      return false;
    }
  }

  /** A request's timeout: withdrawn if never written; otherwise its answer, if any, is discarded. */
  private expire(out: Outgoing): void {
    const pending = out.request;
    if (!pending) return;
    out.request = undefined;
    const i = this.outbox.indexOf(out);
    if (i >= 0 && out.writtenOn === 0) this.remove(i);
    this.awaiting.delete(out.id);
    pending.reject(new TimeoutError());
  }

  // ---- plumbing -------------------------------------------------------------------------------

  private timer(link: Link, name: string, ms: number, f: () => void): void {
    clearTimeout(link.timers.get(name));
    link.timers.set(
      name,
      setTimeout(() => {
        link.timers.delete(name);
        if (link === this.link) f();
      }, ms),
    );
  }

  private clearTimer(link: Link, name: string): void {
    clearTimeout(link.timers.get(name));
    link.timers.delete(name);
  }

  private setState(state: State): void {
    if (state === this.currentState) return;
    this.currentState = state;
    this.emit("state", state);
  }

  private emit<K extends keyof ClientEvents>(event: K, ...args: ClientEvents[K]): void {
    for (const l of this.listeners.get(event) ?? []) {
      try {
        l(...args);
      } catch (e) {
        // A listener's bug must not break the connection; report it where the platform reports uncaught errors.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(message)), ms)));
  return Promise.race([p, expired]).finally(() => clearTimeout(timer));
}

function settle(p: Pending, error: ClientError | undefined, payload?: Payload): void {
  clearTimeout(p.timer);
  if (error) p.reject(error);
  else p.resolve(payload);
}

/** The HTTP status of a refused handshake, where the platform tells it (`ws`: "Unexpected server response: 401"). */
function handshakeStatus(ev: unknown): number | undefined {
  const e = ev as { message?: unknown; error?: { message?: unknown } } | undefined;
  const text = `${e?.message ?? ""} ${e?.error?.message ?? ""}`;
  const m = /Unexpected server response: (\d{3})/.exec(text);
  return m ? Number(m[1]) : undefined;
}

function appendQuery(url: string, name: string, value: string): string {
  const hash = url.indexOf("#");
  const base = hash >= 0 ? url.slice(0, hash) : url;
  return `${base}${base.includes("?") ? "&" : "?"}${encodeURIComponent(name)}=${encodeURIComponent(value)}`;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function randomPrefix(): string {
  const bytes = new Uint8Array(9);
  globalThis.crypto.getRandomValues(bytes);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_");
}

function isBrowser(): boolean {
  return typeof (globalThis as { window?: unknown }).window !== "undefined" && typeof (globalThis as { document?: unknown }).document !== "undefined";
}

function isNode(): boolean {
  return typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === "string";
}
