import { test } from "node:test";
import assert from "node:assert/strict";
import { Heartbeat } from "../dist/rtgate.js";

// timeout 40 s: ticks every 10 s, ping after 13.333 s of silence, grace 10 s.
const T = { timeout: 40_000 };

function run(hb, from, to, step) {
  const out = [];
  for (let t = from; t <= to; t += step) out.push([t, hb.tick(t)]);
  return out;
}

test("a quiet connection is pinged, then declared dead at the timeout", () => {
  const hb = new Heartbeat(T, 0);
  assert.equal(hb.interval, 10_000);
  assert.deepEqual(run(hb, 10_000, 40_000, 10_000), [
    [10_000, "ok"],
    [20_000, "ping"],
    [30_000, "ok"],
    [40_000, "dead"],
  ]);
});

test("any frame keeps it alive", () => {
  const hb = new Heartbeat(T, 0);
  for (let t = 10_000; t <= 200_000; t += 10_000) {
    hb.frame(t - 1);
    assert.equal(hb.tick(t), "ok", `at ${t}`);
  }
});

test("pings repeat while the silence lasts, not on every tick", () => {
  const hb = new Heartbeat({ timeout: 60_000, interval: 5_000 }, 0);
  const beats = run(hb, 5_000, 55_000, 5_000).filter(([, b]) => b === "ping").map(([t]) => t);
  assert.deepEqual(beats, [20_000, 40_000]);
  assert.equal(hb.tick(60_000), "dead");
});

test("a late tick (throttled tab, sleep) pings and waits a grace instead of killing", () => {
  const hb = new Heartbeat(T, 0);
  assert.equal(hb.tick(10_000), "ok");
  // The next tick comes 5 minutes late: the silence is not the connection's fault.
  assert.equal(hb.tick(310_000), "ping");
  assert.equal(hb.tick(315_000), "ok", "within the grace");
  hb.frame(316_000); // the pong
  assert.equal(hb.tick(320_000), "ok");
  assert.equal(hb.tick(330_000), "ping", "and back to the ordinary rhythm");
});

test("a late tick whose grace brings nothing is dead", () => {
  const hb = new Heartbeat(T, 0);
  assert.equal(hb.tick(600_000), "ping");
  assert.equal(hb.tick(605_000), "ok");
  assert.equal(hb.tick(610_000), "dead");
});

test("a late tick right after a frame is an ordinary tick", () => {
  const hb = new Heartbeat(T, 0);
  hb.frame(99_000);
  assert.equal(hb.tick(100_000), "ok");
});

test("a suspected connection is dead unless something arrives within the grace", () => {
  const hb = new Heartbeat(T, 0);
  assert.equal(hb.suspect(1_000), 10_000);
  assert.equal(hb.tick(10_000), "ok");
  assert.equal(hb.tick(11_000), "dead");
  const alive = new Heartbeat(T, 0);
  alive.suspect(1_000);
  alive.frame(2_000);
  assert.equal(alive.tick(11_000), "ok");
});
