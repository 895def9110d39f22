/**
 * The client: subscriptions, the one cursor, publishes with idempotency
 * keys, the state events, and the loop that connects, falls back and
 * reconnects. Each transport is a {@link Transport}; the decisions
 * (backoff, fallback, token timing, heartbeat) are in their own modules.
 */

import { Backoff, backoffDelay } from "./backoff.js";
import type { BackoffOptions } from "./backoff.js";
import { systemClock } from "./clock.js";
import type { Clock } from "./clock.js";
import { CursorState } from "./cursor.js";
import { TransportMachine } from "./fallback.js";
import type { FallbackOptions, TransportName } from "./fallback.js";
import { httpHistory, httpPresence, httpPublish, retryable } from "./http.js";
import type { HistoryPage } from "./http.js";
import { PollTransport } from "./poll.js";
import { SseTransport, probeSse } from "./ssestream.js";
import { TokenManager } from "./token.js";
import type { TokenSource } from "./token.js";
import { RtgateError } from "./types.js";
import type { Ended, Ephemeral, Gap, Message, PresenceEntry, PresenceSnapshot, StreamTopic, Transport, TransportHost } from "./types.js";
import { ConnectionLost, WsTransport, probeWs } from "./ws.js";
import type { WebSocketCtor } from "./ws.js";

/** A `Storage`-like place for the cursor (e.g. `sessionStorage`). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** Options of {@link Rtgate}. */
export interface RtgateOptions {
  /** A token, or a function returning a fresh one (asked again before `exp`). */
  token?: TokenSource;
  /** Transports in order of preference (default `["ws", "sse", "poll"]`). */
  transports?: TransportName[];
  /** A WebSocket constructor (default: the global one; Node 20 has none). */
  WebSocket?: WebSocketCtor;
  /** A `fetch` (default: the global one). */
  fetch?: typeof fetch;
  /** Keeps the cursor and the working transport across page reloads. */
  storage?: StorageLike;
  /** Reconnect backoff (default 500 ms base, 30 s cap). */
  backoff?: BackoffOptions;
  /** Silence after which a connection is dead (ms, default 40 s). */
  heartbeatTimeout?: number;
  /** A WebSocket not open within this is a failed attempt (ms, default 10 s). */
  connectTimeout?: number;
  /** An SSE stream that delivers nothing within this is blocked (ms, default 8 s). */
  sseTimeout?: number;
  /** Seconds the server may hold a long poll (default 25). */
  pollTimeout?: number;
  /** Connected this long, the backoff starts over (ms, default 10 s). */
  stableAfter?: number;
  /** Background probing of a better transport. */
  fallback?: FallbackOptions;
  /** Largest `data` accepted, in bytes of JSON (default 65536, as the server's default). */
  maxMessageBytes?: number;
  /** Publishes waiting for an answer at most (default 1000); more are refused with `queue_full`. */
  maxPending?: number;
  /** Connect at construction (default true). */
  autoConnect?: boolean;
  /** Clock and randomness, for tests. */
  clock?: Clock;
  random?: () => number;
}

/** Callbacks of one subscription. */
export interface SubscribeOptions {
  onMessage?(m: Message): void;
  onGap?(g: Gap): void;
  /** Also receive join/leave events (the topic must have presence on). */
  presence?: boolean;
  onJoin?(e: PresenceEntry): void;
  onLeave?(e: PresenceEntry): void;
  onEphemeral?(e: Ephemeral): void;
  /** The server refused the subscription (`forbidden`, `bad_topic`); it is dropped. */
  onError?(err: RtgateError): void;
}

/** Options of one publish. */
export interface PublishOptions {
  /** Delivery key (`latest` topics keep the newest message per key). */
  key?: string;
  /** Deliver to current subscribers only; never stored, no id. */
  ephemeral?: boolean;
  /** Idempotency key (default: generated). Pass your own to make your own retries safe. */
  idempotencyKey?: string;
}

/** A connection state change. */
export type StateEvent =
  | { state: "connecting"; transport: TransportName }
  | { state: "connected"; transport: TransportName }
  | { state: "disconnected"; transport?: TransportName; reason: string }
  | { state: "closed"; reason: string };

