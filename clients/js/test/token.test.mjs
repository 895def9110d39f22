import { test } from "node:test";
import assert from "node:assert/strict";
import { TokenManager, jwtExpiry, refreshDelay } from "../dist/rtgate.js";
import { FakeClock, jwt, settle } from "./helpers.mjs";

test("the JWT exp is read without verification", () => {
  assert.equal(jwtExpiry(jwt({ sub: "u", exp: 1_700_000_100 })), 1_700_000_100_000);
  assert.equal(jwtExpiry(jwt({ sub: "ü", exp: 5, info: { name: "Zoë" } })), 5_000, "UTF-8 claims");
  assert.equal(jwtExpiry(jwt({ sub: "u" })), undefined);
  assert.equal(jwtExpiry(jwt({ exp: "soon" })), undefined);
  assert.equal(jwtExpiry("an-api-key"), undefined);
  assert.equal(jwtExpiry("a.%%%.c"), undefined);
});

test("refresh delay: a tenth of the life as margin, between 1 s and 60 s", () => {
  assert.equal(refreshDelay(300_000, 0), 270_000, "5 min token: 30 s before");
  assert.equal(refreshDelay(3_600_000, 0), 3_540_000, "1 h token: 60 s before");
  assert.equal(refreshDelay(5_000, 0), 4_000, "short token: 1 s before");
  assert.equal(refreshDelay(500, 0), 0, "about to expire: now");
  assert.equal(refreshDelay(0, 1_000), 0, "expired: now");
});

test("a function token is asked before expiry, once, and handed to the transport", async () => {
  const clock = new FakeClock(0);
  let calls = 0;
  const source = async () => {
    calls += 1;
    return jwt({ exp: (clock.now() + 300_000) / 1000, n: calls });
  };
  const refreshed = [];
  const tm = new TokenManager(source, clock, (t) => refreshed.push(t));
  // Concurrent callers share one request.
  const [a, b, c] = await Promise.all([tm.get(), tm.get(), tm.get()]);
  assert.equal(calls, 1);
  assert.equal(a, b);
  assert.equal(b, c);
  assert.equal(await tm.get(), a, "cached while valid");
  assert.equal(calls, 1);
  clock.advance(269_999);
  await settle();
  assert.equal(calls, 1, "not before the margin");
  clock.advance(1);
  await settle();
  assert.equal(calls, 2, "30 s before a 5 min token expires");
  assert.equal(refreshed.length, 1);
  assert.notEqual(refreshed[0], a);
  assert.equal(await tm.get(), refreshed[0]);
  // And again for the new token.
  clock.advance(270_000);
  await settle();
  assert.equal(calls, 3);
  tm.stop();
  clock.advance(10_000_000);
  await settle();
  assert.equal(calls, 3, "no refresh after stop");
});

test("a failed refresh is retried soon while the old token is still used", async () => {
  const clock = new FakeClock(0);
  let calls = 0;
  const errors = [];
  const source = async () => {
    calls += 1;
    if (calls === 2) throw new Error("auth server down");
    return jwt({ exp: (clock.now() + 100_000) / 1000 });
  };
  const tm = new TokenManager(source, clock, () => {}, (e) => errors.push(e));
  const first = await tm.get();
  clock.advance(90_000); // margin 10 s
  await settle();
  assert.equal(calls, 2);
  assert.equal(errors.length, 1);
  assert.equal(await tm.get(), first, "the old token is still valid");
  clock.advance(5_000);
  await settle();
  assert.equal(calls, 3, "retried after 5 s");
  assert.notEqual(await tm.get(), first);
  tm.stop();
});

test("an expired or refused token is asked for again on demand; a fixed token is not", async () => {
  const clock = new FakeClock(0);
  let calls = 0;
  const tm = new TokenManager(async () => `opaque-${++calls}`, clock);
  assert.equal(await tm.get(), "opaque-1");
  assert.equal(await tm.get(), "opaque-1", "no exp: kept");
  tm.invalidate();
  assert.equal(await tm.get(), "opaque-2");
  assert.equal(clock.pending().length, 0, "no exp: no timer");
  const fixed = new TokenManager(jwt({ exp: 1 }), clock);
  assert.equal(fixed.refreshable, false);
  fixed.invalidate();
  assert.equal(await fixed.get(), jwt({ exp: 1 }));
  assert.equal(await new TokenManager(undefined, clock).get(), undefined);
});

test("a token valid for a year is not refreshed early (timers take at most 2^31-1 ms)", async () => {
  const clock = new FakeClock(0);
  let calls = 0;
  const year = 365 * 24 * 3600;
  const tm = new TokenManager(async () => jwt({ exp: year + 1000 * ++calls }), clock);
  await tm.get();
  const [timer] = clock.pending();
  assert.equal(timer.at, 2 ** 31 - 1);
  clock.advance(2 ** 31 - 1);
  await settle();
  assert.equal(calls, 1, "the first step only re-arms");
  const due = (year + 1000) * 1000 - 60_000; // 60 s before exp
  clock.advance(due - clock.now() - 1);
  await settle();
  assert.equal(calls, 1, "not a millisecond early");
  clock.advance(1);
  await settle();
  assert.equal(calls, 2, "refreshed 60 s before expiry");
  tm.stop();
});
