/** The `ch-reliable.v1` frames (connection-host's PROTOCOL.md, section 2) and the sequence rule (section 5). */

/** The subprotocol name offered for reliable delivery. */
export const RELIABLE = "ch-reliable.v1";

/** The subprotocol entry that asks to resume a session. */
export function resumeEntry(lastSeq: number, token: string): string {
  return `ch-resume.${lastSeq}.${token}`;
}

/** The fields of `welcome` the client uses. */
export interface Welcome {
  connectionId: string;
  resumeToken: string;
  recovered: boolean;
  seq: number;
  protocol: string | null;
  reason?: string;
}

/** A message payload: text, or bytes. */
export type Payload = string | Uint8Array;

/** A parsed frame from the host; unknown types (and `pong`) are `other`, which the client ignores. */
export type HostFrame =
  | { t: "welcome"; welcome: Welcome }
  | { t: "msg"; s: number; payload: Payload | undefined }
  | { t: "reply"; s: number; id: string; payload: Payload | undefined; error?: { message: string; requestId?: string } }
  | { t: "error"; code: string; message: string; id?: string }
  | { t: "other" };

/** Parses one frame; `undefined` when it is not a ch-reliable.v1 frame at all. */
export function parseHostFrame(text: string): HostFrame | undefined {
  let f: unknown;
  try {
    f = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (f === null || typeof f !== "object" || typeof (f as { t?: unknown }).t !== "string") return undefined;
  const o = f as Record<string, unknown>;
  const num = (v: unknown) => (typeof v === "number" && Number.isSafeInteger(v) && v >= 0 ? v : undefined);
  switch (o.t) {
    case "welcome": {
      if (typeof o.connectionId !== "string" || typeof o.resumeToken !== "string") return undefined;
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
      if (s === undefined || typeof o.id !== "string") return undefined;
      const e = o.error as Record<string, unknown> | undefined;
      const error =
        e && typeof e === "object"
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

function payload(o: Record<string, unknown>): Payload | undefined {
  if (typeof o.d === "string") return o.d;
  if (typeof o.b === "string") return fromBase64(o.b);
  return undefined;
}

/** The `msg` frame for an outgoing message. */
export function msgFrame(id: string, data: Payload): string {
  return typeof data === "string" ? JSON.stringify({ t: "msg", id, d: data }) : JSON.stringify({ t: "msg", id, b: toBase64(data) });
}

/** The cumulative acknowledgement frame. */
export function ackFrame(s: number): string {
  return `{"t":"ack","s":${s}}`;
}

/** The keepalive frame of reliable mode. */
export const PING_FRAME = '{"t":"ping"}';

/** Where a sequenced frame stands relative to the last one delivered in order. */
export type Order = "next" | "replay" | "gap";

/** `next`: deliver it; `replay`: already delivered, acknowledge only; `gap`: frames are missing, resume. */
export function order(last: number, s: number): Order {
  if (s <= last) return "replay";
  return s === last + 1 ? "next" : "gap";
}

/** Whether a resume token can travel as a subprotocol name (RFC 9110 token characters). */
export function isProtocolToken(s: string): boolean {
  return /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/.test(s);
}

function toBase64(bytes: Uint8Array): string {
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

function fromBase64(b: string): Uint8Array {
  const bin = atob(b);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
