/**
 * The WebSocket transport (contract §4): connects with the covered topics
 * and the cursor in the query, subscribes the others with per-topic
 * `after`, keeps subscriptions in step with ops, and answers requests
 * (publish, presence) by `ref`. Liveness: an `{"op":"ping"}` when the
 * connection has been quiet, and a reconnect once it stays silent past the
 * heartbeat timeout ({@link Heartbeat}).
 */

import { Heartbeat } from "./heartbeat.js";
import { wsClose } from "./hints.js";
import { RtgateError } from "./types.js";
import type { Ephemeral, Gap, Message, Transport, TransportHost } from "./types.js";

/** The part of the WebSocket API the client uses (the browser's, or e.g. the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor. */
export type WebSocketCtor = new (url: string) => WebSocketLike;

/** Thrown to requests whose connection went away before an answer: retry them elsewhere. */
export class ConnectionLost extends RtgateError {
  constructor() {
    super("connection_lost", "the connection closed before the server answered");
  }
}

interface Pending {
  resolve(frame: Record<string, unknown>): void;
  reject(err: RtgateError): void;
  subscribe?: string;
}

/** Wait before subscribing again after `unavailable`/`rate_limited` (ms). */
const RESUBSCRIBE_MS = 2_000;

/** Options of {@link WsTransport}. */
export interface WsOptions {
  /** No open within this (ms): the attempt failed. */
  connectTimeout: number;
  /** Subscribe every topic by op (after a `forbidden` at connect, to find the refused topic). */
  opsOnly: boolean;
}

/** Builds `/v1/ws?...` for the host's resume plan. */
export function wsUrl(host: TransportHost, token: string | undefined, queryTopics: string[], cursor: string | undefined, presence: boolean): string {
  const q = new URLSearchParams();
  for (const t of queryTopics) q.append("topic", t);
  if (cursor !== undefined && queryTopics.length > 0) q.set("cursor", cursor);
  if (presence) q.set("presence", "1");
  if (token !== undefined) q.set("access_token", token);
  const qs = q.toString();
  return `${host.wsBase}/v1/ws${qs ? "?" + qs : ""}`;
}

/** One WebSocket connection. */
export class WsTransport implements Transport {
  readonly name = "ws" as const;
  private ws: WebSocketLike | undefined;
  private stopped = false;
  private done = false;
  private isOpen = false;
  private heard = false;
  private beat: Heartbeat | undefined;
  private beatTimer: unknown;
  private connectTimer: unknown;
  private retryTimer: unknown;
  private nextRef = 1;
  private readonly pending = new Map<number, Pending>();
  /** Topics the server has (query topics, acknowledged subscribes): what a cursor names. */
  private readonly streamTopics = new Set<string>();
  /** Topics subscribed or being subscribed, with their presence flag. */
  private readonly requested = new Map<string, boolean>();

  constructor(
    private readonly host: TransportHost,
    private readonly WS: WebSocketCtor,
    private readonly options: WsOptions,
  ) {}

  /** Whether frames can be sent now. */
  get open(): boolean {
    return this.isOpen && !this.done;
  }

  start(): void {
    this.host.token().then(
      (token) => this.connect(token),
      (err) => this.finish({ reason: "token_error", action: "refresh" }, err),
    );
  }

  private connect(token: string | undefined): void {
    if (this.stopped || this.done) return;
    const topics = this.host.topics();
    const presence = new Map(topics.map((t) => [t.topic, t.presence]));
    const plan = this.host.plan(topics.map((t) => t.topic));
    const query = this.options.opsOnly ? [] : plan.covered;
    const wantPresence = query.some((t) => presence.get(t) === true);
    let ws: WebSocketLike;
    try {
      ws = new this.WS(wsUrl(this.host, token, query, plan.cursor, wantPresence));
    } catch (err) {
      return this.finish({ reason: "ws_unavailable", action: "reconnect", failure: "blocked" }, err);
    }
    this.ws = ws;
    this.connectTimer = this.host.clock.setTimeout(() => {
      if (!this.isOpen) this.finish({ reason: "connect_timeout", action: "reconnect", failure: "ambiguous" });
    }, this.options.connectTimeout);
    ws.onopen = () => {
      if (this.done) return;
      this.isOpen = true;
      this.host.clock.clearTimeout(this.connectTimer);
      for (const t of query) {
        this.streamTopics.add(t);
        this.requested.set(t, presence.get(t) === true);
      }
      // The others (and any subscribed since the connect began) by op, from their last id.
      this.reconcile();
      // The first answer proves the whole path (a proxy may accept the upgrade and pass nothing,
      // a refused credential is closed right after the handshake): connected only then.
      this.send({ op: "ping" });
      this.beat = new Heartbeat({ timeout: this.host.heartbeatTimeout }, this.host.clock.now());
      this.armBeat();
    };
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onclose = (ev) => {
      const info = wsClose(ev.code, ev.reason ?? "");
      // Closed before anything came back, without a word from the server: the way may be blocked.
      const failure = !this.heard && ev.code === 1006 ? "ambiguous" : undefined;
      this.finish({ reason: info.reason, action: info.action, retryMs: info.retryMs, failure });
    };
    ws.onerror = () => {}; // onclose follows with the code
  }

