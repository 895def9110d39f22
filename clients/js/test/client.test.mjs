import { test } from "node:test";
import assert from "node:assert/strict";
import { Rtgate } from "../dist/rtgate.js";
import { FakeClock, fakeWebSocket, jwt, settle, sseResponse } from "./helpers.mjs";

function client(opts = {}) {
  const clock = new FakeClock(0);
  const { FakeWS, sockets } = fakeWebSocket();
  const states = [];
  const errors = [];
  const rt = new Rtgate("http://gw.test:8080/", { WebSocket: FakeWS, clock, random: () => 0.5, fetch: opts.fetch ?? (async () => { throw new TypeError("no network in this test"); }), ...opts });
  rt.on("state", (s) => states.push(s.state === "connected" || s.state === "connecting" ? `${s.state}:${s.transport}` : `${s.state}:${s.reason}`));
  rt.on("error", (e) => errors.push(e.code));
  return { rt, clock, sockets, states, errors };
}

const frame = (topic, id, cursor, data = { id }) => ({ op: "message", topic, id, ts: 1, data, cursor });

test("WebSocket: connects, subscribes by op, delivers once, resumes with the cursor after a paced close", async () => {
  const { rt, clock, sockets, states } = client();
  const got = [];
  rt.subscribe("room.1", { onMessage: (m) => got.push(m.id) });
  await settle();
  assert.equal(sockets.length, 1);
  const ws = sockets[0];
  assert.equal(ws.url, "ws://gw.test:8080/v1/ws");
  ws.open();
  const [sub, ping] = ws.frames();
  assert.deepEqual(sub, { op: "subscribe", topic: "room.1", ref: sub.ref });
  assert.equal(ping.op, "ping");
  ws.receive({ op: "ack", ref: sub.ref, recovered: true });
  ws.receive(frame("room.1", "1-0", "C1"));
  ws.receive(frame("room.1", "2-0", "C2"));
  ws.receive(frame("room.1", "2-0", "C2"));
  assert.deepEqual(got, ["1-0", "2-0"]);
  // Shutdown with a pacing hint: back exactly after the hint, with the cursor.
  ws.serverClose(1001, "shutdown; retry_ms=1234");
  assert.deepEqual(states, ["connecting:ws", "connected:ws", "disconnected:shutdown"]);
  clock.advance(1233);
  await settle();
  assert.equal(sockets.length, 1);
  clock.advance(1);
  await settle();
  assert.equal(sockets.length, 2);
  const ws2 = sockets[1];
  assert.deepEqual(ws2.query.getAll("topic"), ["room.1"]);
  assert.equal(ws2.query.get("cursor"), "C2");
  ws2.open();
  assert.deepEqual(ws2.frames().map((f) => f.op), ["ping"], "resumed by the query, no subscribe op");
  ws2.receive(frame("room.1", "2-0", "C2")); // a replayed duplicate
  ws2.receive(frame("room.1", "3-0", "C3"));
  assert.deepEqual(got, ["1-0", "2-0", "3-0"]);
  rt.close();
  assert.equal(states.at(-1), "closed:client");
});

test("a topic the cursor does not name resumes by op with its last id", async () => {
  const { rt, sockets } = client();
  rt.subscribe("a", {});
  await settle();
  sockets[0].open();
  const subA = sockets[0].frames()[0];
  sockets[0].receive({ op: "ack", ref: subA.ref, recovered: true });
  sockets[0].receive(frame("a", "5-0", "CA"));
  rt.subscribe("b", {});
  const subB = sockets[0].frames().at(-1);
  assert.deepEqual(subB, { op: "subscribe", topic: "b", ref: subB.ref });
  // No ack for b yet, but a message of b (replay) arrives: its cursor is not trusted for b.
  sockets[0].receive(frame("b", "7-0", "CAB"));
  sockets[0].serverClose(1013, "slow_consumer");
  await settle();
  // Backoff with random 0.5: 250 ms.
  rt["clock"].advance(250);
  await settle();
  const ws2 = sockets[1];
  assert.deepEqual(ws2.query.getAll("topic"), ["a"]);
  assert.equal(ws2.query.get("cursor"), "CAB");
  ws2.open();
  const ops = ws2.frames().filter((f) => f.op === "subscribe");
  assert.deepEqual(ops.map(({ ref, ...f }) => f), [{ op: "subscribe", topic: "b", after: "7-0" }]);
  rt.close();
});

