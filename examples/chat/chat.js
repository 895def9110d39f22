// rtgate chat demo: rooms are topics (`chat.<room>`), history on join, "is
// typing" as ephemeral messages, who is online from presence, a transport
// indicator and a "force long polling" switch. Served by `rtgate --demo`
// at /demo/; the client library comes from the gateway itself.
import { Rtgate, compareIds } from "/v1/client.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ROOMS = ["lobby", "random", "help"];
const HISTORY = 50;
const TYPING_EVERY_MS = 1500; // at most one "typing" per this while typing
const TYPING_SHOWN_MS = 3000; // how long "X is typing" stays without news

const state = {
  name: params.get("name") || sessionStorage.getItem("chat.name") || `guest-${Math.random().toString(16).slice(2, 6)}`,
  room: sanitizeRoom(params.get("room") || sessionStorage.getItem("chat.room") || "lobby"),
  forcePoll: params.has("poll") ? params.get("poll") === "1" : sessionStorage.getItem("chat.poll") === "1",
  rt: null,
  unsubscribe: null,
  messages: [], // {id, ts, name, text} in id order
  ids: new Set(),
  typing: new Map(), // name -> timeout
  online: new Map(), // user -> presence entry
  names: new Map(), // user -> name, learnt from their ephemeral messages
  lastTypingSent: 0,
  me: undefined, // our own user id, once known
};

function sanitizeRoom(r) {
  const clean = String(r).toLowerCase().replace(/[^a-z0-9_-]/g, "").slice(0, 40);
  return clean || "lobby";
}
const topicOf = (room) => `chat.${room}`;

// ---- rendering (textContent only: every string here came from someone else) ----

function renderRooms() {
  const list = [...new Set([...ROOMS, state.room])];
  $("rooms").replaceChildren(...list.map((r) => {
    const li = document.createElement("li");
    li.textContent = `# ${r}`;
    li.dataset.room = r;
    if (r === state.room) li.className = "current";
    li.onclick = () => join(r);
    return li;
  }));
  $("room-title").textContent = `room #${state.room} (topic ${topicOf(state.room)})`;
}

function messageItem(m) {
  const li = document.createElement("li");
  li.dataset.id = m.id;
  if (m.name === state.name) li.className = "me";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = m.name;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = m.text;
  const when = document.createElement("span");
  when.className = "when";
  when.textContent = new Date(m.ts).toLocaleTimeString();
  li.append(who, text, when);
  return li;
}

function system(text, id) {
  const li = document.createElement("li");
  li.className = "system";
  if (id) li.id = id;
  li.textContent = text;
  $("messages").append(li);
  scroll();
}

function scroll() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

/** Adds a stored message once, in id order (history and live may overlap). */
function addMessage(raw) {
  const d = raw.data;
  if (!d || typeof d !== "object" || typeof d.text !== "string" || state.ids.has(raw.id)) return;
  const m = { id: raw.id, ts: raw.ts, name: typeof d.name === "string" ? d.name.slice(0, 40) : "?", text: d.text.slice(0, 2000) };
  state.ids.add(m.id);
  document.getElementById("welcome")?.remove();
  const last = state.messages[state.messages.length - 1];
  const box = $("messages");
  if (!last || compareIds(last.id, m.id) < 0) {
    state.messages.push(m);
    box.append(messageItem(m));
  } else {
    state.messages.push(m);
    state.messages.sort((a, b) => compareIds(a.id, b.id));
    box.querySelectorAll("li[data-id]").forEach((e) => e.remove());
    box.prepend(...state.messages.map(messageItem));
  }
  clearTyping(m.name);
  scroll();
}

function renderTyping() {
  const names = [...state.typing.keys()];
  $("typing").textContent = names.length === 0 ? ""
    : names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
}

function clearTyping(name) {
  const t = state.typing.get(name);
  if (t !== undefined) {
    clearTimeout(t);
    state.typing.delete(name);
    renderTyping();
  }
}

function onEphemeral(e) {
  const d = e.data;
  if (!d || typeof d.name !== "string") return;
  // Who is who: presence names users by id (the connection id while auth is
  // off); ephemeral messages carry the same id as `user`, and our name.
  if (e.user && state.names.get(e.user) !== d.name.slice(0, 40)) {
    state.names.set(e.user, d.name.slice(0, 40));
    renderOnline();
  }
  if (d.type === "hello") {
    // An answer to our hello names us (our own messages never come back).
    if (typeof d.to === "string" && d.to && !state.names.has(d.to) && d.reply === false) {
      state.me ??= d.to;
      if (state.me === d.to) { state.names.set(d.to, state.name); renderOnline(); }
    }
    if (d.reply === true && e.user) sayHello(false, e.user);
  }
  if (d.type !== "typing" || d.name === state.name) return;
  const name = d.name.slice(0, 40);
  clearTimeout(state.typing.get(name));
  state.typing.set(name, setTimeout(() => clearTyping(name), TYPING_SHOWN_MS));
  renderTyping();
}

function label(entry) {
  const info = entry.info && typeof entry.info === "object" ? entry.info : {};
  const name = typeof info.name === "string" ? info.name : state.names.get(entry.user) ?? entry.user;
  return String(name).slice(0, 40);
}

