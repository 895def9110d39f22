/**
 * The long-polling transport (contract §6): a loop of
 * `GET /v1/poll?topic=..&cursor=C&timeout=S`, each answer's cursor passed to
 * the next request, so every message comes exactly once. The first request
 * of a run asks with `timeout=0`: it answers at once, which proves the way
 * and fixes the starting cursor before anything is held. A change of the
 * topic set aborts the held request and starts again with the full set and
 * the cursor (a poll is stateless on the server, so nothing is lost).
 */

import { httpVerdict, parseErrorBody, parseRetryAfter } from "./hints.js";
import { authHeaders } from "./http.js";
import { verdictToEnded } from "./ssestream.js";
import { toMessage } from "./ws.js";
import type { Ended, Gap, StreamTopic, Transport, TransportHost } from "./types.js";

/** Options of {@link PollTransport}. */
export interface PollOptions {
  /** Seconds the server may hold a poll (default 25). */
  timeout: number;
  /** Extra time (ms) before a held request is given up as dead (default 10 s). */
  slack: number;
}

/** The answer of one poll. */
export interface PollAnswer {
  messages?: Record<string, unknown>[];
  cursor?: string;
  gaps?: Gap[];
}

/** Builds `/v1/poll?...`. */
export function pollUrl(base: string, topics: StreamTopic[], cursor: string | undefined, timeout: number): string {
  const q = new URLSearchParams();
  for (const t of topics) q.append("topic", t.topic);
  if (cursor !== undefined) q.set("cursor", cursor);
  q.set("timeout", String(timeout));
  return `${base}/v1/poll?${q.toString()}`;
}

/** The poll loop. */
export class PollTransport implements Transport {
  readonly name = "poll" as const;
  private abort: AbortController | undefined;
  private generation = 0;
  private stopped = false;
  private opened = false;
  private restartQueued = false;

  constructor(
    private readonly host: TransportHost,
    private readonly options: PollOptions,
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
    if (this.restartQueued || this.stopped) return;
    this.restartQueued = true;
    queueMicrotask(() => {
      this.restartQueued = false;
      if (this.stopped) return;
      this.abort?.abort();
      void this.run(++this.generation);
    });
  }

  refreshed(): void {
    // Every poll asks for the token: the next one carries the new one.
  }

  private async run(gen: number): Promise<void> {
    const host = this.host;
    const live = () => gen === this.generation && !this.stopped;
    let first = true;
    while (live()) {
      const topics = host.topics();
      if (topics.length === 0) {
        if (!this.opened) {
          this.opened = true;
          host.opened();
        }
        return;
      }
      let token: string | undefined;
      try {
        token = await host.token();
      } catch {
        if (live()) this.end(gen, { reason: "token_error", action: "refresh" });
        return;
      }
      if (!live()) return;
      const names = topics.map((t) => t.topic);
      const plan = host.plan(names);
      const timeout = first ? 0 : this.options.timeout;
      const abort = new AbortController();
      this.abort = abort;
      const timer = host.clock.setTimeout(() => abort.abort(), timeout * 1000 + this.options.slack);
      let answer: PollAnswer;
      try {
        const res = await host.fetch(pollUrl(host.httpBase, topics, plan.cursor, timeout), {
          headers: authHeaders(token, { Accept: "application/json" }),
          signal: abort.signal,
          cache: "no-store",
        });
        if (!res.ok) {
          const body = parseErrorBody(await res.text().catch(() => ""));
          host.clock.clearTimeout(timer);
          if (!live()) return;
          const v = httpVerdict(res.status, body, parseRetryAfter(res.headers.get("retry-after"), host.clock.now()));
          return this.end(gen, verdictToEnded(v, this.opened));
        }
        answer = (await res.json()) as PollAnswer;
      } catch {
        host.clock.clearTimeout(timer);
        if (live()) this.end(gen, { reason: "network", action: "reconnect", failure: this.opened ? undefined : "unreachable" });
        return;
      }
      host.clock.clearTimeout(timer);
      if (!live()) return;
      if (!this.opened) {
        this.opened = true;
        host.opened();
      }
      for (const g of answer.gaps ?? []) host.gap(g, undefined, names);
      for (const m of answer.messages ?? []) host.message(toMessage(m), undefined, names);
      if (typeof answer.cursor === "string") host.cursor(answer.cursor, names);
      first = false;
    }
  }

  private end(gen: number, e: Ended): void {
    if (gen !== this.generation || this.stopped) return;
    this.stopped = true;
    this.host.ended(e);
  }
}
