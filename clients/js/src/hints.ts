/**
 * What the server says about reconnecting: WebSocket close codes and reason
 * words (contract §4, `"<reason>; retry_ms=<ms>"` when the server paces a
 * mass close), HTTP statuses with `Retry-After`, and the SSE `retry:` field.
 */

/** What to do after a connection ended or was refused. */
export type CloseAction =
  /** Reconnect (after the hint or a backoff delay). */
  | "reconnect"
  /** Get a new token, then reconnect. */
  | "refresh"
  /** The server refused the resume cursor: drop it, then reconnect. */
  | "reset_cursor"
  /** The credential does not allow the subscription: do not retry blindly. */
  | "forbidden"
  /** A message was too large (its publish is rejected), then reconnect. */
  | "too_large";

/** A close or refusal, understood. */
export interface CloseInfo {
  /** Reason word (`shutdown`, `slow_consumer`, `token_expired`, …, or `network`). */
  reason: string;
  /** The server's hint of when to come back, in ms. */
  retryMs?: number;
  /** What to do. */
  action: CloseAction;
}

/** Splits a close reason `"word; retry_ms=1234"` into its word and hint. */
export function parseCloseReason(reason: string): { word: string; retryMs?: number } {
  const [word, ...params] = reason.split(";").map((s) => s.trim());
  let retryMs: number | undefined;
  for (const p of params) {
    const m = /^retry_ms=([0-9]+)$/.exec(p);
    if (m) retryMs = parseInt(m[1], 10);
  }
  return { word: word ?? "", retryMs };
}

/** Understands a WebSocket close (`code`, `reason`). */
export function wsClose(code: number, reason: string): CloseInfo {
  const { word, retryMs } = parseCloseReason(reason);
  const named = word || (code === 1006 ? "network" : `close_${code}`);
  if (code === 1008) {
    if (word === "token_expired" || word === "unauthenticated") return { reason: named, retryMs, action: "refresh" };
    if (word === "forbidden") return { reason: named, retryMs, action: "forbidden" };
    // `policy`: a query the server could not take; the cursor is the part
    // that can go stale (another server version, a lost store).
    return { reason: named, retryMs, action: "reset_cursor" };
  }
  if (code === 1009) return { reason: named || "too_large", retryMs, action: "too_large" };
  return { reason: named, retryMs, action: "reconnect" };
}

/** `Retry-After` (seconds or an HTTP date) in ms from `now`, or undefined. */
export function parseRetryAfter(value: string | null | undefined, now: number): number | undefined {
  if (value === null || value === undefined) return undefined;
  const v = value.trim();
  if (/^[0-9]+$/.test(v)) return parseInt(v, 10) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** The error body of an HTTP answer: `{"error":{"code","message"}}`. */
export interface ErrorBody {
  code?: string;
  message?: string;
}

/** Reads an error body, tolerating anything. */
export function parseErrorBody(text: string): ErrorBody {
  try {
    const v = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } };
    const e = v?.error;
    return {
      code: typeof e?.code === "string" ? e.code : undefined,
      message: typeof e?.message === "string" ? e.message : undefined,
    };
  } catch {
    return {};
  }
}

/** What an HTTP refusal of a stream (SSE, poll) means. */
export type HttpVerdict =
  | { kind: "retry"; reason: string; retryMs?: number }
  | { kind: "blocked"; reason: string }
  | { kind: "refresh"; reason: string }
  | { kind: "reset_cursor"; reason: string }
  | { kind: "fatal"; reason: string };

/** Understands a stream request's non-200 answer. */
export function httpVerdict(status: number, body: ErrorBody, retryAfterMs?: number): HttpVerdict {
  const code = body.code ?? `http_${status}`;
  if (status === 401) return { kind: "refresh", reason: body.code ?? "unauthenticated" };
  if (status === 403) return { kind: "fatal", reason: body.code ?? "forbidden" };
  if (status === 429 || status === 503) return { kind: "retry", reason: code, retryMs: retryAfterMs };
  if (status === 400 && /cursor/i.test(body.message ?? "")) return { kind: "reset_cursor", reason: code };
  if (status === 404 || status === 405 || status === 406) return { kind: "blocked", reason: code };
  if (status >= 500) return { kind: "retry", reason: code, retryMs: retryAfterMs };
  return { kind: "fatal", reason: code };
}
