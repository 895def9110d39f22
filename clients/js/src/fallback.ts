/**
 * Which transport to use: WebSocket, then SSE (+ HTTP publish), then long
 * polling (+ HTTP publish).
 *
 * A failure is classified by what it shows:
 * - `blocked`: the transport itself is stopped on the way (an SSE stream
 *   that delivers nothing within its timeout, a route answering 404, a
 *   response that is not an event stream): fall back at once.
 * - `ambiguous`: it failed before opening and the cause is unknown (a
 *   browser tells nothing about a refused WebSocket upgrade): fall back to
 *   try the next one, tentatively.
 * - `unreachable`: the server itself did not answer (network error, 5xx):
 *   no transport is to blame. A tentative fallback is undone (the better
 *   transport is tried again), so a server restart does not leave clients
 *   on long polling.
 * A transport that connects confirms the ones above it that failed as
 * blocked, remembers itself as the one that works, and after a while the
 * client probes the better one in the background (`probeDue`); a probe that
 * fails waits twice as long before the next.
 */

/** A transport's name. */
export type TransportName = "ws" | "sse" | "poll";

/** Why a connection attempt failed (see the module notes). */
export type FailureKind = "blocked" | "ambiguous" | "unreachable";

/** Tuning of {@link TransportMachine}. */
export interface FallbackOptions {
  /** First probe of a better transport, this long after connecting on a worse one (ms, default 60 s). */
  probeAfter?: number;
  /** Longest wait between probes (ms, default 30 min). */
  probeCap?: number;
}

/** The fallback state machine (pure: time is passed in). */
export class TransportMachine {
  /** Transports in order of preference. */
  readonly order: TransportName[];
  private index = 0;
  /** Transports that failed as blocked or ambiguous and are not yet confirmed. */
  private readonly suspect = new Set<TransportName>();
  /** Transports confirmed not to work here (a worse one connected after they failed). */
  private readonly blocked = new Set<TransportName>();
  private connectedAt: number | undefined;
  private probeWait: number;
  private nextProbe: number | undefined;
  private readonly probeAfter: number;
  private readonly probeCap: number;

  constructor(order: TransportName[], options: FallbackOptions = {}, remembered?: TransportName) {
    if (order.length === 0) throw new Error("rtgate: no transport to use");
    this.order = [...order];
    this.probeAfter = options.probeAfter ?? 60_000;
    this.probeCap = options.probeCap ?? 30 * 60_000;
    this.probeWait = this.probeAfter;
    const i = remembered === undefined ? -1 : this.order.indexOf(remembered);
    if (i > 0) {
      // What worked last time; the better ones are probed later.
      this.index = i;
      for (const t of this.order.slice(0, i)) this.blocked.add(t);
    }
  }

  /** The transport to connect with now. */
  current(): TransportName {
    return this.order[this.index];
  }

  /** Whether `t` is confirmed not to work here. */
  isBlocked(t: TransportName): boolean {
    return this.blocked.has(t);
  }

  /** An attempt on `t` failed before it connected; returns the transport to try next. */
  failed(t: TransportName, kind: FailureKind): TransportName {
    this.connectedAt = undefined;
    if (t !== this.current()) return this.current();
    if (kind === "unreachable") {
      // Nothing answers: undo tentative fallbacks, try the best unconfirmed one again.
      const first = this.order.findIndex((x) => !this.blocked.has(x));
      this.suspect.clear();
      this.index = first < 0 ? this.index : first;
      return this.current();
    }
    this.suspect.add(t);
    if (this.index < this.order.length - 1) this.index += 1;
    else if (kind === "ambiguous") {
      // The last one failed too: nothing is proven blocked; start over from the best.
      const first = this.order.findIndex((x) => !this.blocked.has(x));
      this.suspect.clear();
      this.index = first < 0 ? 0 : first;
    }
    return this.current();
  }

  /** `t` connected at `now`: it is remembered; suspects above it are confirmed. */
  connected(t: TransportName, now: number): void {
    const i = this.order.indexOf(t);
    if (i < 0) return;
    for (const s of this.order.slice(0, i)) if (this.suspect.has(s)) this.blocked.add(s);
    this.suspect.clear();
    this.index = i;
    this.connectedAt = now;
    if (this.nextProbe === undefined && i > 0) this.nextProbe = now + this.probeWait;
  }

  /** A connected stream ended (it may reconnect on the same transport). */
  dropped(): void {
    this.connectedAt = undefined;
  }

  /** The transport working now, if connected (for {@link TransportMachine.remember}). */
  working(): TransportName | undefined {
    return this.connectedAt === undefined ? undefined : this.current();
  }

  /** When the next probe is due (ms since the epoch), if any. */
  probeAt(): number | undefined {
    return this.index > 0 && this.connectedAt !== undefined ? this.nextProbe : undefined;
  }

  /** The better transport to probe at `now`, if one is due. */
  probeDue(now: number): TransportName | undefined {
    const at = this.probeAt();
    if (at === undefined || now < at) return undefined;
    return this.order[this.index - 1];
  }

  /** The probe of `t` ended at `now`: on success switch to it, else wait longer. */
  probed(t: TransportName, ok: boolean, now: number): TransportName {
    const i = this.order.indexOf(t);
    if (ok && i >= 0 && i < this.index) {
      this.blocked.delete(t);
      this.suspect.clear();
      this.index = i;
      this.connectedAt = undefined;
      this.probeWait = this.probeAfter;
      this.nextProbe = undefined;
    } else {
      this.probeWait = Math.min(this.probeCap, this.probeWait * 2);
      this.nextProbe = now + this.probeWait;
    }
    return this.current();
  }
}
