import { test } from "node:test";
import assert from "node:assert/strict";
import { httpVerdict, parseCloseReason, parseErrorBody, parseRetryAfter, wsClose } from "../dist/rtgate.js";

test("close reasons carry the server's pacing hint", () => {
  assert.deepEqual(parseCloseReason("shutdown; retry_ms=2345"), { word: "shutdown", retryMs: 2345 });
  assert.deepEqual(parseCloseReason("slow_consumer"), { word: "slow_consumer", retryMs: undefined });
  assert.deepEqual(parseCloseReason("unavailable;retry_ms=x"), { word: "unavailable", retryMs: undefined });
  assert.deepEqual(parseCloseReason(""), { word: "", retryMs: undefined });
});

test("WebSocket close codes and words map to actions", () => {
  const cases = [
    [1001, "shutdown; retry_ms=1500", { reason: "shutdown", retryMs: 1500, action: "reconnect" }],
    [1001, "heartbeat_timeout", { reason: "heartbeat_timeout", retryMs: undefined, action: "reconnect" }],
    [1013, "slow_consumer", { reason: "slow_consumer", retryMs: undefined, action: "reconnect" }],
    [1013, "rate_limited", { reason: "rate_limited", retryMs: undefined, action: "reconnect" }],
    [1013, "unavailable; retry_ms=800", { reason: "unavailable", retryMs: 800, action: "reconnect" }],
    [1008, "token_expired", { reason: "token_expired", retryMs: undefined, action: "refresh" }],
    [1008, "unauthenticated", { reason: "unauthenticated", retryMs: undefined, action: "refresh" }],
    [1008, "forbidden", { reason: "forbidden", retryMs: undefined, action: "forbidden" }],
    [1008, "policy", { reason: "policy", retryMs: undefined, action: "reset_cursor" }],
    [1009, "too_large", { reason: "too_large", retryMs: undefined, action: "too_large" }],
    [1006, "", { reason: "network", retryMs: undefined, action: "reconnect" }],
    [1000, "kicked", { reason: "kicked", retryMs: undefined, action: "reconnect" }],
  ];
  for (const [code, reason, want] of cases) assert.deepEqual(wsClose(code, reason), want, `${code} ${reason}`);
});

test("Retry-After in seconds or as a date", () => {
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(parseRetryAfter("3", now), 3000);
  assert.equal(parseRetryAfter(" 0 ", now), 0);
  assert.equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:05 GMT", now), 5000);
  assert.equal(parseRetryAfter("Wed, 31 Dec 2025 00:00:05 GMT", now), 0, "a past date: now");
  assert.equal(parseRetryAfter("soon", now), undefined);
  assert.equal(parseRetryAfter(null, now), undefined);
});

test("HTTP refusals of a stream", () => {
  const body = parseErrorBody('{"error":{"code":"rate_limited","message":"slow down"}}');
  assert.deepEqual(body, { code: "rate_limited", message: "slow down" });
  assert.deepEqual(parseErrorBody("<html>"), {});
  assert.deepEqual(httpVerdict(429, body, 2000), { kind: "retry", reason: "rate_limited", retryMs: 2000 });
  assert.deepEqual(httpVerdict(503, {}, undefined), { kind: "retry", reason: "http_503", retryMs: undefined });
  assert.deepEqual(httpVerdict(502, {}, undefined), { kind: "retry", reason: "http_502", retryMs: undefined });
  assert.deepEqual(httpVerdict(401, { code: "unauthenticated" }), { kind: "refresh", reason: "unauthenticated" });
  assert.deepEqual(httpVerdict(403, {}), { kind: "fatal", reason: "forbidden" });
  assert.deepEqual(httpVerdict(400, { code: "bad_request", message: "malformed cursor" }), { kind: "reset_cursor", reason: "bad_request" });
  assert.deepEqual(httpVerdict(400, { code: "bad_topic", message: "bad topic" }), { kind: "fatal", reason: "bad_topic" });
  assert.deepEqual(httpVerdict(404, {}), { kind: "blocked", reason: "http_404" });
});
