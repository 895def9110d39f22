import { test } from "node:test";
import assert from "node:assert/strict";
import { SseParser } from "../dist/rtgate.js";

function collect() {
  const out = { events: [], comments: [], retries: [], ids: [] };
  const p = new SseParser({
    onEvent: (e) => out.events.push(e),
    onComment: (c) => out.comments.push(c),
    onRetry: (ms) => out.retries.push(ms),
    onId: (id) => out.ids.push(id),
  });
  return { p, out };
}

const STREAM = 'retry: 2000\n\n: ping\n\nid: C1\ndata: {"topic":"a","id":"1-0","ts":1,"data":{"x":1}}\n\nevent: gap\nid: C2\ndata: {"topic":"a","after":"1-0","oldest":"5-0"}\n\n';

test("a whole stream: retry, comment, message and named event", () => {
  const { p, out } = collect();
  p.feed(STREAM);
  assert.deepEqual(out.retries, [2000]);
  assert.deepEqual(out.comments, ["ping"]);
  assert.equal(out.events.length, 2);
  assert.deepEqual(out.events[0], { event: "message", data: '{"topic":"a","id":"1-0","ts":1,"data":{"x":1}}', id: "C1" });
  assert.equal(out.events[1].event, "gap");
  assert.equal(out.events[1].id, "C2");
  assert.equal(p.lastEventId, "C2");
});

test("the same events whatever the chunk boundaries (every split point, one byte at a time)", () => {
  const whole = collect();
  whole.p.feed(STREAM);
  for (let i = 0; i <= STREAM.length; i++) {
    const { p, out } = collect();
    p.feed(STREAM.slice(0, i));
    p.feed(STREAM.slice(i));
    assert.deepEqual(out, whole.out, `split at ${i}`);
  }
  const { p, out } = collect();
  for (const ch of STREAM) p.feed(ch);
  assert.deepEqual(out, whole.out);
});

test("CRLF and CR line ends, also a CRLF split across chunks", () => {
  const crlf = STREAM.replace(/\n/g, "\r\n");
  const cr = STREAM.replace(/\n/g, "\r");
  const whole = collect();
  whole.p.feed(STREAM);
  for (const text of [crlf, cr]) {
    for (let i = 0; i <= text.length; i++) {
      const { p, out } = collect();
      p.feed(text.slice(0, i));
      p.feed(text.slice(i));
      assert.deepEqual(out, whole.out, `${JSON.stringify(text.slice(i - 1, i + 1))} at ${i}`);
    }
  }
  // A CR at the end of a chunk and an LF starting the next is one line end, not two.
  const { p, out } = collect();
  p.feed("data: a\r");
  p.feed("\ndata: b\r\n\r\n");
  assert.deepEqual(out.events.map((e) => e.data), ["a\nb"]);
});

test("multi-line data joins with LF; one leading space is dropped; unknown fields are ignored", () => {
  const { p, out } = collect();
  p.feed('data:{"a":\ndata:  1}\nfoo: bar\nevent\ndata\n\n');
  assert.deepEqual(out.events, [{ event: "message", data: '{"a":\n 1}\n', id: "" }]);
});

test("id without data sets the last event id but dispatches nothing", () => {
  const { p, out } = collect();
  p.feed("id: C7\n\n");
  assert.equal(out.events.length, 0);
  assert.deepEqual(out.ids, ["C7"]);
  assert.equal(p.lastEventId, "C7");
  p.feed("data: x\n\n");
  assert.equal(out.events[0].id, "C7", "the id carries over to later events");
  p.feed("id\n\n");
  assert.equal(p.lastEventId, "", "an empty id resets it");
  p.feed("id: a\0b\n\n");
  assert.equal(p.lastEventId, "", "an id with NUL is ignored");
});

test("retry takes digits only; a BOM is dropped; an unfinished event at the end is discarded", () => {
  const { p, out } = collect();
  p.feed("\uFEFFretry: 15s\nretry: 1500\nretry:700\n\ndata: half");
  p.end();
  assert.deepEqual(out.retries, [1500, 700]);
  assert.equal(out.events.length, 0);
  const b = collect();
  b.p.feed("\uFEFF: hi\n");
  assert.deepEqual(b.out.comments, ["hi"]);
});

test("event names are reset after each dispatch", () => {
  const { p, out } = collect();
  p.feed("event: join\ndata: {}\n\ndata: {}\n\nevent: leave\n\ndata: 1\n\n");
  assert.deepEqual(out.events.map((e) => e.event), ["join", "message", "message"]);
});