/** The events of {@link Rtgate.on}. */
export type RtgateEvents = { state: StateEvent; error: RtgateError };
type Events = RtgateEvents;

interface PendingPublish {
  topic: string;
  data: unknown;
  opts: PublishOptions;
  idempotencyKey: string;
  inFlight: boolean;
  attempt: number;
  size: number;
  resolve(id: string | undefined): void;
  reject(err: unknown): void;
}

const TOPIC = /^[A-Za-z0-9_.:@-]{1,128}$/;
let keyCounter = 0;

/** A fresh idempotency key. */
export function newIdempotencyKey(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  keyCounter += 1;
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${keyCounter}`;
}

/** Splits a gateway URL into its HTTP and WebSocket bases. */
export function bases(url: string): { http: string; ws: string } {
  const loc = (globalThis as { location?: { href: string } }).location;
  const u = new URL(url, loc?.href);
  const path = u.pathname.replace(/\/+$/, "");
  const secure = u.protocol === "https:" || u.protocol === "wss:";
  return { http: `${secure ? "https" : "http"}://${u.host}${path}`, ws: `${secure ? "wss" : "ws"}://${u.host}${path}` };
}

/** The rtgate client. */
export class Rtgate {
  private readonly subs = new Map<string, Set<SubscribeOptions>>();
  private readonly position = new CursorState();
  private readonly machine: TransportMachine;
  private readonly backoff: Backoff;
  private readonly tokens: TokenManager;
  private readonly clock: Clock;
  private readonly host: TransportHost;
  private readonly listeners: { [K in keyof Events]: Set<(e: Events[K]) => void> } = { state: new Set(), error: new Set() };
  private readonly publishes: PendingPublish[] = [];
  private readonly storageKey: string;
  private transport: Transport | undefined;
  private retryTimer: unknown;
  private stableTimer: unknown;
  private probeTimer: unknown;
  private probing = false;
  private closed = false;
  private running = false;
  private opsOnly = false;
  private cursorResets = 0;
  private saveQueued = false;
  /** The transport that last connected (persisted). */
  private remembered: TransportName | undefined;
  private readonly o: Required<Pick<RtgateOptions, "heartbeatTimeout" | "connectTimeout" | "sseTimeout" | "pollTimeout" | "stableAfter" | "maxMessageBytes" | "maxPending">>;

  /**
   * A client of the gateway at `url` (`http(s)://host[:port][/prefix]`, or the
   * `ws(s)://` form; relative to the page in a browser). Connects at once
   * unless `autoConnect` is false.
   */
  constructor(url: string, private readonly options: RtgateOptions = {}) {
    const b = bases(url);
    this.clock = options.clock ?? systemClock;
    this.o = {
      heartbeatTimeout: options.heartbeatTimeout ?? 40_000,
      connectTimeout: options.connectTimeout ?? 10_000,
      sseTimeout: options.sseTimeout ?? 8_000,
      pollTimeout: options.pollTimeout ?? 25,
      stableAfter: options.stableAfter ?? 10_000,
      maxMessageBytes: options.maxMessageBytes ?? 65_536,
      maxPending: options.maxPending ?? 1_000,
    };
    this.storageKey = `rtgate:${b.http}`;
    let order = options.transports ?? ["ws", "sse", "poll"];
    if (!this.wsCtor()) order = order.filter((t) => t !== "ws");
    if (order.length === 0) throw new RtgateError("no_transport", "rtgate: no usable transport (no WebSocket: pass one, or allow sse/poll)");
    const saved = this.load();
    this.position.load(saved.position);
    this.machine = new TransportMachine(order, options.fallback, saved.transport);
    this.remembered = saved.transport;
    this.backoff = new Backoff(options.backoff, options.random);
    this.tokens = new TokenManager(
      options.token,
      this.clock,
      (t) => this.transport?.refreshed(t),
      (err) => this.emit("error", new RtgateError("token_error", String((err as Error)?.message ?? err))),
    );
    this.host = this.makeHost(b.http, b.ws);
    // Browsers: back online or visible again, the connection is checked (or the wait cut short).
    const g = globalThis as { addEventListener?: (t: string, f: () => void) => void };
    if (typeof g.addEventListener === "function") {
      g.addEventListener("online", this.onWake);
      g.addEventListener("visibilitychange", this.onWake);
    }
    if (options.autoConnect !== false) queueMicrotask(() => this.connect());
  }