test("publishes are queued, resent with the same idempotency key after a reconnect, and resolve with the id", async () => {
  const { rt, clock, sockets } = client();
  const p1 = rt.publish("t", { n: 1 });
  await settle();
  const ws = sockets[0];
  ws.open();
  assert.equal(ws.frames().find((f) => f.op === "publish"), undefined, "not before the path is proven");
  ws.receive({ op: "pong" });
  const pub = ws.frames().find((f) => f.op === "publish");
  assert.equal(pub.topic, "t");
  assert.deepEqual(pub.data, { n: 1 });
  assert.match(pub.idempotency_key, /^[0-9a-f-]{36}$/);
  // The connection drops before the ack: the server may have stored it.
  ws.serverClose(1006, "");
  clock.advance(250);
  await settle();
  const ws2 = sockets[1];
  ws2.open();
  ws2.receive({ op: "pong" });
  const again = ws2.frames().find((f) => f.op === "publish");
  assert.equal(again.idempotency_key, pub.idempotency_key, "the retry cannot duplicate");
  ws2.receive({ op: "ack", ref: again.ref, id: "9-0" });
  assert.equal(await p1, "9-0");
  // Errors reject; options go on the frame.
  const p2 = rt.publish("t", "x", { key: "k1" });
  await settle();
  const f2 = ws2.frames().at(-1);
  assert.equal(f2.key, "k1");
  ws2.receive({ op: "error", ref: f2.ref, code: "forbidden", message: "no" });
  await assert.rejects(p2, (e) => e.code === "forbidden");
  await assert.rejects(rt.publish("bad topic", 1), (e) => e.code === "bad_topic");
  await assert.rejects(rt.publish("t", "x".repeat(70_000)), (e) => e.code === "too_large");
  const p3 = rt.publish("t", 1);
  rt.close();
  await assert.rejects(p3, (e) => e.code === "closed");
});

test("a refused upgrade falls back to SSE at once; SSE resumes from the cursor and publishes go over HTTP", async () => {
  const requests = [];
  const streams = [];
  const fetchFn = async (url, init = {}) => {
    const u = new URL(url);
    requests.push({ method: init.method ?? "GET", path: u.pathname, q: u.searchParams, headers: init.headers ?? {}, body: init.body });
    if (u.pathname === "/v1/sse") {
      const s = sseResponse();
      streams.push(s);
      init.signal?.addEventListener("abort", () => s.end());
      return s.response;
    }
    if (u.pathname.startsWith("/v1/publish/")) return new Response(JSON.stringify({ topic: "a", id: "4-0", ts: 1 }), { status: 200 });
    throw new TypeError("unexpected");
  };
  const { rt, sockets, states } = client({ fetch: fetchFn, token: "static-token" });
  const got = [];
  rt.subscribe("a", { onMessage: (m) => got.push(m.id), onGap: (g) => got.push(`gap ${g.after}..${g.oldest}`) });
  await settle();
  sockets[0].serverClose(1006, ""); // never opened: a proxy refused the upgrade
  rt["clock"].advance(0);
  await settle();
  assert.deepEqual(states, ["connecting:ws", "disconnected:network", "connecting:sse"]);
  assert.equal(requests[0].path, "/v1/sse");
  assert.deepEqual(requests[0].q.getAll("topic"), ["a"]);
  assert.equal(requests[0].headers.Authorization, "Bearer static-token");
  streams[0].push("retry: 2000\n\n");
  await settle();
  assert.equal(states.at(-1), "connected:sse");
  streams[0].push('id: C1\ndata: {"topic":"a","id":"1-0","ts":1,"data":1}\n\nevent: gap\nid: C2\ndata: {"topic":"a","after":"1-0","oldest":"3-0"}\n\n');
  await settle();
  assert.deepEqual(got, ["1-0", "gap 1-0..3-0"]);
  // A new subscription restarts the stream with the full set and the cursor.
  rt.subscribe("b", {});
  await settle();
  assert.equal(requests.length, 2);
  assert.deepEqual(requests[1].q.getAll("topic"), ["a", "b"]);
  assert.equal(requests[1].q.get("lastEventId"), "C2");
  // Publishing uses HTTP with an idempotency key.
  const id = await rt.publish("a", { hi: 1 }, { key: "k" });
  assert.equal(id, "4-0");
  const pub = requests.find((r) => r.method === "POST");
  assert.equal(pub.path, "/v1/publish/a");
  assert.equal(pub.q.get("key"), "k");
  assert.match(pub.headers["Idempotency-Key"], /^[0-9a-f-]{36}$/);
  assert.equal(pub.body, '{"hi":1}');
  rt.close();
});

