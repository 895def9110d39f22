/**
 * An incremental Server-Sent Events parser (the HTML event-stream format),
 * for reading SSE over `fetch` where there is no `EventSource` (Node) or
 * where comments must be seen (the heartbeat): lines end at CRLF, LF or CR,
 * also when a chunk boundary splits a CRLF; a leading BOM is dropped; `:`
 * starts a comment; `data` lines are joined with LF; `id` sets the last
 * event id even for an event without data; `retry` takes digits only.
 */

/** One dispatched event. */
export interface SseEvent {
  /** `event:` field, or `"message"`. */
  event: string;
  /** The `data:` lines joined with LF. */
  data: string;
  /** The last event id in effect (after this event's `id:`, if any). */
  id: string;
}

/** Callbacks of {@link SseParser}. */
export interface SseHandlers {
  /** An event was dispatched. */
  onEvent?(event: SseEvent): void;
  /** A comment line (`: ping`), without the colon. */
  onComment?(text: string): void;
  /** A valid `retry:` field, in milliseconds. */
  onRetry?(ms: number): void;
  /** An `id:` field set the last event id (also without data). */
  onId?(id: string): void;
}

/** Parses text as it arrives; feed it decoded chunks. */
export class SseParser {
  /** The last event id (what a reconnect sends as `Last-Event-ID`). */
  lastEventId = "";
  private buf = "";
  private afterCr = false;
  private started = false;
  private data: string[] = [];
  private event = "";
  private sawData = false;

  constructor(private readonly handlers: SseHandlers = {}) {}

  /** Parses a chunk of the stream. */
  feed(chunk: string): void {
    let text = chunk;
    if (!this.started && text.length > 0) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.afterCr && text.startsWith("\n")) text = text.slice(1); // CRLF split over chunks
    this.afterCr = false;
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(this.buf + text.slice(start, i));
      this.buf = "";
      if (c === 13) {
        if (i + 1 < text.length) {
          if (text.charCodeAt(i + 1) === 10) i++;
        } else {
          this.afterCr = true;
        }
      }
      start = i + 1;
    }
    this.buf += text.slice(start);
  }

  /** The stream ended: an event without its blank line is discarded (as the spec says). */
  end(): void {
    this.buf = "";
    this.resetEvent();
  }

  private line(line: string): void {
    if (line === "") return this.dispatch();
    if (line.charCodeAt(0) === 58 /* : */) {
      this.handlers.onComment?.(line.slice(1).replace(/^ /, ""));
      return;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "event":
        this.event = value;
        break;
      case "data":
        this.data.push(value);
        this.sawData = true;
        break;
      case "id":
        if (!value.includes("\0")) {
          this.lastEventId = value;
          this.handlers.onId?.(value);
        }
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.handlers.onRetry?.(parseInt(value, 10));
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  private dispatch(): void {
    if (!this.sawData) {
      this.event = "";
      return;
    }
    const ev: SseEvent = { event: this.event || "message", data: this.data.join("\n"), id: this.lastEventId };
    this.resetEvent();
    this.handlers.onEvent?.(ev);
  }

  private resetEvent(): void {
    this.data = [];
    this.event = "";
    this.sawData = false;
  }
}
