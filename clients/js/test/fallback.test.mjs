import { test } from "node:test";
import assert from "node:assert/strict";
import { TransportMachine } from "../dist/rtgate.js";

const ALL = ["ws", "sse", "poll"];

test("a refused upgrade falls back to SSE; SSE connecting confirms WS blocked", () => {
  const m = new TransportMachine(ALL);
  assert.equal(m.current(), "ws");
  assert.equal(m.failed("ws", "ambiguous"), "sse");
  assert.equal(m.isBlocked("ws"), false, "only suspected so far");
  m.connected("sse", 1000);
  assert.equal(m.isBlocked("ws"), true);
  assert.equal(m.current(), "sse");
  assert.equal(m.working(), "sse");
});

test("a stream held by a buffering proxy falls back to long polling", () => {
  const m = new TransportMachine(ALL);
  m.failed("ws", "ambiguous");
  assert.equal(m.failed("sse", "blocked"), "poll");
  m.connected("poll", 0);
  assert.equal(m.isBlocked("ws"), true);
  assert.equal(m.isBlocked("sse"), true);
});

test("a server that is down does not push clients to long polling", () => {
  const m = new TransportMachine(ALL);
  assert.equal(m.failed("ws", "ambiguous"), "sse");
  // SSE cannot reach the server either: WS was not to blame.
  assert.equal(m.failed("sse", "unreachable"), "ws");
  assert.equal(m.failed("ws", "unreachable"), "ws");
  m.connected("ws", 0);
  assert.equal(m.isBlocked("ws"), false);
  assert.equal(m.probeAt(), undefined, "nothing better to probe");
});

test("when every transport failed ambiguously it starts over from the best", () => {
  const m = new TransportMachine(ALL);
  m.failed("ws", "ambiguous");
  m.failed("sse", "ambiguous");
  assert.equal(m.current(), "poll");
  assert.equal(m.failed("poll", "ambiguous"), "ws");
});

test("after a drop the same transport is used again (no fallback)", () => {
  const m = new TransportMachine(ALL);
  m.connected("ws", 0);
  m.dropped();
  assert.equal(m.current(), "ws");
  assert.equal(m.working(), undefined);
});

test("the better transport is probed after a while, with doubling waits, and switched to on success", () => {
  const m = new TransportMachine(ALL, { probeAfter: 60_000, probeCap: 200_000 });
  m.failed("ws", "ambiguous");
  m.connected("sse", 0);
  assert.equal(m.probeAt(), 60_000);
  assert.equal(m.probeDue(59_999), undefined);
  assert.equal(m.probeDue(60_000), "ws");
  assert.equal(m.probed("ws", false, 60_000), "sse");
  assert.equal(m.probeAt(), 60_000 + 120_000, "twice as long");
  m.probed("ws", false, 180_000);
  assert.equal(m.probeAt(), 180_000 + 200_000, "capped");
  assert.equal(m.probed("ws", true, 380_000), "ws");
  assert.equal(m.isBlocked("ws"), false);
  assert.equal(m.probeAt(), undefined, "not connected yet");
  m.connected("ws", 381_000);
  assert.equal(m.probeAt(), undefined);
});

test("a remembered transport is where it starts; the better ones are probed later", () => {
  const m = new TransportMachine(ALL, { probeAfter: 1_000 }, "poll");
  assert.equal(m.current(), "poll");
  assert.equal(m.failed("poll", "unreachable"), "poll", "the remembered blockage stands");
  m.connected("poll", 10);
  assert.equal(m.probeDue(1_010), "sse", "one step up at a time");
  m.probed("sse", true, 1_010);
  assert.equal(m.current(), "sse");
  m.connected("sse", 2_000);
  assert.equal(m.probeDue(3_000), "ws");
  // An unknown remembered name is ignored.
  assert.equal(new TransportMachine(ALL, {}, "carrier-pigeon").current(), "ws");
  assert.equal(new TransportMachine(["sse", "poll"], {}, "ws").current(), "sse");
  assert.throws(() => new TransportMachine([]), /no transport/);
});