test("an SSE stream that delivers nothing (buffering proxy) falls back to long polling", async () => {
  const paths = [];
  const fetchFn = async (url, init = {}) => {
    const u = new URL(url);
    paths.push(`${u.pathname}?${u.searchParams.get("timeout") ?? ""}`);
    if (u.pathname === "/v1/sse") return sseResponse().response; // headers come, bytes never
    if (u.pathname === "/v1/poll") {
      if (u.searchParams.get("timeout") === "0") return new Response(JSON.stringify({ messages: [], cursor: "P0" }));
      return new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new Error("aborted"))));
    }
    throw new TypeError("unexpected");
  };
  const { rt, clock, states } = client({ fetch: fetchFn, transports: ["sse", "poll"], sseTimeout: 5_000 });
  rt.subscribe("a", {});
  await settle();
  clock.advance(5_000);
  await settle(10);
  assert.deepEqual(states, ["connecting:sse", "disconnected:sse_timeout", "connecting:poll", "connected:poll"]);
  assert.deepEqual(paths, ["/v1/sse?", "/v1/poll?0", "/v1/poll?25"]);
  rt.close();
});

test("a token is refreshed before expiry and sent with the refresh op; the socket stays open", async () => {
  let n = 0;
  const token = async () => jwt({ sub: "u", exp: 300 + 300 * n++ }); // clock starts at 0: 5 min tokens
  const { rt, clock, sockets } = client({ token });
  rt.subscribe("a", {});
  await settle();
  const first = sockets[0].query.get("access_token");
  assert.equal(first, jwt({ sub: "u", exp: 300 }));
  sockets[0].open();
  // Keep the connection alive meanwhile (pongs) so the heartbeat does not interfere.
  for (let t = 0; t < 270_000; t += 5_000) {
    clock.advance(5_000);
    sockets[0].receive({ op: "pong" });
  }
  await settle();
  const refresh = sockets[0].frames().filter((f) => f.op === "refresh");
  assert.equal(refresh.length, 1);
  assert.equal(refresh[0].token, jwt({ sub: "u", exp: 600 }));
  assert.equal(sockets.length, 1, "no reconnect");
  rt.close();
});

test("token_expired asks for a new token; with a fixed token it stops", async () => {
  let n = 0;
  const { rt, clock, sockets } = client({ token: async () => `opaque-${++n}` });
  rt.subscribe("a", {});
  await settle();
  sockets[0].open();
  sockets[0].serverClose(1008, "token_expired");
  clock.advance(250);
  await settle();
  assert.equal(sockets[1].query.get("access_token"), "opaque-2");
  rt.close();
  const fixed = client({ token: "fixed" });
  fixed.rt.subscribe("a", {});
  await settle();
  fixed.sockets[0].open();
  fixed.sockets[0].serverClose(1008, "unauthenticated");
  fixed.clock.advance(60_000);
  await settle();
  assert.equal(fixed.sockets.length, 1);
  assert.deepEqual(fixed.errors, ["unauthenticated"]);
  assert.deepEqual(fixed.states, ["connecting:ws", "disconnected:unauthenticated"], "closed right after the handshake: never connected");
  fixed.rt.close();
});

