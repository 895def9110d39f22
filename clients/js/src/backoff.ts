/**
 * Reconnect delays: exponential backoff with full jitter applied after the
 * cap, `delay = random(0, min(cap, base * 2^attempt))`. The jitter spreads
 * the whole range, also once the cap is reached, so clients that lost the
 * same server do not come back in step.
 */

/** Backoff parameters, in milliseconds. */
export interface BackoffOptions {
  /** Ceiling of the first delay (default 500 ms). */
  base?: number;
  /** Largest ceiling (default 30 s). */
  cap?: number;
}

/** Default first ceiling. */
export const BACKOFF_BASE_MS = 500;
/** Default largest ceiling. */
export const BACKOFF_CAP_MS = 30_000;

/** The ceiling of attempt `attempt` (0-based): `min(cap, base * 2^attempt)`. */
export function backoffCeiling(attempt: number, base = BACKOFF_BASE_MS, cap = BACKOFF_CAP_MS): number {
  // 2^attempt overflows to Infinity for large attempts; min() keeps it at cap.
  const exp = base * Math.pow(2, Math.max(0, Math.min(attempt, 1024)));
  return Math.min(cap, exp);
}

/** One delay for attempt `attempt`: uniform in `[0, ceiling)`; `random` returns `[0, 1)`. */
export function backoffDelay(
  attempt: number,
  base = BACKOFF_BASE_MS,
  cap = BACKOFF_CAP_MS,
  random: () => number = Math.random,
): number {
  return Math.floor(random() * backoffCeiling(attempt, base, cap));
}

/** Attempts counted since the last stable connection. */
export class Backoff {
  /** Attempts made since the last {@link Backoff.reset}. */
  attempt = 0;
  private readonly base: number;
  private readonly cap: number;

  constructor(options: BackoffOptions = {}, private readonly random: () => number = Math.random) {
    this.base = Math.max(0, options.base ?? BACKOFF_BASE_MS);
    this.cap = Math.max(0, options.cap ?? BACKOFF_CAP_MS);
  }

  /** The delay before the next attempt; counts the attempt. */
  next(): number {
    const d = backoffDelay(this.attempt, this.base, this.cap, this.random);
    this.attempt += 1;
    return d;
  }

  /** Called once a connection proved stable: the next delay starts from `base` again. */
  reset(): void {
    this.attempt = 0;
  }
}
