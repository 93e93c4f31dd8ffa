/** The errors the client raises or reports. */
/** The base class of every error of this library; `code` tells them apart without `instanceof`. */
export class ClientError extends Error {
    /** A stable identifier: `Unauthorized`, `ReliableNotSupported`, `Closed`, `QueueFull`, `Timeout`, `Reply`, `Protocol`, `Connect`, `Token`. */
    code;
    constructor(code, message) {
        super(message);
        this.name = "ClientError";
        this.code = code;
    }
}
/**
 * The handshake or the host refused the client's credentials. Terminal: the client does not reconnect,
 * since the same credentials would be refused again.
 */
export class UnauthorizedError extends ClientError {
    /** The HTTP status of the refused handshake (401, 403) when the platform shows it, or the close code. */
    status;
    constructor(message, status) {
        super("Unauthorized", message);
        this.status = status;
    }
}
/** Reliable delivery was asked for, but the host did not select `ch-reliable.v1`. Terminal. */
export class ReliableNotSupportedError extends ClientError {
    constructor() {
        super("ReliableNotSupported", "the host did not accept the ch-reliable.v1 subprotocol");
    }
}
/** The client was closed before the call completed. */
export class ClosedError extends ClientError {
    constructor() {
        super("Closed", "the client is closed");
    }
}
/** The outgoing queue is at its bound; the message was not accepted and nothing queued was dropped. */
export class QueueFullError extends ClientError {
    constructor() {
        super("QueueFull", "the outgoing queue is full");
    }
}
/** No reply arrived within the request timeout. */
export class TimeoutError extends ClientError {
    constructor() {
        super("Timeout", "no reply within the request timeout");
    }
}
/** The host answered a message with an error `reply` (`Forbidden`, `Internal server error`, …). */
export class ReplyError extends ClientError {
    /** The message's idempotency key. */
    id;
    /** The host's request ID of the failed invocation, when it gave one. */
    requestId;
    constructor(id, message, requestId) {
        super("Reply", message);
        this.id = id;
        this.requestId = requestId;
    }
}
/** The host refused a frame (an `error` frame of ch-reliable.v1: `BadFrame`, `BadKey`, …). */
export class ProtocolError extends ClientError {
    /** The host's error code. */
    hostCode;
    constructor(hostCode, message) {
        super("Protocol", `${hostCode}: ${message}`);
        this.hostCode = hostCode;
    }
}