  /** Sends a request and resolves with its ack (rejects with its error frame, or {@link ConnectionLost}). */
  request(frame: Record<string, unknown>, subscribe?: string): Promise<Record<string, unknown>> {
    if (!this.open) return Promise.reject(new ConnectionLost());
    const ref = this.nextRef++;
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject, subscribe });
      this.send({ ...frame, ref });
    });
  }

  topicsChanged(): void {
    if (this.open) this.reconcile(); // else the open does it
  }

  /** Subscribes and unsubscribes by op until the server has the host's topic set. */
  private reconcile(): void {
    const want = new Map(this.host.topics().map((t) => [t.topic, t.presence]));
    for (const [topic, presence] of want) {
      const had = this.requested.get(topic);
      if (had === presence) continue;
      if (had !== undefined) {
        // Presence switched: subscribe again from where the topic is.
        this.send({ op: "unsubscribe", topic });
        this.streamTopics.delete(topic);
      }
      this.subscribe(topic, this.host.lastId(topic), presence);
    }
    for (const topic of [...this.requested.keys()]) {
      if (want.has(topic)) continue;
      this.requested.delete(topic);
      this.streamTopics.delete(topic);
      this.send({ op: "unsubscribe", topic });
    }
  }

  refreshed(token: string): void {
    if (this.open) this.request({ op: "refresh", token }).catch((err: RtgateError) => {
      if (!(err instanceof ConnectionLost)) this.host.error(err);
    });
  }

  wake(): void {
    const beat = this.beat;
    if (!this.open || !beat) return;
    const grace = beat.suspect(this.host.clock.now());
    this.send({ op: "ping" });
    this.host.clock.clearTimeout(this.beatTimer);
    this.armBeat(grace);
  }

  stop(): void {
    this.stopped = true;
    this.teardown(new ConnectionLost());
    try {
      this.ws?.close(1000, "client");
    } catch {
      // already closed
    }
  }

  private subscribe(topic: string, after: string | undefined, presence: boolean): void {
    this.requested.set(topic, presence);
    const frame: Record<string, unknown> = { op: "subscribe", topic };
    if (after !== undefined) frame.after = after;
    if (presence) frame.presence = true;
    // The ack itself adds the topic to the stream's topics (in `settle`, before the next frame is read).
    this.request(frame, topic).then(
      () => {},
      (err: RtgateError) => {
        if (err instanceof ConnectionLost) return;
        this.requested.delete(topic);
        if (err.code === "unavailable" || err.code === "rate_limited") {
          // The server is short of room now, not refusing the topic: ask again later.
          this.retryTimer = this.host.clock.setTimeout(() => this.topicsChanged(), RESUBSCRIBE_MS);
          return;
        }
        this.host.refused(topic, err);
      },
    );
  }

  private send(frame: Record<string, unknown>): void {
    try {
      this.ws?.send(JSON.stringify(frame));
    } catch {
      // a failed send shows as a close
    }
  }

  private receive(raw: unknown): void {
    if (this.done) return;
    this.beat?.frame(this.host.clock.now());
    if (!this.heard) {
      this.heard = true;
      this.host.opened();
      if (this.done) return;
    }
    if (typeof raw !== "string") return;
    let f: Record<string, unknown>;
    try {
      f = JSON.parse(raw) as Record<string, unknown>;
    } catch {
      return this.host.error(new RtgateError("bad_frame", "the server sent a frame that is not JSON"));
    }
    const ref = typeof f.ref === "number" ? f.ref : undefined;
    switch (f.op) {
      case "message":
        if (f.ephemeral === true) {
          const e: Ephemeral = { topic: String(f.topic), data: f.data };
          if (typeof f.user === "string") e.user = f.user;
          return this.host.ephemeral(e);
        }
        return this.host.message(toMessage(f), typeof f.cursor === "string" ? f.cursor : undefined, [...this.streamTopics]);
      case "gap":
        return this.host.gap(f as unknown as Gap, undefined, [...this.streamTopics]);
      case "ack":
      case "pong":
        if (ref !== undefined) this.settle(ref, f, undefined);
        return;
      case "error": {
        const err = new RtgateError(String(f.code ?? "error"), String(f.message ?? ""));
        if (ref !== undefined && this.pending.has(ref)) return this.settle(ref, f, err);
        return this.host.error(err);
      }
      case "join":
      case "leave":
      case "presence_diff":
        return this.host.presence(f.op, f);
      default:
        return;
    }
  }

  private settle(ref: number, frame: Record<string, unknown>, err: RtgateError | undefined): void {
    const p = this.pending.get(ref);
    if (!p) return;
    this.pending.delete(ref);
    if (!err && p.subscribe !== undefined && this.requested.has(p.subscribe)) this.streamTopics.add(p.subscribe);
    if (err) p.reject(err);
    else p.resolve(frame);
  }

  private armBeat(delay?: number): void {
    const beat = this.beat;
    if (!beat || this.done) return;
    this.beatTimer = this.host.clock.setTimeout(() => {
      switch (beat.tick(this.host.clock.now())) {
        case "ping":
          this.send({ op: "ping" });
          break;
        case "dead":
          try {
            this.ws?.close(4000, "heartbeat_timeout");
          } catch {
            // ignore
          }
          return this.finish({ reason: "heartbeat_timeout", action: "reconnect" });
        default:
          break;
      }
      this.armBeat();
    }, delay ?? beat.interval);
  }

  private teardown(err: RtgateError): void {
    this.done = true;
    this.isOpen = false;
    this.host.clock.clearTimeout(this.connectTimer);
    this.host.clock.clearTimeout(this.beatTimer);
    this.host.clock.clearTimeout(this.retryTimer);
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.reject(err);
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onerror = null;
      this.ws.onclose = null;
    }
  }

  private finish(e: Parameters<TransportHost["ended"]>[0], cause?: unknown): void {
    if (this.done || this.stopped) return;
    if (cause !== undefined) this.host.error(new RtgateError(e.reason, String((cause as Error)?.message ?? cause)));
    this.teardown(new ConnectionLost());
    if (e.failure === "ambiguous" && this.ws) {
      try {
        this.ws.close();
      } catch {
        // ignore
      }
    }
    this.host.ended(e);
  }
}

