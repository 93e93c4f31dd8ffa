/**
 * The client: one WebSocket at a time, reconnected with backoff; a queue while offline; heartbeats;
 * requests; and in reliable mode the `ch-reliable.v1` session (connection-host's PROTOCOL.md).
 */
import { backoffDelay } from "./backoff.js";
import { ClientError, ClosedError, ProtocolError, QueueFullError, ReliableNotSupportedError, ReplyError, TimeoutError, UnauthorizedError, } from "./errors.js";
import { ackFrame, isProtocolToken, msgFrame, order, parseHostFrame, PING_FRAME, RELIABLE, resumeEntry, } from "./frames.js";
import { parsePresence } from "./presence.js";
/** The close code with which the client asks to resume (PROTOCOL.md 5.3). */
const CLOSE_RESUME = 4000;
/** Close codes that say the credentials were refused after the handshake. */
const CLOSE_UNAUTHORIZED = new Set([4401, 4403]);
/** The error of a `reply` whose message the host did not invoke, because it could not claim its key (PROTOCOL.md 6). */
const NOT_INVOKED = "Service Unavailable";
/** Acknowledge at once after this many unacknowledged frames (PROTOCOL.md 5.2). */
const ACK_EVERY = 64;
const OPEN = 1;
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
    o;
    listeners = new Map();
    currentState = "disconnected";
    link;
    /** Bumped for every connection and by `close()`: callbacks of an older one are ignored. */
    gen = 0;
    running = false;
    /** Closed by `close()` or a terminal error, until the next `connect()`. */
    closed = false;
    everConnected = false;
    attempt = 0;
    retryTimer;
    waitingOnline = false;
    outbox = [];
    outboxBytes = 0;
    /** Plain mode: requests written, waiting for their answer, by ID. */
    awaiting = new Map();
    /** Random per client, so that idempotency keys stay unique across sessions and processes. */
    keyPrefix = randomPrefix();
    nextKey = 1;
    lastSeq = 0;
    resumeToken;
    unwatch;
    ctor;
    /** Makes a client; it connects when {@link connect} is called. */
    constructor(options) {
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
    get state() {
        return this.currentState;
    }
    /** How many messages the client holds: unsent in plain mode, unanswered in reliable mode. */
    get queued() {
        return this.outbox.length;
    }
    /** Adds a listener; returns the function that removes it. */
    on(event, listener) {
        let set = this.listeners.get(event);
        if (!set)
            this.listeners.set(event, (set = new Set()));
        set.add(listener);
        return () => this.off(event, listener);
    }
    /** Removes a listener. */
    off(event, listener) {
        this.listeners.get(event)?.delete(listener);
    }
    /** Starts connecting (and keeps reconnecting until {@link close}). Does nothing when already started. */
    connect() {
        if (this.running)
            return;
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
    send(data) {
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
    request(data, options = {}) {
        let payload;
        let id;
        if (this.o.reliable) {
            payload = typeof data === "string" || data instanceof Uint8Array ? data : JSON.stringify(data);
        }
        else {
            const obj = typeof data === "string" ? safeJson(data) : data instanceof Uint8Array ? undefined : data;
            if (!obj || typeof obj !== "object" || Array.isArray(obj)) {
                return Promise.reject(new ClientError("InvalidRequest", "plain-mode requests must be JSON objects"));
            }
            id = this.key();
            payload = JSON.stringify({ ...obj, [this.o.requestIdField]: id });
        }
        return new Promise((resolve, reject) => {
            const pending = { resolve, reject, timer: undefined };
            let out;
            try {
                out = this.enqueue(payload, pending, id);
            }
            catch (e) {
                reject(e);
                return;
            }
            pending.timer = setTimeout(() => this.expire(out), options.timeout ?? this.o.requestTimeout);
            this.flush();
        });
    }
    /** Closes deliberately (code 1000 by default): no reconnect; queued messages and pending requests fail with {@link ClosedError}. */
    close(code = 1000, reason = "") {
        this.stop(undefined, code, reason);
    }
    // ---- connection ----------------------------------------------------------------------------
    async open() {
        this.retryTimer = undefined;
        const gen = ++this.gen;
        this.setState(this.everConnected ? "reconnecting" : "connecting");
        let token;
        if (this.o.token) {
            try {
                // A provider that never answers must not stall the client: it counts against the connect timeout.
                token = await withTimeout(Promise.resolve().then(this.o.token), this.o.connectTimeout, "the token provider did not answer in time");
            }
            catch (e) {
                if (gen !== this.gen)
                    return;
                if (e instanceof UnauthorizedError)
                    return this.stop(e);
                this.emit("error", new ClientError("Token", `the token provider failed: ${errorText(e)}`));
                return this.retry();
            }
            if (gen !== this.gen)
                return;
        }
        let ws;
        try {
            ws = this.makeSocket(token);
        }
        catch (e) {
            return this.stop(e instanceof ClientError ? e : new ClientError("InvalidOptions", errorText(e)));
        }
        const now = Date.now();
        const link = {
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
            if (link !== this.link)
                return;
            opened = true;
            if (this.o.reliable) {
                // Without the selection the host speaks plain WebSocket: envelopes must not be sent (PROTOCOL.md 1.3).
                if (ws.protocol !== RELIABLE)
                    return this.stop(new ReliableNotSupportedError());
                return; // ready at the welcome, which the connect timer also waits for
            }
            this.clearTimer(link, "connect");
            void this.ready(link, { first: !this.everConnected, recovered: false, protocol: ws.protocol || null });
        };
        ws.onmessage = (ev) => {
            if (link !== this.link)
                return;
            link.lastHeard = Date.now();
            this.clearTimer(link, "dead");
            this.receive(link, ev.data);
        };
        // An error ends the connection. Browsers follow it with a close, but Node's own WebSocket (undici)
        // does not after a refused handshake, so the error alone must be enough.
        ws.onerror = (ev) => {
            if (link !== this.link)
                return;
            const status = handshakeStatus(ev);
            if (!opened && (status === 401 || status === 403)) {
                return this.stop(new UnauthorizedError(`the handshake was refused with HTTP ${status}`, status));
            }
            this.drop(link, opened ? "the connection failed" : status ? `the handshake was refused with HTTP ${status}` : "the connection attempt failed");
        };
        ws.onclose = (ev) => {
            if (link !== this.link)
                return;
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
    makeSocket(token) {
        let url = this.o.url;
        const headers = { ...this.o.headers };
        const protocols = [];
        if (this.o.reliable) {
            protocols.push(RELIABLE);
            if (this.resumeToken)
                protocols.push(resumeEntry(this.lastSeq, this.resumeToken));
        }
        protocols.push(...this.o.protocols);
        if (token !== undefined) {
            const p = this.o.tokenPlacement;
            if (p.type === "header")
                headers[p.name ?? "Authorization"] = `${p.prefix ?? "Bearer "}${token}`;
            else if (p.type === "query")
                url = appendQuery(url, p.parameter ?? "token", token);
            else {
                if (!isProtocolToken(token))
                    throw new ClientError("Token", "the token has characters a subprotocol cannot carry");
                protocols.push(p.marker ?? "bearer", token);
            }
        }
        const Ctor = this.ctor ?? globalThis.WebSocket;
        if (!Ctor)
            throw new ClientError("InvalidOptions", "no WebSocket: pass a constructor in options.WebSocket (Node 20: ws, or --experimental-websocket)");
        const withHeaders = Object.keys(headers).length > 0;
        if (this.ctor)
            return new Ctor(url, protocols, withHeaders ? { headers } : undefined);
        if (withHeaders) {
            if (!isNode())
                throw new ClientError("InvalidOptions", "browsers cannot set WebSocket headers: use the query or subprotocol token placement");
            // Node's own WebSocket (undici) takes headers in its init object.
            return new Ctor(url, { protocols, headers });
        }
        return new Ctor(url, protocols);
    }
    /** The connection can carry messages: report it, run `onConnect`, then send everything held. */
    async ready(link, info) {
        this.everConnected = true;
        link.readySince = Date.now();
        this.setState("connected");
        this.emit("connected", info);
        this.armHeartbeat(link);
        if (this.o.onConnect) {
            try {
                await this.o.onConnect(info, (data) => this.sendNow(link, data));
            }
            catch (e) {
                this.emit("error", new ClientError("OnConnect", errorText(e)));
            }
            if (link !== this.link)
                return;
        }
        link.ready = true;
        this.flush();
    }
    /** Lost, dead or refused: forget the connection and retry after the backoff delay. */
    drop(link, why) {
        if (link !== this.link)
            return;
        this.detach(link, this.o.reliable ? CLOSE_RESUME : 1000, "Resume");
        if (link.readySince && Date.now() - link.readySince >= this.o.stableAfter)
            this.attempt = 0;
        if (!link.readySince)
            this.emit("error", new ClientError("Connect", why));
        // Plain requests already written are lost with the connection; reliable ones are sent again.
        for (const [id, p] of this.awaiting) {
            this.awaiting.delete(id);
            clearTimeout(p.timer);
            p.reject(new ClientError("Connect", `the connection was lost before the reply (${why})`));
        }
        this.retry();
    }
    detach(link, code, reason) {
        for (const t of link.timers.values())
            clearTimeout(t);
        link.timers.clear();
        this.link = undefined;
        const ws = link.ws;
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
        try {
            ws.close(code, reason);
        }
        catch {
            // Already closed or closing.
        }
    }
    retry() {
        if (!this.running)
            return;
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
    retryNow() {
        if (!this.running || this.link || this.retryTimer === undefined)
            return;
        clearTimeout(this.retryTimer);
        void this.open();
    }
    stop(error, code = 1000, reason = "") {
        if (!this.running && this.currentState === "disconnected")
            return;
        this.running = false;
        this.closed = true;
        this.gen++;
        clearTimeout(this.retryTimer);
        this.retryTimer = undefined;
        this.waitingOnline = false;
        this.unwatch?.();
        this.unwatch = undefined;
        if (this.link)
            this.detach(this.link, code, reason);
        if (error)
            this.emit("error", error);
        this.setState("disconnected");
        const failure = error ?? new ClosedError();
        const held = this.outbox;
        this.outbox = [];
        this.outboxBytes = 0;
        for (const out of held)
            if (out.request)
                settle(out.request, failure);
        for (const p of this.awaiting.values())
            settle(p, failure);
        this.awaiting.clear();
        this.resumeToken = undefined;
        this.lastSeq = 0;
        if (held.length)
            this.emit("queue", 0);
    }
    // ---- browsers -------------------------------------------------------------------------------
    offline() {
        const nav = globalThis.navigator;
        return this.o.watchNetwork && isBrowser() && nav?.onLine === false;
    }
    watchNetwork() {
        if (!isBrowser())
            return undefined;
        const g = globalThis;
        const onOnline = () => {
            if (this.waitingOnline) {
                this.waitingOnline = false;
                void this.open();
            }
            else
                this.retryNow();
        };
        // The network is gone: the connection is as good as dead, and attempts would fail until `online`.
        const onOffline = () => {
            if (this.link)
                this.drop(this.link, "the browser went offline");
        };
        const onVisible = () => {
            if (g.document.visibilityState !== "visible")
                return;
            // Back from the background (or a sleep): reconnect now, or check the connection is still alive.
            if (this.link?.ready && this.o.heartbeat)
                this.heartbeat(this.link);
            else
                this.retryNow();
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
    armHeartbeat(link) {
        const hb = this.o.heartbeat;
        if (!hb)
            return;
        const due = () => Math.max(Math.min(link.lastHeard, link.lastSent), link.lastPing) + hb.interval;
        this.timer(link, "heartbeat", Math.max(0, due() - Date.now()), () => {
            if (due() <= Date.now())
                this.heartbeat(link);
            else
                this.armHeartbeat(link);
        });
    }
    heartbeat(link) {
        const hb = this.o.heartbeat;
        if (!hb)
            return;
        this.write(link, this.o.reliable ? PING_FRAME : hb.message);
        link.lastPing = link.lastSent;
        if (hb.timeout > 0 && !link.timers.has("dead")) {
            this.timer(link, "dead", hb.timeout, () => this.drop(link, "no answer to the heartbeat"));
        }
        this.armHeartbeat(link);
    }
    // ---- receiving ------------------------------------------------------------------------------
    receive(link, data) {
        if (this.o.reliable) {
            if (typeof data === "string")
                this.onFrame(link, data);
            return; // binary messages are not part of the protocol
        }
        const payload = typeof data === "string" ? data : data instanceof ArrayBuffer ? new Uint8Array(data) : undefined;
        if (payload === undefined)
            return;
        if (typeof payload === "string" && this.awaiting.size > 0 && payload.includes(this.o.requestIdField)) {
            const id = safeJson(payload)?.[this.o.requestIdField];
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
    deliver(payload) {
        const presence = this.o.presence ? parsePresence(payload) : undefined;
        if (presence)
            this.emit("presence", presence);
        else
            this.emit("message", payload);
    }
    onFrame(link, text) {
        const frame = parseHostFrame(text);
        if (!frame)
            return;
        switch (frame.t) {
            case "welcome":
                return this.onWelcome(link, frame.welcome);
            case "msg":
                if (!this.inOrder(link, frame.s))
                    return;
                if (frame.payload !== undefined)
                    this.deliver(frame.payload);
                return this.noteSequenced(link);
            case "reply": {
                if (!this.inOrder(link, frame.s))
                    return;
                if (frame.error?.message === NOT_INVOKED && this.resendLater(link, frame.id))
                    return this.noteSequenced(link);
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
                    if (out.request)
                        return settle(out.request, error);
                }
                this.emit("error", error);
                return;
            }
            default:
                return;
        }
    }
    /** Whether a sequenced frame is the next one; a replay is acknowledged, a gap resumes. */
    inOrder(link, s) {
        if (!link.welcomed)
            return false;
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
    noteSequenced(link) {
        if (link !== this.link)
            return;
        link.unacked += 1;
        if (link.unacked >= ACK_EVERY)
            return this.sendAck(link);
        if (!link.timers.has("ack"))
            this.timer(link, "ack", this.o.ackDelay, () => this.sendAck(link));
    }
    sendAck(link) {
        link.unacked = 0;
        this.clearTimer(link, "ack");
        this.write(link, ackFrame(this.lastSeq));
    }
    onWelcome(link, w) {
        if (link.welcomed)
            return;
        // A fresh session numbers from 1 again (PROTOCOL.md 4).
        if (!w.recovered)
            this.lastSeq = w.seq;
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
    answer(id, error, payload) {
        const i = this.outbox.findIndex((o) => o.id === id);
        // Not found: a second reply to a message sent twice, or one withdrawn; already settled.
        if (i < 0)
            return;
        const out = this.remove(i);
        if (out.request)
            settle(out.request, error, payload);
        else if (error)
            this.emit("error", error);
    }
    // ---- sending --------------------------------------------------------------------------------
    key() {
        return `${this.keyPrefix}-${this.nextKey++}`;
    }
    enqueue(data, request, id = this.key()) {
        if (this.closed)
            throw new ClosedError();
        const size = typeof data === "string" ? data.length : data.byteLength;
        const full = this.outbox.length >= this.o.maxQueuedMessages || (this.outbox.length > 0 && this.outboxBytes + size > this.o.maxQueuedBytes);
        if (full)
            throw new QueueFullError();
        const out = { id, data, size, writtenOn: 0, request, resendAt: 0, refusals: 0 };
        this.outbox.push(out);
        this.outboxBytes += size;
        this.emit("queue", this.outbox.length);
        return out;
    }
    remove(i) {
        const [out] = this.outbox.splice(i, 1);
        this.outboxBytes -= out.size;
        this.emit("queue", this.outbox.length);
        return out;
    }
    /**
     * Writes what the client holds, in order: in reliable mode every message not yet written to this
     * connection (after a welcome: a resume or a new session may not have them); in plain mode the queue.
     */
    flush() {
        const link = this.link;
        if (!link?.ready || link.ws.readyState !== OPEN)
            return;
        if (this.o.reliable) {
            for (const out of this.outbox) {
                if (out.writtenOn === link.gen)
                    continue;
                out.writtenOn = link.gen;
                out.resendAt = 0;
                if (!this.write(link, msgFrame(out.id, out.data)))
                    return;
            }
            return;
        }
        if (this.outbox.length === 0)
            return;
        let sent = 0;
        // Stops at a failed write: the connection is gone, and what is left waits for the next one.
        while (sent < this.outbox.length && this.write(link, this.outbox[sent].data)) {
            const out = this.outbox[sent++];
            if (out.request)
                this.awaiting.set(out.id, out.request);
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
    resendLater(link, id) {
        const out = this.outbox.find((o) => o.id === id);
        if (!out)
            return false;
        out.resendAt = Date.now() + backoffDelay(out.refusals++, this.o.backoff);
        this.armResend(link);
        return true;
    }
    armResend(link) {
        const due = Math.min(...this.outbox.map((o) => o.resendAt || Infinity));
        if (due === Infinity)
            return;
        this.timer(link, "resend", Math.max(0, due - Date.now()), () => {
            const now = Date.now();
            for (const out of this.outbox) {
                if (!out.resendAt || out.resendAt > now)
                    continue;
                out.resendAt = 0;
                if (!this.write(link, msgFrame(out.id, out.data)))
                    return;
            }
            this.armResend(link);
        });
    }
    /** `onConnect`'s sends: straight to the connection, before the queue. */
    sendNow(link, data) {
        if (link !== this.link)
            return;
        if (!this.o.reliable) {
            this.write(link, data);
            return;
        }
        const out = this.enqueue(data, undefined);
        out.writtenOn = link.gen;
        this.write(link, msgFrame(out.id, out.data));
    }
    /** Whether the write was accepted; a failed one drops the connection. */
    write(link, data) {
        link.lastSent = Date.now();
        try {
            link.ws.send(data);
            return true;
        }
        catch (e) {
            this.drop(link, `send failed: ${errorText(e)}`);
            return false;
        }
    }
    /** A request's timeout: withdrawn if never written; otherwise its answer, if any, is discarded. */
    expire(out) {
        const pending = out.request;
        if (!pending)
            return;
        out.request = undefined;
        const i = this.outbox.indexOf(out);
        if (i >= 0 && out.writtenOn === 0)
            this.remove(i);
        this.awaiting.delete(out.id);
        pending.reject(new TimeoutError());
    }
    // ---- plumbing -------------------------------------------------------------------------------
    timer(link, name, ms, f) {
        clearTimeout(link.timers.get(name));
        link.timers.set(name, setTimeout(() => {
            link.timers.delete(name);
            if (link === this.link)
                f();
        }, ms));
    }
    clearTimer(link, name) {
        clearTimeout(link.timers.get(name));
        link.timers.delete(name);
    }
    setState(state) {
        if (state === this.currentState)
            return;
        this.currentState = state;
        this.emit("state", state);
    }
    emit(event, ...args) {
        for (const l of this.listeners.get(event) ?? []) {
            try {
                l(...args);
            }
            catch (e) {
                // A listener's bug must not break the connection; report it where the platform reports uncaught errors.
                setTimeout(() => {
                    throw e;
                });
            }
        }
    }
}
function withTimeout(p, ms, message) {
    let timer;
    const expired = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(message)), ms)));
    return Promise.race([p, expired]).finally(() => clearTimeout(timer));
}
function settle(p, error, payload) {
    clearTimeout(p.timer);
    if (error)
        p.reject(error);
    else
        p.resolve(payload);
}
/** The HTTP status of a refused handshake, where the platform tells it (`ws`: "Unexpected server response: 401"). */
function handshakeStatus(ev) {
    const e = ev;
    const text = `${e?.message ?? ""} ${e?.error?.message ?? ""}`;
    const m = /Unexpected server response: (\d{3})/.exec(text);
    return m ? Number(m[1]) : undefined;
}
function appendQuery(url, name, value) {
    const hash = url.indexOf("#");
    const base = hash >= 0 ? url.slice(0, hash) : url;
    return `${base}${base.includes("?") ? "&" : "?"}${encodeURIComponent(name)}=${encodeURIComponent(value)}`;
}
function safeJson(text) {
    try {
        return JSON.parse(text);
    }
    catch {
        return undefined;
    }
}
function errorText(e) {
    return e instanceof Error ? e.message : String(e);
}
function randomPrefix() {
    const bytes = new Uint8Array(9);
    globalThis.crypto.getRandomValues(bytes);
    return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_");
}
function isBrowser() {
    return typeof globalThis.window !== "undefined" && typeof globalThis.document !== "undefined";
}
function isNode() {
    return typeof globalThis.process?.versions?.node === "string";
}
