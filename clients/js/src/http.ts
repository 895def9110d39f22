/**
 * The HTTP requests besides streams: publish (`POST /v1/publish/{topic}`,
 * contract §3/§11) and presence (`GET /v1/presence/{topic}`).
 */

import { httpVerdict, parseErrorBody, parseRetryAfter } from "./hints.js";
import { RtgateError } from "./types.js";
import type { Message, PresenceSnapshot } from "./types.js";

/** Request headers carrying `token`, if any. */
export function authHeaders(token: string | undefined, extra: Record<string, string> = {}): Record<string, string> {
  return token === undefined ? extra : { ...extra, Authorization: `Bearer ${token}` };
}

/** A refusal read from a non-2xx answer. */
export async function refusal(res: Response, now: number): Promise<RtgateError> {
  const body = parseErrorBody(await res.text().catch(() => ""));
  const retryMs = parseRetryAfter(res.headers.get("retry-after"), now);
  const code = body.code ?? httpVerdict(res.status, body, retryMs).reason;
  return new RtgateError(code, body.message ?? `HTTP ${res.status}`, res.status, retryMs);
}

/** What one HTTP publish asks for. */
export interface HttpPublish {
  topic: string;
  data: unknown;
  idempotencyKey?: string;
  key?: string;
  ephemeral?: boolean;
}

/** Publishes once over HTTP; resolves with the id (undefined for an ephemeral message). */
export async function httpPublish(
  fetchFn: typeof fetch,
  base: string,
  token: string | undefined,
  p: HttpPublish,
  now: () => number,
): Promise<string | undefined> {
  const q = new URLSearchParams();
  if (p.key !== undefined) q.set("key", p.key);
  if (p.ephemeral) q.set("ephemeral", "true");
  const qs = q.toString();
  const headers = authHeaders(token, { "Content-Type": "application/json" });
  if (p.idempotencyKey !== undefined) headers["Idempotency-Key"] = p.idempotencyKey;
  let res: Response;
  try {
    res = await fetchFn(`${base}/v1/publish/${encodeURIComponent(p.topic)}${qs ? "?" + qs : ""}`, {
      method: "POST",
      headers,
      body: JSON.stringify(p.data === undefined ? null : p.data),
    });
  } catch (err) {
    throw new RtgateError("network", String((err as Error)?.message ?? err));
  }
  if (!res.ok) throw await refusal(res, now());
  const body = (await res.json().catch(() => ({}))) as { id?: unknown };
  return typeof body.id === "string" ? body.id : undefined;
}

/** Whether a failed publish may be sent again (with the same idempotency key). */
export function retryable(err: RtgateError): boolean {
  if (err.status === undefined) return err.code === "network" || err.code === "connection_lost" || err.code === "unavailable" || err.code === "rate_limited";
  return err.status === 401 || err.status === 408 || err.status === 429 || err.status >= 500;
}

/** `GET /v1/presence/{topic}`. */
export async function httpPresence(fetchFn: typeof fetch, base: string, token: string | undefined, topic: string, now: () => number): Promise<PresenceSnapshot> {
  let res: Response;
  try {
    res = await fetchFn(`${base}/v1/presence/${encodeURIComponent(topic)}`, { headers: authHeaders(token) });
  } catch (err) {
    throw new RtgateError("network", String((err as Error)?.message ?? err));
  }
  if (!res.ok) throw await refusal(res, now());
  return (await res.json()) as PresenceSnapshot;
}

/** A page of history (contract §3). */
export interface HistoryPage {
  messages: Message[];
  /** True when `after` is older than the oldest retained message. */
  truncated: boolean;
}

/** `GET /v1/history/{topic}?after=ID&limit=N`. */
export async function httpHistory(
  fetchFn: typeof fetch,
  base: string,
  token: string | undefined,
  topic: string,
  opts: { after?: string; limit?: number },
  now: () => number,
): Promise<HistoryPage> {
  const q = new URLSearchParams();
  if (opts.after !== undefined) q.set("after", opts.after);
  if (opts.limit !== undefined) q.set("limit", String(opts.limit));
  const qs = q.toString();
  let res: Response;
  try {
    res = await fetchFn(`${base}/v1/history/${encodeURIComponent(topic)}${qs ? "?" + qs : ""}`, { headers: authHeaders(token) });
  } catch (err) {
    throw new RtgateError("network", String((err as Error)?.message ?? err));
  }
  if (!res.ok) throw await refusal(res, now());
  const body = (await res.json()) as { messages?: Message[]; truncated?: boolean };
  return { messages: body.messages ?? [], truncated: body.truncated === true };
}