test("a silent WebSocket is pinged, then replaced; a throttled timer does not kill it", async () => {
  const { rt, clock, sockets, states } = client({ heartbeatTimeout: 40_000 });
  rt.subscribe("a", {});
  await settle();
  sockets[0].open();
  const pings = () => sockets[0].frames().filter((f) => f.op === "ping").length;
  assert.equal(pings(), 1);
  clock.advance(20_000);
  assert.equal(pings(), 2, "pinged after 13 s of silence (on the 20 s tick)");
  clock.advance(20_000);
  assert.equal(states.at(-1), "disconnected:heartbeat_timeout");
  clock.advance(250);
  await settle();
  assert.equal(sockets.length, 2);
  // A tab whose timers were held for minutes: the overdue tick only pings.
  sockets[1].open();
  sockets[1].receive({ op: "pong" });
  const pings1 = () => sockets[1].frames().filter((f) => f.op === "ping").length;
  clock.jump(300_000);
  clock.advance(1);
  assert.equal(states.at(-1), "connected:ws");
  assert.equal(pings1(), 2, "the open ping and the overdue tick's");
  sockets[1].receive({ op: "pong" });
  clock.advance(20_000);
  assert.equal(states.at(-1), "connected:ws", "the pong within the grace keeps it");
  assert.equal(sockets.length, 2);
  rt.close();
});

test("presence and ephemeral frames reach the subscriptions that asked", async () => {
  const { rt, sockets } = client();
  const seen = [];
  rt.subscribe("room", { presence: true, onJoin: (e) => seen.push(`join ${e.user}`), onLeave: (e) => seen.push(`leave ${e.user}`), onEphemeral: (e) => seen.push(`typing ${e.user}`) });
  rt.subscribe("room", { onJoin: () => seen.push("not asked") });
  await settle();
  sockets[0].open();
  const sub = sockets[0].frames()[0];
  assert.equal(sub.presence, true);
  sockets[0].receive({ op: "join", topic: "room", user: "ann", client: "c1" });
  sockets[0].receive({ op: "presence_diff", topic: "room", joins: [{ user: "bob", client: "c2" }], leaves: [{ user: "ann", client: "c1" }] });
  sockets[0].receive({ op: "message", topic: "room", data: { typing: true }, ephemeral: true, user: "bob" });
  assert.deepEqual(seen, ["join ann", "join bob", "leave ann", "typing bob"]);
  const snap = rt.presence("room");
  const req = sockets[0].frames().at(-1);
  assert.deepEqual({ op: req.op, topic: req.topic }, { op: "presence", topic: "room" });
  sockets[0].receive({ op: "ack", ref: req.ref, topic: "room", users: 1, clients: [{ user: "bob", client: "c2" }] });
  assert.deepEqual(await snap, { topic: "room", users: 1, clients: [{ user: "bob", client: "c2" }] });
  rt.close();
});

test("the cursor and the working transport survive a reload through storage", async () => {
  const store = new Map();
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
  const one = client({ storage });
  const got = [];
  one.rt.subscribe("a", { onMessage: (m) => got.push(m.id) });
  await settle();
  one.sockets[0].open();
  one.sockets[0].receive({ op: "ack", ref: one.sockets[0].frames()[0].ref, recovered: true });
  one.sockets[0].receive(frame("a", "8-0", "C8"));
  await settle();
  one.rt.close();
  const two = client({ storage });
  two.rt.subscribe("a", { onMessage: (m) => got.push(m.id) });
  await settle();
  assert.equal(two.sockets[0].query.get("cursor"), "C8");
  two.sockets[0].open();
  two.sockets[0].receive(frame("a", "8-0", "C8"));
  two.sockets[0].receive(frame("a", "9-0", "C9"));
  assert.deepEqual(got, ["8-0", "9-0"]);
  two.rt.close();
});

