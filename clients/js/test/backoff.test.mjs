import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff, backoffCeiling, backoffDelay, BACKOFF_BASE_MS, BACKOFF_CAP_MS } from "../dist/rtgate.js";

test("defaults are 0.5 s base and 30 s cap", () => {
  assert.equal(BACKOFF_BASE_MS, 500);
  assert.equal(BACKOFF_CAP_MS, 30_000);
  assert.deepEqual([0, 1, 2, 3, 5, 6, 7, 100, 5000].map((a) => backoffCeiling(a)), [500, 1000, 2000, 4000, 16_000, 30_000, 30_000, 30_000, 30_000]);
});

test("full jitter spans [0, ceiling) at every attempt, also after the cap", () => {
  for (const attempt of [0, 3, 6, 20, 1e6]) {
    const ceiling = backoffCeiling(attempt);
    assert.equal(backoffDelay(attempt, undefined, undefined, () => 0), 0, `attempt ${attempt}: low end`);
    const high = backoffDelay(attempt, undefined, undefined, () => 0.999999);
    assert.ok(high < ceiling && high >= ceiling - 1, `attempt ${attempt}: high end ${high} of ${ceiling}`);
    // Jitter after the cap: the midpoint is half the cap, not the cap.
    assert.equal(backoffDelay(attempt, undefined, undefined, () => 0.5), Math.floor(ceiling / 2));
  }
});

test("never above the cap, for many draws and custom parameters", () => {
  let seed = 42;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const b = new Backoff({ base: 100, cap: 2_000 }, random);
  let max = 0;
  for (let i = 0; i < 10_000; i++) {
    const d = b.next();
    assert.ok(d >= 0 && d < 2_000, `draw ${i}: ${d}`);
    max = Math.max(max, d);
  }
  assert.equal(b.attempt, 10_000);
  assert.ok(max > 1_900, "the range up to the cap is used");
});

test("attempts grow the ceiling until reset", () => {
  const b = new Backoff({ base: 500, cap: 30_000 }, () => 0.999999);
  const seen = [b.next(), b.next(), b.next(), b.next()];
  assert.deepEqual(seen, [499, 999, 1999, 3999]);
  b.reset();
  assert.equal(b.attempt, 0);
  assert.equal(b.next(), 499, "after a stable connection the first delay is from base again");
});
