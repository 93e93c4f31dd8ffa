/**
 * connection-host-client: a WebSocket client for connection-host and API Gateway WebSocket APIs, for
 * browsers and Node ≥ 20. See README.md.
 */
export { Client } from "./client.js";
export { parsePresence } from "./presence.js";
export { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
export { ClientError, ClosedError, ProtocolError, QueueFullError, ReliableNotSupportedError, ReplyError, TimeoutError, UnauthorizedError, } from "./errors.js";
