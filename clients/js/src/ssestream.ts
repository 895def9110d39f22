/**
 * The SSE transport (contract §5), read over `fetch` with {@link SseParser}:
 * it works in Node (no `EventSource` there), sends the token in a header,
 * and sees the server's `: ping` comments, which `EventSource` hides, so a
 * dead stream is noticed by the heartbeat. Every change of the topic set is
 * a new request with the full set and the cursor (`lastEventId`).
 *
 * A stream that delivers nothing at all (no `retry:`, comment or event)
 * within `firstEventTimeout` is taken as held by a buffering proxy: the
 * transport is `blocked` and the client falls back to long polling.
 */

import { Heartbeat } from "./heartbeat.js";
import { httpVerdict, parseErrorBody, parseRetryAfter } from "./hints.js";
import { authHeaders } from "./http.js";
import { SseParser } from "./sse.js";
import { toMessage } from "./ws.js";
import type { Ended, Ephemeral, Gap, StreamTopic, Transport, TransportHost } from "./types.js";

/** Options of {@link SseTransport}. */
export interface SseOptions {
  /** Nothing parsed within this (ms) after the request: blocked. */
  firstEventTimeout: number;
}

/** Builds `/v1/sse?...`. */
export function sseUrl(base: string, topics: StreamTopic[], cursor: string | undefined): string {
  const q = new URLSearchParams();
  for (const t of topics) q.append("topic", t.topic);
  if (cursor !== undefined) q.set("lastEventId", cursor);
  if (topics.some((t) => t.presence)) q.set("presence", "1");
  return `${base}/v1/sse?${q.toString()}`;
}

/** One SSE stream; restarts itself (without ending) when the topic set changes. */
export class SseTransport implements Transport {
  readonly name = "sse" as const;
  private abort: AbortController | undefined;
  private generation = 0;
  private stopped = false;
  private opened = false;
  private restartQueued = false;

  constructor(
    private readonly host: TransportHost,
    private readonly options: SseOptions,
  ) {}

  start(): void {
    void this.run(++this.generation);
  }

  stop(): void {
    this.stopped = true;
    this.generation++;
    this.abort?.abort();
  }

  topicsChanged(): void {
    this.restartSoon();
  }

  refreshed(): void {
    // The stream carries the token it started with: start again with the new one.
    this.restartSoon();
  }

  /** Restarts once for a burst of changes (a microtask later). */
  private restartSoon(): void {
    if (this.restartQueued || this.stopped) return;
    this.restartQueued = true;
    queueMicrotask(() => {
      this.restartQueued = false;
      if (this.stopped) return;
      this.abort?.abort();
      void this.run(++this.generation);
    });
  }

