/**
 * rtgate client: one `subscribe`/`publish` API over WebSocket, SSE (+ HTTP
 * publish) and long polling (+ HTTP publish), with fallback, resume from
 * one cursor, token refresh and presence. Browser and Node (pass a
 * WebSocket implementation where there is no global one).
 *
 * ```js
 * import { Rtgate } from "/v1/client.js";
 * const rt = new Rtgate(location.origin, { token: () => fetch("/token").then((r) => r.text()) });
 * rt.on("state", (s) => console.log(s.state, s.transport ?? s.reason));
 * const off = rt.subscribe("chat.lobby", { onMessage: (m) => console.log(m.data) });
 * await rt.publish("chat.lobby", { text: "hi" });
 * ```
 */
export { Rtgate } from "./client.js";
