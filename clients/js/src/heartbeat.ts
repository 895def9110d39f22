/**
 * Dead-connection detection by wall time. The transport calls
 * {@link Heartbeat.frame} for everything it receives and {@link Heartbeat.tick}
 * from a timer; a connection silent for `timeout` is dead. Browsers throttle
 * timers in background tabs (and a sleeping laptop runs none), so a tick
 * that comes much later than asked proves nothing about the connection: it
 * sends a ping and grants a short grace instead of declaring it dead, and
 * the connection is dead only if nothing arrives within the grace.
 */

/** What the transport should do after a tick. */
export type Beat = "ok" | "ping" | "dead";

/** Timing of a {@link Heartbeat}, in milliseconds. */
export interface HeartbeatTiming {
  /** Silence after which the connection is dead. */
  timeout: number;
  /** Tick period (default timeout / 4). */
  interval?: number;
  /** Silence after which to ping (default timeout / 3). */
  pingAfter?: number;
  /** Grace after a late tick (default min(timeout / 2, 10 s)). */
  grace?: number;
}

/** The liveness of one connection. */
export class Heartbeat {
  /** Tick period the transport should use. */
  readonly interval: number;
  private readonly timeout: number;
  private readonly pingAfter: number;
  private readonly grace: number;
  private lastFrame: number;
  private lastTick: number;
  private pingedAt: number | undefined;
  private graceUntil: number | undefined;

  constructor(timing: HeartbeatTiming, now: number) {
    this.timeout = timing.timeout;
    this.interval = timing.interval ?? Math.max(1, Math.floor(timing.timeout / 4));
    this.pingAfter = timing.pingAfter ?? Math.floor(timing.timeout / 3);
    this.grace = timing.grace ?? Math.min(timing.timeout / 2, 10_000);
    this.lastFrame = now;
    this.lastTick = now;
  }

  /** Something arrived at `now`. */
  frame(now: number): void {
    this.lastFrame = now;
    this.pingedAt = undefined;
    this.graceUntil = undefined;
  }

  /**
   * The connection is in doubt at `now` (the network changed, the tab came
   * back): the transport pings, and it is dead unless something arrives
   * within the grace. Returns the grace, for the transport's next tick.
   */
  suspect(now: number): number {
    this.graceUntil = now + this.grace;
    this.pingedAt = now;
    return this.grace;
  }

  /** The timer fired at `now`. */
  tick(now: number): Beat {
    const late = now - this.lastTick > 2 * this.interval;
    this.lastTick = now;
    if (late && now - this.lastFrame >= this.pingAfter) {
      // Throttled or asleep: ask, and judge only by what the grace brings.
      this.graceUntil = now + this.grace;
      this.pingedAt = now;
      return "ping";
    }
    if (this.graceUntil !== undefined) return now >= this.graceUntil ? "dead" : "ok";
    const idle = now - this.lastFrame;
    if (idle >= this.timeout) return "dead";
    if (idle >= this.pingAfter && (this.pingedAt === undefined || now - this.pingedAt >= this.pingAfter)) {
      this.pingedAt = now;
      return "ping";
    }
    return "ok";
  }
}
