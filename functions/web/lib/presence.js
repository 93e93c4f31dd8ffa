/**
 * The presence notifications of connection-host's groups extension (`[extensions.groups] presence =
 * "frames"`): each join and leave of a group, sent to the group's other members as one text message.
 */
/** The host writes the keys in this order; nothing else starts with them. */
const PREFIX = '{"type":"presence",';
const KEYS = "type,group,action,connectionId,principal,at";
/**
 * The presence notification `data` is, or `undefined` for any other message: only a text message that
 * is exactly the host's JSON object (its six keys in the host's order, each of its type) is one, so an
 * application's own messages that resemble it pass untouched.
 */
export function parsePresence(data) {
    if (typeof data !== "string" || !data.startsWith(PREFIX))
        return undefined;
    let v;
    try {
        v = JSON.parse(data);
    }
    catch {
        return undefined;
    }
    if (v === null || typeof v !== "object" || Object.keys(v).join() !== KEYS)
        return undefined;
    const o = v;
    const ok = typeof o.group === "string" &&
        (o.action === "join" || o.action === "leave") &&
        typeof o.connectionId === "string" &&
        typeof o.principal === "string" &&
        typeof o.at === "number" &&
        Number.isSafeInteger(o.at) &&
        o.at >= 0;
    if (!ok)
        return undefined;
    return { group: o.group, action: o.action, connectionId: o.connectionId, principal: o.principal, at: o.at };
}
