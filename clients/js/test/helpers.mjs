// Test doubles shared by the tests: a fake clock, a scripted random source,
// a fake WebSocket class, and a way to let promises settle.

/** A clock whose time moves only when told; timers fire in due order. */
export class FakeClock {
  constructor(now = 1_700_000_000_000) {
    this.t = now;
    this.timers = new Map();
    this.seq = 0;
  }
  now() {
    return this.t;
  }
  setTimeout(fn, ms) {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn, id });
    return id;
  }
  clearTimeout(id) {
    this.timers.delete(id);
  }
  /** Pending timers, soonest first. */
  pending() {
    return [...this.timers.values()].sort((a, b) => a.at - b.at || a.id - b.id);
  }
  /** Moves time forward by `ms`, firing every timer due on the way (in order). */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      const next = this.pending()[0];
      if (!next || next.at > end) break;
      this.timers.delete(next.id);
      this.t = Math.max(this.t, next.at); // an overdue timer fires late, at the current time
      next.fn();
    }
    this.t = end;
  }
  /** Jumps the wall clock without firing anything (a sleeping laptop, a throttled tab). */
  jump(ms) {
    this.t += ms;
  }
}

/** Lets pending promise callbacks and microtasks run. */
export async function settle(rounds = 5) {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

/** A fake WebSocket: records instances and sent frames; the test drives events. */
export function fakeWebSocket() {
  const sockets = [];
  class FakeWS {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      this.closedWith = undefined;
      sockets.push(this);
    }
    get query() {
      return new URL(this.url).searchParams;
    }
    frames() {
      return this.sent.map((s) => JSON.parse(s));
    }
    send(s) {
      this.sent.push(s);
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }
    // driven by the test:
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    receive(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { FakeWS, sockets };
}

/** A JWT-shaped token (unsigned) with the given claims. */
export function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.sig`;
}

/** A streaming `Response` of text/event-stream whose chunks the test pushes. */
export function sseResponse() {
  let controller;
  const body = new ReadableStream({ start: (c) => (controller = c) });
  const enc = new TextEncoder();
  return {
    response: new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } }),
    push: (text) => controller.enqueue(enc.encode(text)),
    end: () => controller.close(),
  };
}
