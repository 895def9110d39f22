/**
 * The client's position: one cursor for all subscriptions.
 *
 * The server's cursor is opaque; the client keeps the latest one it was
 * given and which topics it named (the topics subscribed on the stream that
 * handed it out). Beside it, the last message id seen per topic: message ids
 * (`"<ms>-<seq>"`) are ordered, so they drop duplicates across reconnects
 * and transport switches, and they resume a topic the cursor does not name
 * where the protocol takes a per-topic `after` (WebSocket `subscribe`).
 */

/** Compares two message ids `"<ms>-<seq>"` numerically: negative, 0 or positive. */
export function compareIds(a: string, b: string): number {
  const [am, as] = splitId(a);
  const [bm, bs] = splitId(b);
  if (am !== bm) return am < bm ? -1 : 1;
  if (as !== bs) return as < bs ? -1 : 1;
  return 0;
}

function splitId(id: string): [bigint, bigint] {
  const dash = id.indexOf("-");
  try {
    if (dash < 0) return [BigInt(id), 0n];
    return [BigInt(id.slice(0, dash)), BigInt(id.slice(dash + 1))];
  } catch {
    return [0n, 0n];
  }
}

/** How a stream resumes. */
export interface ResumePlan {
  /** The cursor to send, if any. */
  cursor?: string;
  /** Topics the cursor names: they resume from it. */
  covered: string[];
  /** The other topics, with the last id seen where one is known (WebSocket `after`). */
  uncovered: { topic: string; after?: string }[];
}

/** What is persisted (e.g. in `sessionStorage`) so a page reload resumes. */
export interface SavedPosition {
  cursor?: string;
  covered?: string[];
  ids?: Record<string, string>;
}

/** Most topics whose last id is kept. */
const MAX_IDS = 512;

/** The cursor and the per-topic ids. */
export class CursorState {
  /** The latest cursor the server gave. */
  cursor: string | undefined;
  /** Topics that {@link CursorState.cursor} names. */
  covered = new Set<string>();
  /** Last message id delivered, per topic. */
  readonly ids = new Map<string, string>();

  /**
   * Records a message of `topic` with id `id` (and the stream's `cursor`,
   * naming `streamTopics`). Returns false for a duplicate (an id at or below
   * the last one seen for the topic), which must not be delivered.
   */
  message(topic: string, id: string, cursor: string | undefined, streamTopics: Iterable<string>): boolean {
    const last = this.ids.get(topic);
    if (last !== undefined && compareIds(id, last) <= 0) {
      // Still take a newer cursor: it names the same or later positions.
      if (cursor !== undefined) this.setCursor(cursor, streamTopics);
      return false;
    }
    this.ids.delete(topic); // re-insert: the map's order is least recently moved first
    this.ids.set(topic, id);
    if (this.ids.size > MAX_IDS) {
      const oldest = this.ids.keys().next().value;
      if (oldest !== undefined) this.ids.delete(oldest);
    }
    if (cursor !== undefined) this.setCursor(cursor, streamTopics);
    return true;
  }

  /** Takes a cursor that names `streamTopics` (a batch, a gap, a poll answer). */
  setCursor(cursor: string, streamTopics: Iterable<string>): void {
    this.cursor = cursor;
    this.covered = new Set(streamTopics);
  }

  /**
   * A gap on `topic`: the server goes on from `oldest`. When that is not past
   * the last id seen (the history was lost and numbered again, e.g. a flushed
   * store), the old id would drop the new messages as duplicates: it is
   * forgotten.
   */
  gap(topic: string, oldest: string | undefined): void {
    const last = this.ids.get(topic);
    if (last !== undefined && (oldest === undefined || compareIds(oldest, last) <= 0)) this.ids.delete(topic);
  }

  /** Forgets the cursor (the server refused it); the per-topic ids stay. */
  dropCursor(): void {
    this.cursor = undefined;
    this.covered.clear();
  }

  /** Forgets a topic that is no longer subscribed. */
  forget(topic: string): void {
    this.ids.delete(topic);
    this.covered.delete(topic);
  }

  /** How to resume `topics`. */
  plan(topics: Iterable<string>): ResumePlan {
    const plan: ResumePlan = { cursor: this.cursor, covered: [], uncovered: [] };
    for (const topic of topics) {
      if (this.cursor !== undefined && this.covered.has(topic)) plan.covered.push(topic);
      else plan.uncovered.push({ topic, after: this.ids.get(topic) });
    }
    if (plan.covered.length === 0) plan.cursor = undefined;
    return plan;
  }

  /** The persisted form. */
  save(): SavedPosition {
    return { cursor: this.cursor, covered: [...this.covered], ids: Object.fromEntries(this.ids) };
  }

  /** Restores a persisted form; anything malformed is ignored. */
  load(saved: unknown): void {
    if (typeof saved !== "object" || saved === null) return;
    const s = saved as SavedPosition;
    if (typeof s.cursor === "string" && Array.isArray(s.covered)) {
      this.setCursor(s.cursor, s.covered.filter((t): t is string => typeof t === "string"));
    }
    if (typeof s.ids === "object" && s.ids !== null) {
      for (const [topic, id] of Object.entries(s.ids)) if (typeof id === "string") this.ids.set(topic, id);
    }
  }
}