test("on a fallback transport the better one is probed in the background and switched to when it works", async () => {
  const streams = [];
  const fetchFn = async (url, init = {}) => {
    const s = sseResponse();
    streams.push({ s, q: new URL(url).searchParams });
    init.signal?.addEventListener("abort", () => s.end());
    return s.response;
  };
  const { rt, clock, sockets, states } = client({ fetch: fetchFn, fallback: { probeAfter: 30_000 } });
  rt.subscribe("a", {});
  await settle();
  sockets[0].serverClose(1006, "");
  clock.advance(0);
  await settle();
  streams[0].s.push("retry: 2000\n\nid: C5\ndata: {\"topic\":\"a\",\"id\":\"5-0\",\"ts\":1,\"data\":null}\n\n");
  await settle();
  assert.equal(states.at(-1), "connected:sse");
  // Keep the SSE stream alive (comments) until the probe is due.
  for (let t = 0; t < 30_000; t += 10_000) {
    streams[0].s.push(": ping\n\n");
    await settle();
    clock.advance(10_000);
  }
  await settle();
  assert.equal(sockets.length, 2, "the probe socket");
  const probe = sockets[1];
  assert.deepEqual([...probe.query.keys()], [], "a probe subscribes to nothing");
  probe.open();
  assert.equal(probe.frames()[0].op, "ping");
  probe.receive({ op: "pong", ref: 0 });
  await settle();
  assert.equal(probe.closedWith.reason, "probe");
  assert.deepEqual(states.slice(-3), ["connected:sse", "disconnected:upgrade", "connecting:ws"]);
  const ws = sockets[2];
  assert.equal(ws.query.get("cursor"), "C5", "the switch resumes from the SSE cursor");
  assert.deepEqual(ws.query.getAll("topic"), ["a"]);
  rt.close();
});

test("SSE: a stream ended after a late retry: comes back after that hint; a silent stream is replaced", async () => {
  const streams = [];
  const fetchFn = async (url, init = {}) => {
    const s = sseResponse();
    streams.push({ s, q: new URL(url).searchParams, signal: init.signal });
    init.signal?.addEventListener("abort", () => s.end());
    return s.response;
  };
  const { rt, clock, states } = client({ fetch: fetchFn, transports: ["sse"], heartbeatTimeout: 40_000 });
  rt.subscribe("a", {});
  await settle();
  streams[0].s.push('retry: 2000\n\nid: C1\ndata: {"topic":"a","id":"1-0","ts":1,"data":0}\n\n');
  await settle();
  // Shutdown: the server paces the reconnect with a retry: before the end of the stream.
  streams[0].s.push("retry: 4321\n\n");
  streams[0].s.end();
  await settle();
  assert.equal(states.at(-1), "disconnected:stream_end");
  clock.advance(4320);
  await settle();
  assert.equal(streams.length, 1);
  clock.advance(1);
  await settle();
  assert.equal(streams.length, 2);
  assert.equal(streams[1].q.get("lastEventId"), "C1");
  streams[1].s.push("retry: 2000\n\n");
  await settle();
  // Nothing more, not even the server's comments: dead after the heartbeat timeout.
  clock.advance(40_000);
  await settle();
  assert.equal(streams[1].signal.aborted, true);
  assert.equal(states.at(-1), "disconnected:heartbeat_timeout");
  rt.close();
});

test("a topic subscribed while the WebSocket is still opening is subscribed at the open", async () => {
  const { rt, sockets } = client();
  rt.subscribe("a", {});
  await settle();
  rt.subscribe("b", { presence: true });
  const un = rt.subscribe("c", {});
  un();
  sockets[0].open();
  const subs = sockets[0].frames().filter((f) => f.op !== "ping").map(({ ref, ...f }) => f);
  assert.deepEqual(subs, [{ op: "subscribe", topic: "a" }, { op: "subscribe", topic: "b", presence: true }]);
  rt.close();
});

