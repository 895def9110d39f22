// End to end against a real gateway binary (not run by `npm test`):
//   RTGATE_BIN=/path/to/rtgate node --test test/gateway.int.mjs
// Starts the binary on a free port (memory engine, defaults), then checks
// over each transport forced alone: publish → receive, and resume with no
// gap and no duplicate across a forced reconnect; and the fallback through a
// small proxy in front of the gateway that refuses WebSocket upgrades (→ SSE)
// or holds SSE responses like a buffering proxy (→ long polling); and, on a
// second gateway with HS256 auth, tokens refreshed before expiry (WS `refresh`
// op, SSE restarted with the new token) versus a fixed token that runs out.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import http from "node:http";
import net from "node:net";
import { createHmac } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { Rtgate } from "../dist/rtgate.js";

const BIN = process.env.RTGATE_BIN;
let proc;
let base;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function until(what, fn, ms = 10_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

before(async () => {
  assert.ok(BIN, "set RTGATE_BIN to a gateway binary");
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  proc = spawn(BIN, ["--listen", `127.0.0.1:${port}`], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  proc.stderr.on("data", (d) => (stderr += d));
  proc.on("exit", (code) => {
    if (code !== null && code !== 0) console.error(`gateway exited ${code}:\n${stderr}`);
  });
  await until("the gateway", async () => (await fetch(`${base}/healthz`).catch(() => null))?.ok);
});

after(() => proc?.kill("SIGTERM"));

/** Publishes `data` over plain HTTP (another client). */
async function publish(topic, data) {
  const res = await fetch(`${base}/v1/publish/${topic}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(data) });
  assert.equal(res.status, 200);
  return (await res.json()).id;
}

/** A client forced to `transports`, recording states and messages of `topic`. */
async function open(url, topic, transports, extra = {}) {
  const rt = new Rtgate(url, { transports, WebSocket, heartbeatTimeout: 20_000, sseTimeout: 1_500, pollTimeout: 5, ...extra });
  const states = [];
  const got = [];
  rt.on("state", (s) => states.push(s));
  rt.subscribe(topic, { onMessage: (m) => got.push(m) });
  await until(`connected over ${transports}`, () => states.some((s) => s.state === "connected"));
  return { rt, states, got };
}

/** Drops the client's connection from below, as a network failure would. */
function sever(rt) {
  const t = rt["transport"];
  if (t.name === "ws") t.ws.terminate ? t.ws.terminate() : t.ws.close();
  else t.abort.abort();
}

for (const transport of ["ws", "sse", "poll"]) {
  test(`${transport}: publish → receive, then resume across a forced reconnect with no gap and no duplicate`, async () => {
    const topic = `it.${transport}.${Date.now()}`;
    const { rt, states, got } = await open(base, topic, [transport]);
    assert.equal(states.find((s) => s.state === "connected").transport, transport);
    // The subscription is live once connected (poll: its first answer fixed the cursor).
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(await rt.publish(topic, { i }));
    await until("the first three", () => got.length >= 3);
    assert.deepEqual(got.map((m) => m.id), ids);
    assert.deepEqual(got.map((m) => m.data), [{ i: 0 }, { i: 1 }, { i: 2 }]);
    // Cut the connection; publish meanwhile from elsewhere; the client resumes from its cursor.
    const connects = states.filter((s) => s.state === "connected").length;
    sever(rt);
    await until("the drop", () => states.some((s) => s.state === "disconnected"));
    for (let i = 3; i < 8; i++) ids.push(await publish(topic, { i }));
    await until("the reconnect", () => states.filter((s) => s.state === "connected").length > connects);
    for (let i = 8; i < 10; i++) ids.push(await rt.publish(topic, { i }));
    await until("all ten", () => got.length >= 10);
    await new Promise((r) => setTimeout(r, 200)); // a duplicate would come now
    assert.deepEqual(got.map((m) => m.id), ids, "every message once, in order");
    rt.close();
  });
}

test("a publish sent twice with one idempotency key is stored once", async () => {
  const topic = `it.idem.${Date.now()}`;
  const a = await open(base, topic, ["ws"]);
  const key = "it-key-" + Date.now();
  const id1 = await a.rt.publish(topic, { n: 1 }, { idempotencyKey: key });
  const id2 = await a.rt.publish(topic, { n: 1 }, { idempotencyKey: key });
  assert.equal(id1, id2);
  const hist = await (await fetch(`${base}/v1/history/${topic}`)).json();
  assert.equal(hist.messages.length, 1);
  a.rt.close();
});

/** A proxy in front of the gateway: plain HTTP forwarded, the rest per `mode`. */
function proxy(mode) {
  const target = new URL(base);
  const server = http.createServer((req, res) => {
    const path = req.url ?? "/";
    if (mode === "buffering" && path.startsWith("/v1/sse")) {
      // Holds the stream like a buffering proxy: status and headers, never a byte.
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.flushHeaders();
      return;
    }
    const up = http.request({ host: target.hostname, port: target.port, path, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on("error", () => res.destroy());
    req.pipe(up);
  });
  // Upgrades refused (both modes): a proxy that does not speak WebSocket.
  server.on("upgrade", (_req, socket) => {
    socket.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ url: `http://127.0.0.1:${server.address().port}`, server })));
}

test("fallback: a proxy refusing upgrades → SSE; one buffering SSE → long polling; messages flow", async () => {
  for (const [mode, want] of [["no-upgrade", "sse"], ["buffering", "poll"]]) {
    const p = await proxy(mode);
    const topic = `it.fb.${mode}.${Date.now()}`;
    const rt = new Rtgate(p.url, { WebSocket, sseTimeout: 1_000, pollTimeout: 5 });
    const states = [];
    const got = [];
    rt.on("state", (s) => states.push(s));
    rt.subscribe(topic, { onMessage: (m) => got.push(m.id) });
    await until(`connected over ${want}`, () => states.some((s) => s.state === "connected"));
    const connected = states.filter((s) => s.state === "connected").map((s) => s.transport);
    assert.deepEqual(connected, [want], `${mode}: ${JSON.stringify(states)}`);
    const id = await rt.publish(topic, { via: want });
    await until("the message", () => got.length === 1);
    assert.deepEqual(got, [id]);
    rt.close();
    p.server.closeAllConnections?.();
    p.server.close();
  }
});

// ---- tokens: a second gateway with HS256 auth ----


const SECRET = "integration-secret";

/** An HS256 JWT valid for `ttl` seconds that may use every topic. */
function token(ttl, sub = "it-user") {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: now + ttl, topics: { subscribe: ["*"], publish: ["*"] } })}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

async function authGateway() {
  const dir = mkdtempSync(join(tmpdir(), "rtgate-js-"));
  const config = join(dir, "gateway.toml");
  writeFileSync(config, `[auth]\nhmac_secrets = ["${SECRET}"]\nleeway = "1s"\n`);
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const p = spawn(BIN, ["--config", config, "--listen", `127.0.0.1:${port}`], { stdio: "ignore" });
  await until("the auth gateway", async () => (await fetch(`${url}/healthz`).catch(() => null))?.ok);
  return { url, stop: () => p.kill("SIGTERM") };
}

test("tokens refreshed before expiry keep a WebSocket and an SSE stream going; a fixed token runs out", async () => {
  const gw = await authGateway();
  try {
    for (const transport of ["ws", "sse"]) {
      let asked = 0;
      const topic = `it.tok.${transport}.${Date.now()}`;
      const { rt, states, got } = await open(gw.url, topic, [transport], {
        token: async () => {
          asked += 1;
          return token(3); // refreshed 1 s before expiry: every ~2 s
        },
      });
      await new Promise((r) => setTimeout(r, 6_500)); // past two expiries
      assert.ok(asked >= 3, `${transport}: asked ${asked} times`);
      const id = await rt.publish(topic, { after: "refresh" });
      await until("the message", () => got.length === 1);
      assert.equal(got[0].id, id);
      const drops = states.filter((s) => s.state === "disconnected");
      assert.deepEqual(drops, [], `${transport}: no disconnect (${JSON.stringify(states)})`);
      rt.close();
    }
    // A fixed token is not renewed: the server ends the connection at its expiry, and the client says why.
    const errors = [];
    const rt = new Rtgate(gw.url, { transports: ["ws"], WebSocket, token: token(2) });
    rt.on("error", (e) => errors.push(e.code));
    const states = [];
    rt.on("state", (s) => states.push(s));
    rt.subscribe(`it.tok.fixed.${Date.now()}`, {});
    await until("the expiry", () => states.some((s) => s.state === "disconnected"), 8_000);
    assert.equal(states.find((s) => s.state === "disconnected").reason, "token_expired");
    await until("the error", () => errors.length > 0);
    assert.deepEqual(errors, ["token_expired"]);
    rt.close();
  } finally {
    gw.stop();
  }
});

// ---- a gateway restart mid-stream (memory engine: history is lost with it) ----

test("a gateway restart: every transport comes back by itself, reports the lost history as a gap, and gets every new message once", async () => {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const env = { ...process.env, RTGATE_RECONNECT__MIN: "100ms", RTGATE_RECONNECT__WINDOW: "500ms" };
  const start = async () => {
    const p = spawn(BIN, ["--listen", `127.0.0.1:${port}`], { stdio: "ignore", env });
    await until("the gateway", async () => (await fetch(`${url}/healthz`).catch(() => null))?.ok);
    return p;
  };
  let gw = await start();
  const topic = `it.restart.${Date.now()}`;
  const clients = {};
  for (const t of ["ws", "sse", "poll"]) {
    const rt = new Rtgate(url, { transports: [t], WebSocket, pollTimeout: 5, backoff: { base: 100, cap: 1_000 } });
    const c = { rt, states: [], got: [], gaps: [] };
    rt.on("state", (s) => c.states.push(s));
    rt.subscribe(topic, { onMessage: (m) => c.got.push(m.id), onGap: (g) => c.gaps.push(g) });
    clients[t] = c;
  }
  const all = Object.values(clients);
  await until("all connected", () => all.every((c) => c.states.some((s) => s.state === "connected")));
  const before = [await publish2(url, topic, 1), await publish2(url, topic, 2)];
  await until("the first two everywhere", () => all.every((c) => c.got.length === 2));
  const connects = (c) => c.states.filter((s) => s.state === "connected").length;
  const n = Object.fromEntries(Object.entries(clients).map(([t, c]) => [t, connects(c)]));
  gw.kill("SIGTERM");
  await new Promise((r) => gw.on("exit", r));
  gw = await start();
  try {
    await until("all back", () => Object.entries(clients).every(([t, c]) => connects(c) > n[t]), 15_000);
    const after = [];
    for (let i = 3; i <= 5; i++) after.push(await publish2(url, topic, i));
    await until("the new three everywhere", () => all.every((c) => c.got.length >= 5), 15_000);
    await new Promise((r) => setTimeout(r, 300));
    for (const [t, c] of Object.entries(clients)) {
      assert.deepEqual(c.got, [...before, ...after], `${t}: every message once, in order`);
      assert.ok(c.gaps.length >= 1, `${t}: the lost history is reported (${JSON.stringify(c.states.map((s) => s.reason ?? s.state))})`);
      const reasons = c.states.filter((s) => s.state === "disconnected").map((s) => s.reason);
      assert.ok(reasons.length >= 1, `${t}: ${reasons}`);
    }
  } finally {
    for (const c of all) c.rt.close();
    gw.kill("SIGTERM");
  }
});

async function publish2(url, topic, i) {
  const res = await fetch(`${url}/v1/publish/${topic}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ i }) });
  assert.equal(res.status, 200);
  return (await res.json()).id;
}
