/**
 * The presence notifications of connection-host's groups extension (`[extensions.groups] presence =
 * "frames"`): each join and leave of a group, sent to the group's other members as one text message.
 */

import type { Payload } from "./frames.js";

/** A member joined or left a group (a leave also when its connection ended). */
export interface Presence {
  /** The group. */
  group: string;
  /** `join` or `leave`. */
  action: "join" | "leave";
  /** The member's connection ID. */
  connectionId: string;
  /** The member's authorizer `principalId`; `""` when the API has no authorizer. */
  principal: string;
  /** When it happened, epoch milliseconds. */
  at: number;
}

/** The host writes the keys in this order; nothing else starts with them. */
const PREFIX = '{"type":"presence",';
const KEYS = "type,group,action,connectionId,principal,at";

/**
 * The presence notification `data` is, or `undefined` for any other message: only a text message that
 * is exactly the host's JSON object (its six keys in the host's order, each of its type) is one, so an
 * application's own messages that resemble it pass untouched.
 */
export function parsePresence(data: Payload): Presence | undefined {
  if (typeof data !== "string" || !data.startsWith(PREFIX)) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(data);
  } catch {
    return undefined;
  }
  if (v === null || typeof v !== "object" || Object.keys(v).join() !== KEYS) return undefined;
  const o = v as Record<string, unknown>;
  const ok =
    typeof o.group === "string" &&
    (o.action === "join" || o.action === "leave") &&
    typeof o.connectionId === "string" &&
    typeof o.principal === "string" &&
    typeof o.at === "number" &&
    Number.isSafeInteger(o.at) &&
    o.at >= 0;
  if (!ok) return undefined;
  return { group: o.group as string, action: o.action as Presence["action"], connectionId: o.connectionId as string, principal: o.principal as string, at: o.at as number };
}