/** A `message` frame or SSE/poll message JSON as a {@link Message}. */
export function toMessage(f: Record<string, unknown>): Message {
  const m: Message = { topic: String(f.topic), id: String(f.id), ts: Number(f.ts), data: f.data };
  if (typeof f.skipped === "number") m.skipped = f.skipped;
  return m;
}

/**
 * A background probe of the WebSocket: opens a connection without topics,
 * pings, and resolves true at the pong (false on close or after `timeout`).
 */
export function probeWs(host: TransportHost, WS: WebSocketCtor, token: string | undefined, timeout: number): Promise<boolean> {
  return new Promise((resolve) => {
    let ws: WebSocketLike;
    try {
      ws = new WS(wsUrl(host, token, [], undefined, false));
    } catch {
      return resolve(false);
    }
    let settled = false;
    const end = (ok: boolean) => {
      if (settled) return;
      settled = true;
      host.clock.clearTimeout(timer);
      ws.onopen = ws.onmessage = ws.onerror = null;
      ws.onclose = null;
      try {
        ws.close(1000, "probe");
      } catch {
        // ignore
      }
      resolve(ok);
    };
    const timer = host.clock.setTimeout(() => end(false), timeout);
    ws.onopen = () => ws.send(JSON.stringify({ op: "ping", ref: 0 }));
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string" && ev.data.includes('"pong"')) end(true);
    };
    ws.onclose = () => end(false);
    ws.onerror = () => {};
  });
}