/**
 * Tells the room our name (an ephemeral message). `reply` asks the others to
 * answer with theirs; an answer names whom it answers (`to`), which is how a
 * page learns its own user id (the connection id while auth is off).
 */
function sayHello(reply, to) {
  state.rt?.publish(topicOf(state.room), { type: "hello", name: state.name, reply, to }, { ephemeral: true }).catch(() => {});
}

function renderOnline() {
  const users = new Map();
  for (const e of state.online.values()) users.set(e.user, label(e));
  $("online").replaceChildren(...[...users.values()].sort().map((n) => {
    const li = document.createElement("li");
    li.textContent = n;
    return li;
  }));
  $("online-count").textContent = `(${users.size})`;
}

// ---- the connection ----

function connect() {
  if (state.rt) state.rt.close();
  // With auth on, pass a token in the URL (?token=…, e.g. from `rtgate token`).
  const options = {};
  if (state.forcePoll) options.transports = ["poll"];
  if (params.get("token")) options.token = params.get("token");
  const rt = new Rtgate(location.origin, options);
  state.rt = rt;
  rt.on("state", (s) => {
    const pill = $("transport");
    pill.className = `pill ${s.state}`;
    pill.textContent = s.state === "connected" ? s.transport
      : s.state === "connecting" ? `connecting (${s.transport})…`
      : `${s.state}: ${s.reason}`;
    pill.dataset.state = s.state;
    pill.dataset.transport = s.transport ?? "";
  });
  rt.on("error", (e) => console.warn("rtgate:", e));
  join(state.room, true);
}

async function join(room, reconnecting = false) {
  room = sanitizeRoom(room);
  if (room === state.room && state.unsubscribe && !reconnecting) return;
  if (state.unsubscribe) state.unsubscribe();
  state.room = room;
  sessionStorage.setItem("chat.room", room);
  state.messages = [];
  state.ids = new Set();
  state.online = new Map();
  for (const n of [...state.typing.keys()]) clearTyping(n);
  $("messages").replaceChildren();
  renderRooms();
  renderOnline();
  const topic = topicOf(room);
  const rt = state.rt;
  // Live first, then the history: whatever arrives twice is dropped by id.
  state.unsubscribe = rt.subscribe(topic, {
    presence: true,
    onMessage: addMessage,
    onEphemeral,
    onGap: (g) => system(`(older messages were trimmed; history resumes at ${g.oldest})`),
    onJoin: (e) => { state.online.set(e.user, e); renderOnline(); },
    onLeave: (e) => { state.online.delete(e.user); renderOnline(); },
    onError: (e) => system(`cannot join ${topic}: ${e.message ?? e}`),
  });
  try {
    const page = await rt.history(topic, { limit: HISTORY });
    if (state.room !== room) return;
    if (page.messages.length === 0 && state.messages.length === 0) system(`Welcome to #${room}. Nobody has said anything yet.`, "welcome");
    page.messages.forEach(addMessage);
  } catch (e) {
    system(`history unavailable: ${e.message ?? e}`);
  }
  refreshPresence(room);
}

async function refreshPresence(room) {
  const note = $("presence-note");
  try {
    const p = await state.rt.presence(topicOf(room));
    if (state.room !== room) return;
    for (const c of p.clients ?? []) state.online.set(c.user, c);
    // Alone in the room: the one entry is us.
    const users = [...new Set((p.clients ?? []).map((c) => c.user))];
    if (users.length === 1 && !state.names.has(users[0])) { state.me = users[0]; state.names.set(users[0], state.name); }
    sayHello(true);
    note.textContent = p.users > (p.clients?.length ?? 0) ? `${p.users} users in all` : "";
    renderOnline();
  } catch (e) {
    // Presence is optional: the chat works without it.
    note.textContent = `presence unavailable: ${e.message ?? e}`;
    $("online-count").textContent = "";
  }
}

// ---- input ----

$("name").value = state.name;
$("name").onchange = () => {
  state.name = $("name").value.trim().slice(0, 40) || state.name;
  $("name").value = state.name;
  sessionStorage.setItem("chat.name", state.name);
};
$("forcepoll").checked = state.forcePoll;
$("forcepoll").onchange = () => {
  state.forcePoll = $("forcepoll").checked;
  sessionStorage.setItem("chat.poll", state.forcePoll ? "1" : "0");
  system(state.forcePoll ? "switching to long polling (no typing indicators or presence events over it)…" : "switching back to the best transport…");
  connect();
};
$("newroom").onsubmit = (ev) => {
  ev.preventDefault();
  const r = $("roomname").value;
  $("roomname").value = "";
  if (r.trim()) join(r);
};
$("text").oninput = () => {
  const now = Date.now();
  if ($("text").value && now - state.lastTypingSent > TYPING_EVERY_MS) {
    state.lastTypingSent = now;
    state.rt.publish(topicOf(state.room), { type: "typing", name: state.name }, { ephemeral: true }).catch(() => {});
  }
};
$("send").onsubmit = async (ev) => {
  ev.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  state.lastTypingSent = 0;
  try {
    await state.rt.publish(topicOf(state.room), { name: state.name, text });
  } catch (e) {
    system(`not sent: ${e.message ?? e}`);
  }
};

renderRooms();
connect();
