import { test } from "node:test";
import assert from "node:assert/strict";
import { CursorState, PollTransport } from "../dist/rtgate.js";
import { FakeClock, settle } from "./helpers.mjs";

/** A host recording what the transport reports, over a real CursorState. */
function host(fetchFn, topics = [{ topic: "a", presence: false }]) {
  const position = new CursorState();
  const log = { opened: 0, messages: [], gaps: [], ended: [] };
  const clock = new FakeClock(0);
  return {
    log,
    position,
    clock,
    topicsRef: topics,
    httpBase: "http://gw",
    wsBase: "ws://gw",
    fetch: fetchFn,
    heartbeatTimeout: 40_000,
    token: async () => "tok",
    topics() {
      return this.topicsRef;
    },
    plan: (names) => position.plan(names),
    lastId: (t) => position.ids.get(t),
    opened: () => log.opened++,
    message: (m, cursor, names) => {
      if (position.message(m.topic, m.id, cursor, names)) log.messages.push(m.id);
    },
    gap: (g) => log.gaps.push(g),
    cursor: (c, names) => position.setCursor(c, names),
    ephemeral: () => {},
    presence: () => {},
    refused: () => {},
    error: () => {},
    ended: (e) => log.ended.push(e),
  };
}

/** A fetch answering from a script; each request is recorded with its URL parts. */
function scripted(answers) {
  const requests = [];
  const fn = async (url, init) => {
    const u = new URL(url);
    const req = { path: u.pathname, topics: u.searchParams.getAll("topic"), cursor: u.searchParams.get("cursor"), timeout: u.searchParams.get("timeout"), auth: init.headers.Authorization, signal: init.signal };
    requests.push(req);
    const next = answers.shift();
    if (!next) return new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new Error("aborted"))));
    return next(req);
  };
  return { fn, requests };
}

const json = (body, status = 200, headers = {}) => new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
const msg = (id) => ({ topic: "a", id, ts: 1, data: { n: id } });

test("passes each answer's cursor to the next poll; the first asks with timeout=0", async () => {
  const f = scripted([
    () => json({ messages: [], cursor: "C0" }),
    () => json({ messages: [msg("1-0"), msg("2-0")], cursor: "C2" }),
    () => json({ messages: [msg("3-0")], cursor: "C3", gaps: [{ topic: "a", after: "3-0", oldest: "9-0" }] }),
  ]);
  const h = host(f.fn);
  const t = new PollTransport(h, { timeout: 25, slack: 10_000 });
  t.start();
  await settle(20);
  assert.deepEqual(f.requests.map((r) => [r.path, r.cursor, r.timeout]), [
    ["/v1/poll", null, "0"],
    ["/v1/poll", "C0", "25"],
    ["/v1/poll", "C2", "25"],
    ["/v1/poll", "C3", "25"],
  ]);
  assert.equal(f.requests[0].auth, "Bearer tok");
  assert.deepEqual(f.requests[0].topics, ["a"]);
  assert.equal(h.log.opened, 1);
  assert.deepEqual(h.log.messages, ["1-0", "2-0", "3-0"]);
  assert.deepEqual(h.log.gaps, [{ topic: "a", after: "3-0", oldest: "9-0" }]);
  assert.equal(h.position.cursor, "C3");
  t.stop();
  await settle();
  assert.ok(f.requests[3].signal.aborted, "stop aborts the held poll");
  assert.deepEqual(h.log.ended, [], "stop reports no end");
});

test("a restart after a topic change carries the full set and the cursor; nothing is delivered twice", async () => {
  const f = scripted([() => json({ messages: [msg("1-0")], cursor: "C1" })]);
  const h = host(f.fn);
  const t = new PollTransport(h, { timeout: 25, slack: 10_000 });
  t.start();
  await settle(10);
  assert.equal(f.requests.length, 2, "the second poll is held");
  h.topicsRef = [{ topic: "a", presence: false }, { topic: "b", presence: false }];
  // The restart's first poll answers at once, with the message already seen again.
  f.requests.length = 0;
  const answers = [() => json({ messages: [msg("1-0")], cursor: "C1b" })];
  const g = scripted(answers);
  h.fetch = g.fn;
  t.topicsChanged();
  t.topicsChanged(); // a burst of changes: one restart
  await settle(10);
  assert.deepEqual(g.requests.map((r) => [r.topics.join(","), r.cursor, r.timeout]), [["a,b", "C1", "0"], ["a,b", "C1b", "25"]]);
  assert.deepEqual(h.log.messages, ["1-0"], "the duplicate is dropped");
  t.stop();
});

test("429 ends the run with the server's Retry-After", async () => {
  const f = scripted([() => json({ error: { code: "rate_limited", message: "slow" } }, 429, { "retry-after": "7" })]);
  const h = host(f.fn);
  new PollTransport(h, { timeout: 25, slack: 10_000 }).start();
  await settle(10);
  assert.deepEqual(h.log.ended, [{ reason: "rate_limited", action: "reconnect", retryMs: 7000, failure: "unreachable" }], "the server's doing, not the transport's");
  assert.equal(h.log.opened, 0);
});

test("a network error before the first answer is 'unreachable'; after it, an ordinary drop", async () => {
  const down = scripted([() => Promise.reject(new TypeError("fetch failed"))]);
  const h = host(down.fn);
  new PollTransport(h, { timeout: 25, slack: 10_000 }).start();
  await settle(10);
  assert.deepEqual(h.log.ended, [{ reason: "network", action: "reconnect", failure: "unreachable" }]);
  const later = scripted([() => json({ messages: [], cursor: "C" }), () => Promise.reject(new TypeError("reset"))]);
  const h2 = host(later.fn);
  new PollTransport(h2, { timeout: 25, slack: 10_000 }).start();
  await settle(10);
  assert.deepEqual(h2.log.ended, [{ reason: "network", action: "reconnect", failure: undefined }]);
});

test("a held poll that outlives its timeout plus slack is aborted as dead", async () => {
  const f = scripted([() => json({ messages: [], cursor: "C" })]);
  const h = host(f.fn);
  new PollTransport(h, { timeout: 25, slack: 10_000 }).start();
  await settle(10);
  assert.equal(f.requests.length, 2);
  h.clock.advance(34_999);
  await settle();
  assert.equal(f.requests[1].signal.aborted, false);
  h.clock.advance(1);
  await settle(10);
  assert.equal(f.requests[1].signal.aborted, true);
  assert.equal(h.log.ended.length, 1);
  assert.equal(h.log.ended[0].reason, "network");
});

test("401 asks for a new token; a bad cursor is dropped; 404 means blocked", async () => {
  for (const [status, body, want] of [
    [401, { error: { code: "unauthenticated", message: "expired" } }, { reason: "unauthenticated", action: "refresh" }],
    [400, { error: { code: "bad_request", message: "malformed cursor" } }, { reason: "bad_request", action: "reset_cursor" }],
    [404, { error: { code: "not_found", message: "no route" } }, { reason: "not_found", action: "reconnect", failure: "blocked" }],
  ]) {
    const f = scripted([() => json(body, status)]);
    const h = host(f.fn);
    new PollTransport(h, { timeout: 25, slack: 10_000 }).start();
    await settle(10);
    assert.deepEqual(h.log.ended, [want], `HTTP ${status}`);
  }
});
