/** The `ch-reliable.v1` frames (connection-host's PROTOCOL.md, section 2) and the sequence rule (section 5). */
/** The subprotocol name offered for reliable delivery. */
export const RELIABLE = "ch-reliable.v1";
/** The subprotocol entry that asks to resume a session. */
export function resumeEntry(lastSeq, token) {
    return `ch-resume.${lastSeq}.${token}`;
}
/** Parses one frame; `undefined` when it is not a ch-reliable.v1 frame at all. */
export function parseHostFrame(text) {
    let f;
    try {
        f = JSON.parse(text);
    }
    catch {
        return undefined;
    }
    if (f === null || typeof f !== "object" || typeof f.t !== "string")
        return undefined;
    const o = f;
    const num = (v) => (typeof v === "number" && Number.isSafeInteger(v) && v >= 0 ? v : undefined);
    switch (o.t) {
        case "welcome": {
            if (typeof o.connectionId !== "string" || typeof o.resumeToken !== "string")
                return undefined;
            return {
                t: "welcome",
                welcome: {
                    connectionId: o.connectionId,
                    resumeToken: o.resumeToken,
                    recovered: o.recovered === true,
                    seq: num(o.seq) ?? 0,
                    protocol: typeof o.protocol === "string" ? o.protocol : null,
                    ...(typeof o.reason === "string" ? { reason: o.reason } : {}),
                },
            };
        }
        case "msg": {
            const s = num(o.s);
            return s === undefined ? undefined : { t: "msg", s, payload: payload(o) };
        }
        case "reply": {
            const s = num(o.s);
            if (s === undefined || typeof o.id !== "string")
                return undefined;
            const e = o.error;
            const error = e && typeof e === "object"
                ? { message: String(e.message ?? ""), ...(typeof e.requestId === "string" ? { requestId: e.requestId } : {}) }
                : undefined;
            return { t: "reply", s, id: o.id, payload: payload(o), ...(error ? { error } : {}) };
        }
        case "error":
            return {
                t: "error",
                code: String(o.code ?? ""),
                message: String(o.message ?? ""),
                ...(typeof o.id === "string" ? { id: o.id } : {}),
            };
        default:
            return { t: "other" };
    }
}
function payload(o) {
    if (typeof o.d === "string")
        return o.d;
    if (typeof o.b === "string")
        return fromBase64(o.b);
    return undefined;
}
/** The `msg` frame for an outgoing message. */
export function msgFrame(id, data) {
    return typeof data === "string" ? JSON.stringify({ t: "msg", id, d: data }) : JSON.stringify({ t: "msg", id, b: toBase64(data) });
}
/** The cumulative acknowledgement frame. */
export function ackFrame(s) {
    return `{"t":"ack","s":${s}}`;
}
/** The keepalive frame of reliable mode. */
export const PING_FRAME = '{"t":"ping"}';
/** `next`: deliver it; `replay`: already delivered, acknowledge only; `gap`: frames are missing, resume. */
export function order(last, s) {
    if (s <= last)
        return "replay";
    return s === last + 1 ? "next" : "gap";
}
/** Whether a resume token can travel as a subprotocol name (RFC 9110 token characters). */
export function isProtocolToken(s) {
    return /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/.test(s);
}
function toBase64(bytes) {
    let bin = "";
    for (let i = 0; i < bytes.length; i += 0x8000)
        bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(bin);
}
function fromBase64(b) {
    const bin = atob(b);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++)
        out[i] = bin.charCodeAt(i);
    return out;
}
