import { test } from "node:test";
import assert from "node:assert/strict";
import { CursorState, compareIds } from "../dist/rtgate.js";

test("message ids compare numerically, ms then seq", () => {
  assert.ok(compareIds("10-0", "9-5") > 0);
  assert.ok(compareIds("9-10", "9-9") > 0);
  assert.ok(compareIds("1700000000000-3", "1700000000000-3") === 0);
  assert.ok(compareIds("1700000000000-2", "1700000000001-0") < 0);
  assert.ok(compareIds("18446744073709551615-1", "18446744073709551615-0") > 0, "beyond 2^53");
});

test("duplicates are dropped per topic; the latest cursor is kept with the topics it names", () => {
  const c = new CursorState();
  assert.equal(c.message("a", "5-0", "C1", ["a"]), true);
  assert.equal(c.message("a", "5-0", "C1", ["a"]), false, "same id again");
  assert.equal(c.message("a", "4-9", "C0", ["a"]), false, "older id");
  assert.equal(c.message("b", "1-0", "C2", ["a", "b"]), true, "another topic is independent");
  assert.equal(c.message("a", "6-0", undefined, ["a", "b"]), true);
  assert.equal(c.cursor, "C2", "a message without a cursor keeps the last one");
  assert.deepEqual([...c.covered].sort(), ["a", "b"]);
  assert.deepEqual(Object.fromEntries(c.ids), { b: "1-0", a: "6-0" });
});

test("resume plan: covered topics resume from the cursor, the others from their last id", () => {
  const c = new CursorState();
  assert.deepEqual(c.plan(["a"]), { cursor: undefined, covered: [], uncovered: [{ topic: "a", after: undefined }] });
  c.message("a", "2-0", "CA", ["a"]);
  c.message("b", "7-1", undefined, ["a"]);
  const p = c.plan(["a", "b", "c"]);
  assert.equal(p.cursor, "CA");
  assert.deepEqual(p.covered, ["a"]);
  assert.deepEqual(p.uncovered, [{ topic: "b", after: "7-1" }, { topic: "c", after: undefined }]);
  // A poll answer's cursor names every topic of the request.
  c.setCursor("CABC", ["a", "b", "c"]);
  assert.deepEqual(c.plan(["c", "a"]).covered, ["c", "a"]);
  // A refused cursor is dropped; the ids still resume per topic.
  c.dropCursor();
  const q = c.plan(["a", "b"]);
  assert.equal(q.cursor, undefined);
  assert.deepEqual(q.uncovered, [{ topic: "a", after: "2-0" }, { topic: "b", after: "7-1" }]);
});

test("forget drops a topic's id and coverage", () => {
  const c = new CursorState();
  c.message("a", "1-0", "C", ["a", "b"]);
  c.message("b", "1-0", "C", ["a", "b"]);
  c.forget("b");
  assert.deepEqual([...c.covered], ["a"]);
  assert.equal(c.ids.has("b"), false);
  assert.equal(c.message("b", "1-0", undefined, ["a"]), true, "a re-subscribed topic starts fresh");
});

test("saved position round-trips; malformed input is ignored", () => {
  const c = new CursorState();
  c.message("a", "3-0", "C3", ["a", "b"]);
  c.message("b", "9-0", "C9", ["a", "b"]);
  const restored = new CursorState();
  restored.load(JSON.parse(JSON.stringify(c.save())));
  assert.equal(restored.cursor, "C9");
  assert.deepEqual([...restored.covered], ["a", "b"]);
  assert.equal(restored.message("b", "9-0", undefined, []), false, "no duplicate after a reload");
  for (const bad of [null, 7, "x", { cursor: 5 }, { ids: { a: 1 } }]) {
    const s = new CursorState();
    s.load(bad);
    assert.equal(s.cursor, undefined);
    assert.equal(s.ids.size, 0);
  }
});

test("the number of topics whose id is kept is bounded", () => {
  const c = new CursorState();
  for (let i = 0; i < 600; i++) c.message(`t${i}`, "1-0", undefined, []);
  assert.equal(c.ids.size, 512);
  assert.equal(c.ids.has("t0"), false, "least recently moved goes first");
  assert.equal(c.ids.has("t599"), true);
});

test("a gap keeps the last id unless the history was numbered again below it", () => {
  const c = new CursorState();
  c.message("a", "100-0", undefined, []);
  c.gap("a", "200-0"); // trimmed: the server goes on past what was seen
  assert.equal(c.message("a", "100-0", undefined, []), false, "still a duplicate guard");
  c.gap("a", "5-0"); // lost and renumbered: new messages have lower ids
  assert.equal(c.ids.has("a"), false);
  assert.equal(c.message("a", "5-0", undefined, []), true, "not dropped as a duplicate");
  c.gap("b", "1-0"); // a topic never seen: nothing to forget
  assert.equal(c.ids.has("b"), false);
});
