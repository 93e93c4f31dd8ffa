/** Reconnect delays. */
/** The defaults of {@link BackoffOptions}. */
export const DEFAULT_BACKOFF = { baseDelay: 1000, maxDelay: 30_000, jitter: 1000 };
/**
 * The delay before reconnect attempt `attempt` (0 for the first retry):
 * `min(maxDelay, baseDelay · 2^attempt + random(0, jitter))`.
 *
 * `random` returns a number in `[0, 1)` (`Math.random` by default); passing one makes the result exact.
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
    const { baseDelay, maxDelay, jitter } = { ...DEFAULT_BACKOFF, ...options };
    // 2 ** 1100 is Infinity, and Math.min keeps a long outage at maxDelay instead of overflowing.
    const exp = baseDelay * 2 ** Math.max(0, attempt);
    return Math.min(maxDelay, exp + random() * jitter);
}