test("a rate-limited reconnect storm does not leave clients on a worse transport", async () => {
  const fetchFn = async () => new Response(JSON.stringify({ error: { code: "rate_limited", message: "later" } }), { status: 429, headers: { "retry-after": "3" } });
  const { rt, clock, sockets, states } = client({ fetch: fetchFn });
  rt.subscribe("a", {});
  await settle();
  sockets[0].serverClose(1006, ""); // a handshake refused with 429 looks like a blocked upgrade
  clock.advance(0);
  await settle();
  assert.deepEqual(states, ["connecting:ws", "disconnected:network", "connecting:sse", "disconnected:rate_limited"]);
  clock.advance(2_999);
  await settle();
  assert.equal(sockets.length, 1);
  clock.advance(1);
  await settle();
  assert.equal(states.at(-1), "connecting:ws", "back to the WebSocket after Retry-After");
  assert.equal(sockets.length, 2);
  rt.close();
});

test("a refused connect request drops the cursor once, then backs off, then stops", async () => {
  const store = new Map([["rtgate:http://gw.test:8080", JSON.stringify({ position: { cursor: "STALE", covered: ["a"], ids: { a: "1-0" } } })]]);
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
  const { rt, clock, sockets, states, errors } = client({ storage });
  rt.subscribe("a", {});
  await settle();
  assert.equal(sockets[0].query.get("cursor"), "STALE");
  sockets[0].open();
  sockets[0].serverClose(1008, "policy");
  clock.advance(0);
  await settle();
  assert.equal(sockets.length, 2, "again at once");
  assert.equal(sockets[1].query.get("cursor"), null, "without the cursor");
  sockets[1].open();
  assert.deepEqual(sockets[1].frames()[0], { op: "subscribe", topic: "a", after: "1-0", ref: sockets[1].frames()[0].ref }, "the topic resumes from its id");
  sockets[1].serverClose(1008, "policy");
  clock.advance(0);
  await settle();
  assert.equal(sockets.length, 2, "not at once a second time");
  clock.advance(250);
  await settle();
  assert.equal(sockets.length, 3);
  sockets[2].open();
  sockets[2].serverClose(1008, "policy");
  clock.advance(60_000);
  await settle();
  assert.equal(sockets.length, 3, "stopped");
  assert.deepEqual(errors, ["policy"]);
  assert.equal(states.filter((s) => s === "disconnected:policy").length, 3);
  rt.close();
});

test("back online or visible again: the WebSocket is pinged and replaced if it does not answer within the grace", async () => {
  const listeners = {};
  globalThis.addEventListener = (t, f) => (listeners[t] = f);
  globalThis.removeEventListener = (t) => delete listeners[t];
  try {
    const { rt, clock, sockets, states } = client();
    rt.subscribe("a", {});
    await settle();
    sockets[0].open();
    sockets[0].receive({ op: "pong" });
    clock.advance(1_000);
    listeners.online();
    assert.equal(sockets[0].frames().at(-1).op, "ping");
    sockets[0].receive({ op: "pong" });
    clock.advance(10_000);
    assert.equal(states.at(-1), "connected:ws", "answered: kept");
    listeners.visibilitychange();
    clock.advance(10_000);
    assert.equal(states.at(-1), "disconnected:heartbeat_timeout", "silent: replaced after the 10 s grace, not the 40 s timeout");
    rt.close();
    assert.deepEqual(Object.keys(listeners), [], "close removes the listeners");
  } finally {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  }
});

test("history pages over HTTP; the publish queue is bounded", async () => {
  const seen = [];
  const fetchFn = async (url, init = {}) => {
    seen.push([url, init.headers?.Authorization]);
    return new Response(JSON.stringify({ messages: [{ topic: "a", id: "2-0", ts: 2, data: 1 }], truncated: false }));
  };
  const { rt } = client({ fetch: fetchFn, token: "tk", maxPending: 2 });
  const page = await rt.history("a", { after: "1-0", limit: 10 });
  assert.deepEqual(page, { messages: [{ topic: "a", id: "2-0", ts: 2, data: 1 }], truncated: false });
  assert.deepEqual(seen, [["http://gw.test:8080/v1/history/a?after=1-0&limit=10", "Bearer tk"]]);
  const waiting = [rt.publish("a", 1), rt.publish("a", 2)];
  await assert.rejects(rt.publish("a", 3), (e) => e.code === "queue_full");
  rt.close();
  for (const p of waiting) await assert.rejects(p, (e) => e.code === "closed");
});