  private readonly onWake = (): void => {
    if (this.closed || !this.running) return;
    const doc = (globalThis as { document?: { visibilityState?: string } }).document;
    if (doc?.visibilityState === "hidden") return;
    if (this.transport) return this.transport.wake?.();
    this.clock.clearTimeout(this.retryTimer);
    this.startTransport();
  };

  /** Listens to `state` or `error` events; returns a function that stops listening. */
  on<K extends keyof Events>(event: K, fn: (e: Events[K]) => void): () => void {
    this.listeners[event].add(fn);
    return () => this.listeners[event].delete(fn);
  }

  /** The transport in use, if any. */
  get transportName(): TransportName | undefined {
    return this.transport?.name;
  }

  /** Starts connecting (done at construction unless `autoConnect: false`). */
  connect(): void {
    if (this.closed || this.running) return;
    this.running = true;
    this.startTransport();
  }

  /** Subscribes to `topic`; returns the function that unsubscribes. */
  subscribe(topic: string, opts: SubscribeOptions = {}): () => void {
    if (!TOPIC.test(topic)) throw new RtgateError("bad_topic", `not a topic name: ${JSON.stringify(topic)}`);
    const set = this.subs.get(topic) ?? new Set();
    const before = this.presenceOf(topic);
    const isNew = set.size === 0;
    set.add(opts);
    this.subs.set(topic, set);
    if (isNew || before !== this.presenceOf(topic)) this.transport?.topicsChanged();
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const s = this.subs.get(topic);
      if (!s) return;
      s.delete(opts);
      if (s.size === 0) {
        this.subs.delete(topic);
        this.position.forget(topic);
        this.save();
      }
      this.transport?.topicsChanged();
    };
  }

  /** Publishes `data`; resolves with the message id (undefined for an ephemeral one). */
  publish(topic: string, data: unknown, opts: PublishOptions = {}): Promise<string | undefined> {
    if (this.closed) return Promise.reject(new RtgateError("closed", "the client is closed"));
    if (!TOPIC.test(topic)) return Promise.reject(new RtgateError("bad_topic", `not a topic name: ${JSON.stringify(topic)}`));
    const text = JSON.stringify(data === undefined ? null : data);
    const size = new TextEncoder().encode(text).length;
    if (size > this.o.maxMessageBytes) return Promise.reject(new RtgateError("too_large", `data over ${this.o.maxMessageBytes} bytes`));
    if (this.publishes.length >= this.o.maxPending) return Promise.reject(new RtgateError("queue_full", `${this.o.maxPending} publishes are waiting already`));
    return new Promise((resolve, reject) => {
      const idempotencyKey = opts.idempotencyKey ?? newIdempotencyKey();
      this.publishes.push({ topic, data, opts, idempotencyKey, inFlight: false, attempt: 0, size, resolve, reject });
      if (!this.running) this.connect();
      this.pump();
    });
  }

  /** Who is on `topic` (over the WebSocket when open, else HTTP). */
  async presence(topic: string): Promise<PresenceSnapshot> {
    const t = this.transport;
    if (t instanceof WsTransport && t.open) {
      try {
        const ack = await t.request({ op: "presence", topic });
        const { op: _op, ref: _ref, ...rest } = ack;
        return rest as unknown as PresenceSnapshot;
      } catch (err) {
        if (!(err instanceof ConnectionLost)) throw err;
      }
    }
    const token = await this.tokens.get();
    return httpPresence(this.fetchFn(), this.host.httpBase, token, topic, () => this.clock.now());
  }

  /** A page of `topic`'s history (e.g. to fill a `dropped` gap): after `after`, or the newest `limit`. */
  async history(topic: string, opts: { after?: string; limit?: number } = {}): Promise<HistoryPage> {
    const token = await this.tokens.get();
    return httpHistory(this.fetchFn(), this.host.httpBase, token, topic, opts, () => this.clock.now());
  }

  /** Closes the connection for good; pending publishes are rejected. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.running = false;
    this.transport?.stop();
    this.transport = undefined;
    for (const t of [this.retryTimer, this.stableTimer, this.probeTimer]) this.clock.clearTimeout(t);
    this.tokens.stop();
    const g = globalThis as { removeEventListener?: (t: string, f: () => void) => void };
    if (typeof g.removeEventListener === "function") {
      g.removeEventListener("online", this.onWake);
      g.removeEventListener("visibilitychange", this.onWake);
    }
    this.flushSave();
    for (const p of this.publishes.splice(0)) p.reject(new RtgateError("closed", "the client was closed"));
    this.emit("state", { state: "closed", reason: "client" });
  }

  // ---- the connection loop ----

  private startTransport(): void {
    if (this.closed || !this.running) return;
    const name = this.machine.current();
    const t = this.makeTransport(name);
    this.transport = t;
    this.emit("state", { state: "connecting", transport: name });
    t.start();
    this.pump();
  }

  private makeTransport(name: TransportName): Transport {
    if (name === "ws") return new WsTransport(this.host, this.wsCtor() as WebSocketCtor, { connectTimeout: this.o.connectTimeout, opsOnly: this.opsOnly });
    if (name === "sse") return new SseTransport(this.host, { firstEventTimeout: this.o.sseTimeout });
    return new PollTransport(this.host, { timeout: this.o.pollTimeout, slack: 10_000 });
  }

  private opened(t: TransportName): void {
    this.machine.connected(t, this.clock.now());
    this.remembered = t;
    this.save();
    this.emit("state", { state: "connected", transport: t });
    this.clock.clearTimeout(this.stableTimer);
    this.stableTimer = this.clock.setTimeout(() => {
      this.backoff.reset();
      this.cursorResets = 0;
    }, this.o.stableAfter);
    this.armProbe();
    this.pump();
  }

  private ended(t: TransportName, e: Ended): void {
    this.transport = undefined;
    this.clock.clearTimeout(this.stableTimer);
    this.clock.clearTimeout(this.probeTimer);
    this.machine.dropped();
    this.emit("state", { state: "disconnected", transport: t, reason: e.reason });
    let delay: number | undefined;
    switch (e.action) {
      case "refresh":
        if (!this.tokens.refreshable) return this.fail(new RtgateError(e.reason, "the server wants a token this client cannot renew (pass `token` as a function)"));
        this.tokens.invalidate();
        break;
      case "reset_cursor":
        // Once without the cursor at once; if the server still refuses, it was not the cursor.
        this.cursorResets += 1;
        if (this.cursorResets > 2) return this.fail(new RtgateError(e.reason, "the server refused the connection request"));
        if (this.cursorResets === 1) delay = 0;
        this.position.dropCursor();
        this.save();
        break;
      case "forbidden":
        if (t === "ws" && !this.opsOnly && this.subs.size > 1) {
          // Find the refused topic(s): subscribe one by one, each refused alone.
          this.opsOnly = true;
          delay = 0;
          break;
        }
        return this.fail(new RtgateError("forbidden", "the credential does not allow this subscription"));
      case "fatal":
        return this.fail(new RtgateError(e.reason, "the server refused the stream"));
      case "too_large": {
        const big = this.publishes.filter((p) => p.inFlight).sort((a, b) => b.size - a.size)[0];
        if (big) this.settle(big, undefined, new RtgateError("too_large", "the server refused the message as too large"));
        break;
      }
      default:
        break;
    }
    if (e.failure) {
      const next = this.machine.failed(t, e.failure);
      if (next !== t && this.machine.order.indexOf(next) > this.machine.order.indexOf(t)) delay = 0; // fall back at once
    }
    if (e.retryMs !== undefined) delay = e.retryMs;
    const wait = delay ?? this.backoff.next();
    this.clock.clearTimeout(this.retryTimer);
    this.retryTimer = this.clock.setTimeout(() => this.startTransport(), wait);
    this.pump();
  }

  /** Stops reconnecting (the `disconnected` state was emitted): `connect()` or a publish starts again. */
  private fail(err: RtgateError): void {
    this.running = false;
    this.emit("error", err);
    for (const p of this.publishes.splice(0)) p.reject(err);
  }

  private armProbe(): void {
    this.clock.clearTimeout(this.probeTimer);
    const at = this.machine.probeAt();
    if (at === undefined) return;
    this.probeTimer = this.clock.setTimeout(() => void this.probe(), Math.max(0, at - this.clock.now()));
  }

  /** Tries the better transport in the background; switches to it when it works. */
  private async probe(): Promise<void> {
    const better = this.machine.probeDue(this.clock.now());
    if (!better || this.probing || this.closed) return this.armProbe();
    this.probing = true;
    let ok = false;
    try {
      const token = await this.tokens.get();
      if (better === "ws") ok = await probeWs(this.host, this.wsCtor() as WebSocketCtor, token, this.o.connectTimeout);
      else if (better === "sse") ok = await probeSse(this.host, token, this.o.sseTimeout);
    } catch {
      ok = false;
    }
    this.probing = false;
    if (this.closed || !this.running) return;
    const before = this.transport?.name;
    const now = this.machine.probed(better, ok, this.clock.now());
    if (ok && now !== before && this.transport) {
      this.transport.stop();
      this.transport = undefined;
      this.emit("state", { state: "disconnected", transport: before, reason: "upgrade" });
      this.startTransport();
    } else this.armProbe();
  }

  // ---- publishes ----

  /** Sends what can be sent now: over an open WebSocket, or over HTTP for the other transports. */
  private pump(): void {
    const t = this.transport;
    for (const p of this.publishes) {
      if (p.inFlight) continue;
      if (t instanceof WsTransport) {
        if (!t.open) continue;
        p.inFlight = true;
        const frame: Record<string, unknown> = { op: "publish", topic: p.topic, data: p.data ?? null, idempotency_key: p.idempotencyKey };
        if (p.opts.key !== undefined) frame.key = p.opts.key;
        if (p.opts.ephemeral) frame.ephemeral = true;
        t.request(frame).then(
          (ack) => this.settle(p, typeof ack.id === "string" ? ack.id : undefined),
          (err: RtgateError) => this.retryOrFail(p, err),
        );
      } else if (t !== undefined || this.machine.current() !== "ws") {
        p.inFlight = true;
        this.tokens
          .get()
          .then((token) => httpPublish(this.fetchFn(), this.host.httpBase, token, { topic: p.topic, data: p.data, idempotencyKey: p.idempotencyKey, key: p.opts.key, ephemeral: p.opts.ephemeral }, () => this.clock.now()))
          .then(
            (id) => this.settle(p, id),
            (err: RtgateError) => this.retryOrFail(p, err),
          );
      }
    }
  }

  private retryOrFail(p: PendingPublish, err: RtgateError): void {
    if (!this.publishes.includes(p)) return;
    // An ephemeral message is only worth its moment: not sent again.
    if (p.opts.ephemeral || !(err instanceof RtgateError) || !retryable(err)) return this.settle(p, undefined, err);
    if (err.status === 401) this.tokens.invalidate();
    p.attempt += 1;
    if (err instanceof ConnectionLost) {
      p.inFlight = false; // sent again, same key, once connected
      return;
    }
    const o = this.options.backoff ?? {};
    const wait = err.retryMs ?? backoffDelay(p.attempt - 1, o.base, o.cap, this.options.random);
    this.clock.setTimeout(() => {
      p.inFlight = false;
      this.pump();
    }, wait);
  }

  private settle(p: PendingPublish, id: string | undefined, err?: unknown): void {
    const i = this.publishes.indexOf(p);
    if (i < 0) return;
    this.publishes.splice(i, 1);
    if (err !== undefined) p.reject(err);
    else p.resolve(id);
  }

  // ---- delivery ----

  private makeHost(httpBase: string, wsBase: string): TransportHost {
    const self = this;
    const name = () => self.transport?.name ?? self.machine.current();
    return {
      httpBase,
      wsBase,
      clock: this.clock,
      fetch: ((...args: Parameters<typeof fetch>) => self.fetchFn()(...args)) as typeof fetch,
      heartbeatTimeout: this.o.heartbeatTimeout,
      token: () => self.tokens.get(),
      topics: () => [...self.subs.keys()].map((topic): StreamTopic => ({ topic, presence: self.presenceOf(topic) })),
      plan: (topics) => self.position.plan(topics),
      lastId: (topic) => self.position.ids.get(topic),
      opened: () => self.opened(name()),
      message: (m, cursor, streamTopics) => {
        const subs = self.subs.get(m.topic);
        if (!subs) return;
        if (!self.position.message(m.topic, m.id, cursor, streamTopics)) return;
        self.save();
        for (const s of [...subs]) self.call(() => s.onMessage?.(m));
      },
      gap: (g, cursor, streamTopics) => {
        if (cursor !== undefined) self.position.setCursor(cursor, streamTopics);
        self.position.gap(g.topic, typeof g.oldest === "string" ? g.oldest : undefined);
        self.save();
        for (const s of [...(self.subs.get(g.topic) ?? [])]) self.call(() => s.onGap?.(g));
      },
      cursor: (cursor, streamTopics) => {
        self.position.setCursor(cursor, streamTopics);
        self.save();
      },
      ephemeral: (e) => {
        for (const s of [...(self.subs.get(e.topic) ?? [])]) self.call(() => s.onEphemeral?.(e));
      },
      presence: (kind, ev) => {
        const topic = String(ev.topic);
        const entry = (x: Record<string, unknown>): PresenceEntry => ({ ...x, topic } as PresenceEntry);
        const joins = kind === "join" ? [entry(ev)] : kind === "presence_diff" ? ((ev.joins as Record<string, unknown>[]) ?? []).map(entry) : [];
        const leaves = kind === "leave" ? [entry(ev)] : kind === "presence_diff" ? ((ev.leaves as Record<string, unknown>[]) ?? []).map(entry) : [];
        for (const s of [...(self.subs.get(topic) ?? [])]) {
          if (!s.presence) continue;
          for (const j of joins) self.call(() => s.onJoin?.(j));
          for (const l of leaves) self.call(() => s.onLeave?.(l));
        }
      },
      refused: (topic, err) => {
        const subs = self.subs.get(topic);
        self.subs.delete(topic);
        self.position.forget(topic);
        for (const s of [...(subs ?? [])]) self.call(() => s.onError?.(err));
        if (!subs?.size || ![...subs].some((s) => s.onError)) self.emit("error", err);
      },
      error: (err) => self.emit("error", err),
      ended: (e) => self.ended(name(), e),
    };
  }

  private presenceOf(topic: string): boolean {
    return [...(this.subs.get(topic) ?? [])].some((s) => s.presence === true);
  }

  private call(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.emit("error", new RtgateError("handler_error", String((err as Error)?.message ?? err)));
    }
  }

  private emit<K extends keyof Events>(event: K, e: Events[K]): void {
    for (const fn of [...this.listeners[event]]) {
      try {
        fn(e);
      } catch {
        // a listener's failure is its own
      }
    }
  }

  private wsCtor(): WebSocketCtor | undefined {
    return this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
  }

  private fetchFn(): typeof fetch {
    const f = this.options.fetch ?? globalThis.fetch;
    if (!f) throw new RtgateError("no_fetch", "rtgate: no fetch available");
    return f;
  }

  // ---- persistence ----

  private load(): { position?: unknown; transport?: TransportName } {
    try {
      const raw = this.options.storage?.getItem(this.storageKey);
      return raw ? (JSON.parse(raw) as { position?: unknown; transport?: TransportName }) : {};
    } catch {
      return {};
    }
  }

  /** Saves once per turn of the event loop, however many messages came in it. */
  private save(): void {
    if (!this.options.storage || this.saveQueued) return;
    this.saveQueued = true;
    queueMicrotask(() => this.flushSave());
  }

  private flushSave(): void {
    this.saveQueued = false;
    try {
      this.options.storage?.setItem(this.storageKey, JSON.stringify({ position: this.position.save(), transport: this.remembered }));
    } catch {
      // storage full or forbidden: resuming after a reload is best effort
    }
  }
}