  private async run(gen: number): Promise<void> {
    const host = this.host;
    const live = () => gen === this.generation && !this.stopped;
    let token: string | undefined;
    try {
      token = await host.token();
    } catch {
      if (live()) this.end(gen, { reason: "token_error", action: "refresh" });
      return;
    }
    if (!live()) return;
    const topics = host.topics();
    if (topics.length === 0) {
      // Nothing to stream; publishes still go over HTTP.
      if (!this.opened) {
        this.opened = true;
        host.opened();
      }
      return;
    }
    const names = topics.map((t) => t.topic);
    const plan = host.plan(names);
    const abort = new AbortController();
    this.abort = abort;
    let heard = false;
    let beat: Heartbeat | undefined;
    let beatTimer: unknown;
    let lateRetry: number | undefined;
    const clock = host.clock;
    const firstTimer = clock.setTimeout(() => {
      if (!heard && live()) {
        abort.abort();
        this.end(gen, { reason: "sse_timeout", action: "reconnect", failure: "blocked" });
      }
    }, this.options.firstEventTimeout);
    const cleanup = () => {
      clock.clearTimeout(firstTimer);
      clock.clearTimeout(beatTimer);
    };
    const armBeat = () => {
      const b = beat;
      if (!b) return;
      beatTimer = clock.setTimeout(() => {
        if (!live()) return;
        if (b.tick(clock.now()) === "dead") {
          abort.abort();
          cleanup();
          return this.end(gen, { reason: "heartbeat_timeout", action: "reconnect" });
        }
        armBeat();
      }, b.interval);
    };
    const hear = () => {
      if (!live()) return;
      if (!heard) {
        heard = true;
        clock.clearTimeout(firstTimer);
        beat = new Heartbeat({ timeout: host.heartbeatTimeout, grace: host.heartbeatTimeout }, clock.now());
        armBeat();
        if (!this.opened) {
          this.opened = true;
          host.opened();
        }
      } else {
        beat?.frame(clock.now());
      }
    };
    const parser = new SseParser({
      onComment: hear,
      onRetry: (ms) => {
        // The first `retry:` is the stream's greeting; a later one paces a mass close.
        if (heard) lateRetry = ms;
        hear();
      },
      onId: hear,
      onEvent: (ev) => {
        hear();
        if (!live()) return;
        let data: Record<string, unknown>;
        try {
          data = JSON.parse(ev.data) as Record<string, unknown>;
        } catch {
          return;
        }
        const cursor = ev.id === "" ? undefined : ev.id;
        switch (ev.event) {
          case "message":
            return host.message(toMessage(data), cursor, names);
          case "gap":
            return host.gap(data as unknown as Gap, cursor, names);
          case "ephemeral": {
            const e: Ephemeral = { topic: String(data.topic), data: data.data };
            if (typeof data.user === "string") e.user = data.user;
            return host.ephemeral(e);
          }
          case "join":
          case "leave":
          case "presence_diff":
            return host.presence(ev.event, data);
          default:
            return;
        }
      },
    });
    let res: Response;
    try {
      res = await host.fetch(sseUrl(host.httpBase, topics, plan.cursor), {
        headers: authHeaders(token, { Accept: "text/event-stream" }),
        signal: abort.signal,
        cache: "no-store",
      });
    } catch {
      cleanup();
      if (live()) this.end(gen, { reason: "network", action: "reconnect", failure: this.opened ? undefined : "unreachable" });
      return;
    }
    if (!live()) {
      cleanup();
      return;
    }
    if (!res.ok) {
      cleanup();
      const body = parseErrorBody(await res.text().catch(() => ""));
      const v = httpVerdict(res.status, body, parseRetryAfter(res.headers.get("retry-after"), clock.now()));
      if (!live()) return;
      return this.end(gen, verdictToEnded(v, this.opened));
    }
    const type = res.headers.get("content-type") ?? "";
    if (!type.startsWith("text/event-stream") || !res.body) {
      cleanup();
      abort.abort();
      return this.end(gen, { reason: "not_event_stream", action: "reconnect", failure: "blocked" });
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (!live()) break;
        if (done) {
          parser.feed(decoder.decode());
          parser.end();
          break;
        }
        parser.feed(decoder.decode(value, { stream: true }));
      }
    } catch {
      // aborted or the connection failed; told below
    }
    cleanup();
    if (!live()) return;
    this.end(gen, {
      reason: "stream_end",
      action: "reconnect",
      retryMs: lateRetry,
      failure: heard ? undefined : "ambiguous",
    });
  }

  private end(gen: number, e: Ended): void {
    if (gen !== this.generation || this.stopped) return;
    this.stopped = true;
    this.host.ended(e);
  }
}

/** An HTTP refusal of a stream as an {@link Ended}. */
export function verdictToEnded(v: ReturnType<typeof httpVerdict>, opened: boolean): Ended {
  switch (v.kind) {
    case "retry":
      // Overloaded, rate limited or down: the server's doing, not the transport's. (A browser
      // sees a WebSocket handshake refused with 429 as a blocked upgrade; this undoes that fallback.)
      return { reason: v.reason, action: "reconnect", retryMs: v.retryMs, failure: opened ? undefined : "unreachable" };
    case "blocked":
      return { reason: v.reason, action: "reconnect", failure: "blocked" };
    case "refresh":
      return { reason: v.reason, action: "refresh" };
    case "reset_cursor":
      return { reason: v.reason, action: "reset_cursor" };
    default:
      return { reason: v.reason, action: "fatal" };
  }
}

/**
 * A background probe of SSE: requests a stream of the current topics and
 * resolves true at its first `retry:`, comment or event (false when the
 * answer is not a stream, or nothing arrives within `timeout`).
 */
export async function probeSse(host: TransportHost, token: string | undefined, timeout: number): Promise<boolean> {
  const topics = host.topics();
  if (topics.length === 0) return false;
  const abort = new AbortController();
  const timer = host.clock.setTimeout(() => abort.abort(), timeout);
  try {
    const res = await host.fetch(sseUrl(host.httpBase, topics, undefined), {
      headers: authHeaders(token, { Accept: "text/event-stream" }),
      signal: abort.signal,
      cache: "no-store",
    });
    if (!res.ok || !res.body || !(res.headers.get("content-type") ?? "").startsWith("text/event-stream")) return false;
    let heard = false;
    const parser = new SseParser({ onRetry: () => (heard = true), onComment: () => (heard = true), onEvent: () => (heard = true) });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    while (!heard) {
      const { done, value } = await reader.read();
      if (done) break;
      parser.feed(decoder.decode(value, { stream: true }));
    }
    return heard;
  } catch {
    return false;
  } finally {
    host.clock.clearTimeout(timer);
    abort.abort();
  }
}
