/**
 * What the client hands the application, and the seam between the client
 * and its transports ({@link TransportHost}, {@link Transport}).
 */

import type { Clock } from "./clock.js";
import type { ResumePlan } from "./cursor.js";
import type { FailureKind, TransportName } from "./fallback.js";

/** A message (contract §1), as delivered. */
export interface Message {
  topic: string;
  /** Position in the topic, `"<ms>-<seq>"`. */
  id: string;
  /** Server acceptance time, Unix ms. */
  ts: number;
  /** The published JSON value. */
  data: unknown;
  /** Messages of this topic (or key) not delivered before this one (`latest` delivery). */
  skipped?: number;
}

/** History no longer reaches back to where a topic resumed (or messages were dropped). */
export interface Gap {
  topic: string;
  /** Where the client was. */
  after: string;
  /** The oldest message the server still had. */
  oldest: string;
  /** `"dropped"` for a `drop` delivery policy; absent for trimmed history. */
  reason?: string;
}

/** An ephemeral message: never stored, never replayed, no id. */
export interface Ephemeral {
  topic: string;
  data: unknown;
  /** The publisher's user, when the server names it. */
  user?: string;
}

/** One presence entry. */
export interface PresenceEntry {
  topic: string;
  user: string;
  client: string;
  info?: unknown;
  since?: number;
}

/** Who is on a topic (`GET /v1/presence/{topic}`, WS `presence` op). */
export interface PresenceSnapshot {
  topic: string;
  users: number;
  clients: PresenceEntry[];
}

/** A refusal by the server or a failure of the client, with the contract's code. */
export class RtgateError extends Error {
  /** Contract code (`forbidden`, `rate_limited`, …) or a client one (`closed`, `network`, `timeout`). */
  readonly code: string;
  /** HTTP status, for HTTP refusals. */
  readonly status?: number;
  /** The server's hint of when to try again, in ms. */
  readonly retryMs?: number;

  constructor(code: string, message: string, status?: number, retryMs?: number) {
    super(message);
    this.name = "RtgateError";
    this.code = code;
    this.status = status;
    this.retryMs = retryMs;
  }
}

/** A topic of the stream and whether it wants presence events. */
export interface StreamTopic {
  topic: string;
  presence: boolean;
}

/** How a transport's connection ended. */
export interface Ended {
  /** Reason word, for the `disconnected` state. */
  reason: string;
  /** What to do next. */
  action: "reconnect" | "refresh" | "reset_cursor" | "forbidden" | "too_large" | "fatal";
  /** The server's hint of when to come back, in ms. */
  retryMs?: number;
  /** Set when it failed before the stream was live: what that says about the transport. */
  failure?: FailureKind;
}

/** What the client gives a transport. */
export interface TransportHost {
  readonly httpBase: string;
  readonly wsBase: string;
  readonly clock: Clock;
  readonly fetch: typeof fetch;
  /** Heartbeat timeout in ms. */
  readonly heartbeatTimeout: number;
  /** The current token, if any (asks for one when needed). */
  token(): Promise<string | undefined>;
  /** The topics to stream, with presence flags. */
  topics(): StreamTopic[];
  /** How to resume `topics`. */
  plan(topics: string[]): ResumePlan;
  /** The last message id delivered for `topic`. */
  lastId(topic: string): string | undefined;
  /** The stream is live. */
  opened(): void;
  /** A message arrived, with the stream's cursor after it and the topics that cursor names. */
  message(m: Message, cursor: string | undefined, streamTopics: string[]): void;
  /** A gap arrived (SSE: with the cursor past it). */
  gap(g: Gap, cursor: string | undefined, streamTopics: string[]): void;
  /** A poll answer's cursor, after its messages. */
  cursor(cursor: string, streamTopics: string[]): void;
  /** An ephemeral message. */
  ephemeral(e: Ephemeral): void;
  /** A presence event (`join`, `leave`, `presence_diff`). */
  presence(kind: string, event: Record<string, unknown>): void;
  /** A subscribe op was refused. */
  refused(topic: string, err: RtgateError): void;
  /** An error not tied to a request. */
  error(err: RtgateError): void;
  /** The connection is over (never called after {@link Transport.stop}). */
  ended(e: Ended): void;
}

/** One transport's connection. */
export interface Transport {
  readonly name: TransportName;
  /** Connects (once). */
  start(): void;
  /** Ends the connection; {@link TransportHost.ended} is not called. */
  stop(): void;
  /** The topic set changed: the transport subscribes/unsubscribes, or restarts with the full set. */
  topicsChanged(): void;
  /** A new token was obtained before expiry. */
  refreshed(token: string): void;
  /** The connection may have died unnoticed (back online, tab visible again): check it now. */
  wake?(): void;
}
