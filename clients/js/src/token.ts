/**
 * Tokens: a fixed string, or a function the client asks again before the
 * token expires. The JWT's `exp` is read without verifying anything (the
 * server verifies); a token without one is never refreshed on a timer, only
 * when the server says it expired. At most one request for a token is in
 * flight: every caller during a refresh waits for the same answer.
 */

import type { Clock } from "./clock.js";

/** The longest delay a timer takes. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A token, or a function that returns a fresh one. */
export type TokenSource = string | (() => string | Promise<string>);

/** The `exp` claim of a JWT in milliseconds, or undefined when it has none or is not a JWT. */
export function jwtExpiry(token: string): number | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "===".slice((b64.length + 3) % 4);
    const json = JSON.parse(decodeBase64(padded)) as { exp?: unknown };
    return typeof json.exp === "number" && Number.isFinite(json.exp) ? json.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

function decodeBase64(s: string): string {
  const bin = atob(s);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

/**
 * How long to wait before asking for a new token that expires at `expMs`:
 * a margin of a tenth of its remaining life, at least `minMargin` (1 s) and
 * at most `maxMargin` (60 s), never negative.
 */
export function refreshDelay(expMs: number, nowMs: number, minMargin = 1_000, maxMargin = 60_000): number {
  const life = expMs - nowMs;
  const margin = Math.min(maxMargin, Math.max(minMargin, life / 10));
  return Math.max(0, Math.floor(life - margin));
}

/** Holds the current token and refreshes it on time. */
export class TokenManager {
  private token: string | undefined;
  private expiry: number | undefined;
  private inflight: Promise<string | undefined> | undefined;
  private timer: unknown;
  /** When the timer asks for the next token (ms since the epoch). */
  private refreshAt: number | undefined;
  private stopped = false;

  /**
   * `onRefreshed` is called with each token obtained by the timer (not for
   * the ones callers asked for), so the transport can present it.
   */
  constructor(
    private readonly source: TokenSource | undefined,
    private readonly clock: Clock,
    private readonly onRefreshed: (token: string) => void = () => {},
    private readonly onError: (err: unknown) => void = () => {},
  ) {
    if (typeof source === "string") {
      this.token = source;
      this.expiry = jwtExpiry(source);
    }
  }

  /** Whether a new token can be asked for (the source is a function). */
  get refreshable(): boolean {
    return typeof this.source === "function";
  }

  /** The current token: cached while valid, else asked for (one request in flight). */
  get(): Promise<string | undefined> {
    if (this.token !== undefined && (this.expiry === undefined || this.expiry > this.clock.now() || !this.refreshable)) {
      return Promise.resolve(this.token);
    }
    return this.fetch();
  }

  /** The server refused the token: the next {@link TokenManager.get} asks again. */
  invalidate(): void {
    if (this.refreshable) this.token = undefined;
  }

  /** Stops the refresh timer. */
  stop(): void {
    this.stopped = true;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Asks the source; concurrent callers share the request. */
  private fetch(): Promise<string | undefined> {
    if (this.inflight) return this.inflight;
    const source = this.source;
    if (typeof source !== "function") return Promise.resolve(this.token);
    const p = (async () => {
      try {
        const token = await source();
        if (typeof token !== "string" || token === "") throw new Error("rtgate: the token function returned no token");
        this.token = token;
        this.expiry = jwtExpiry(token);
        this.schedule();
        return token;
      } finally {
        this.inflight = undefined;
      }
    })();
    this.inflight = p;
    return p;
  }

  /** Arms the timer for the current token's expiry. */
  private schedule(): void {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    if (this.stopped || this.expiry === undefined || !this.refreshable) return;
    // Timers take at most 2^31-1 ms (about 24.8 days; longer fires at once): a
    // longer wait is taken in steps.
    const now = this.clock.now();
    this.refreshAt = now + refreshDelay(this.expiry, now);
    this.arm();
  }

  /** Arms the timer for {@link TokenManager.refreshAt}, in steps a timer can take. */
  private arm(): void {
    const wait = Math.max(0, (this.refreshAt ?? 0) - this.clock.now());
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      if (this.stopped) return;
      if (this.clock.now() < (this.refreshAt ?? 0)) this.arm();
      else this.refreshNow();
    }, Math.min(MAX_TIMER_MS, wait));
  }

  private refreshNow(): void {
    this.timer = undefined;
    if (this.stopped) return;
    // The old token stays in use (it is still valid) until the new one comes.
    this.fetch().then(
      (token) => {
        if (token !== undefined && !this.stopped) this.onRefreshed(token);
      },
      (err) => {
        this.onError(err);
        if (this.stopped) return;
        // Try again soon, before the old token runs out if it still can.
        const left = (this.expiry ?? 0) - this.clock.now();
        const wait = Math.max(500, Math.min(5_000, left / 2));
        this.timer = this.clock.setTimeout(() => this.refreshNow(), wait);
      },
    );
  }
}
