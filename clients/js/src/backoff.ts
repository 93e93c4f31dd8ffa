/** Reconnect delays. */

/** How long to wait before reconnect attempts. All values in milliseconds. */
export interface BackoffOptions {
  /** The delay of the first retry, before jitter. Default 1000. */
  baseDelay?: number;
  /** The cap on any delay, jitter included. Default 30000. */
  maxDelay?: number;
  /** The upper bound (exclusive) of the random jitter added to each delay. Default 1000; 0 turns it off. */
  jitter?: number;
}

/** The defaults of {@link BackoffOptions}. */
export const DEFAULT_BACKOFF: Required<BackoffOptions> = { baseDelay: 1000, maxDelay: 30_000, jitter: 1000 };

/**
 * The delay before reconnect attempt `attempt` (0 for the first retry):
 * `min(maxDelay, baseDelay · 2^attempt + random(0, jitter))`.
 *
 * `random` returns a number in `[0, 1)` (`Math.random` by default); passing one makes the result exact.
 */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const { baseDelay, maxDelay, jitter } = { ...DEFAULT_BACKOFF, ...options };
  // 2 ** 1100 is Infinity, and Math.min keeps a long outage at maxDelay instead of overflowing.
  const exp = baseDelay * 2 ** Math.max(0, attempt);
  return Math.min(maxDelay, exp + random() * jitter);
}
