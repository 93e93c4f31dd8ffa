// Demo chat client for connection-host, speaking the protocol of the `chat` function
// (functions/src/examples/chat.rs), served by the host from this folder (functions/demo.toml).
//
// Connects to ws(s)://{this host}/{stage}?nickname=..., stage "dev" unless the page URL has ?stage=NAME.
// An ES module on top of the client library (clients/js), built into ./lib/ by
// `npm run build:demo` in clients/js. All text that users or the server provide is rendered with
// textContent, never as markup.
import { Client } from "./lib/index.js";

const STAGE = new URLSearchParams(location.search).get("stage") || "dev";
const DEFAULT_ROOM = "lobby";
const CONNECT_TIMEOUT_MS = 10_000; // a handshake that hangs this long counts as failed
const JOIN_ACK_TIMEOUT_MS = 5_000; // queued sends wait at most this long for re-joins
const KEEPALIVE_MS = 5 * 60_000; // the server closes after 10 minutes without a message
const PONG_TIMEOUT_MS = 10_000; // no answer to a ping this long: the connection is dead
const NICKNAME_RE = /^[A-Za-z0-9 _.-]{1,32}$/;
const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const TEXT_MAX = 2000;

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("state"), notice: $("notice"), login: $("login"), nickname: $("nickname"),
  connect: $("connect"), disconnect: $("disconnect"), rooms: $("rooms"), joinForm: $("join-form"),
  room: $("room"), currentRoom: $("current-room"), members: $("members"), leave: $("leave"),
  logs: $("logs"), sendForm: $("send-form"), message: $("message"), send: $("send"), queue: $("queue"),
};

// ---- connection ------------------------------------------------------------------------------
// Reconnects, backoff, the offline queue and the keep-alive are the client library's (clients/js).
let client = null; // the Client while the user wants to be connected, or null
let nickname = "";
const pendingJoins = new Set(); // rooms re-joined on this connection, not yet acknowledged
let joinsDone = null; // resolves the wait for pendingJoins

function setState(state, text) {
  ui.state.dataset.state = state; // exactly one of connecting|connected|reconnecting|disconnected
  ui.state.textContent = text || state;
  const on = state !== "disconnected";
  ui.connect.disabled = on;
  ui.nickname.disabled = on;
  ui.disconnect.disabled = !on;
}

function notice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

function url() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/${encodeURIComponent(STAGE)}?nickname=${encodeURIComponent(nickname)}`;
}

// The server forgot our memberships with the old connection: join again, and let the library hold
// queued messages until the joins are acknowledged (the server may handle one connection's messages
// concurrently, so a send right behind its join could arrive "before" it).
function rejoin(sendNow) {
  pendingJoins.clear();
  for (const room of rooms.keys()) {
    pendingJoins.add(room);
    sendNow(JSON.stringify({ action: "join", room }));
  }
  if (pendingJoins.size === 0) return undefined;
  return new Promise((resolve) => {
    joinsDone = resolve;
    setTimeout(resolve, JOIN_ACK_TIMEOUT_MS);
  });
}

// A refused handshake (even a 400 for a bad nickname) looks like a host that is down to a browser,
// so both are retried with backoff until the user clicks Disconnect. Nicknames are checked here
// first, so the server's refusal is unexpected.
function connect(name) {
  nickname = name;
  if (rooms.size === 0) addRoom(DEFAULT_ROOM);
  client = new Client({
    url: url(),
    connectTimeout: CONNECT_TIMEOUT_MS,
    // The chat function answers {"action":"ping"} with {"type":"pong"}.
    heartbeat: { interval: KEEPALIVE_MS, timeout: PONG_TIMEOUT_MS, message: '{"action":"ping"}' },
    onConnect: (_info, sendNow) => rejoin(sendNow),
    // With the groups rooms backend the host announces joins and leaves itself (presence = "frames").
    presence: true,
  });
  client.on("state", (state) => {
    if (state !== "connected") markAllUnjoined();
    if (state === "connected") notice("");
    setState(state, state === "connected" ? `connected as ${nickname}` : state === "connecting" ? `connecting as ${nickname}…` : state);
  });
  client.on("retry", ({ attempt, delay }) =>
    setState(client.state, `${client.state}: attempt ${attempt} in ${(delay / 1000).toFixed(1)} s`));
  client.on("message", receive);
  client.on("presence", hostPresence);
  client.on("queue", showQueue);
  client.connect();
}

function disconnect() {
  const c = client;
  client = null;
  pendingJoins.clear();
  if (c) c.close(1000, "bye");
  markAllUnjoined();
  showQueue(0);
  setState("disconnected", "disconnected");
}

const isOpen = () => client !== null && client.state === "connected";

function send(msg) {
  if (client) client.send(JSON.stringify(msg));
}

function showQueue(n) {
  ui.queue.textContent = n === 0 ? "" : `${n} message${n === 1 ? "" : "s"} waiting to be sent`;
}

// ---- rooms and messages ----------------------------------------------------------------------
const rooms = new Map(); // room name -> { log: <ol>, item: <li> in the room list, unread }
const nicknames = new Map(); // connection ID -> nickname, as seen in messages and presence
let current = null;

function addRoom(name) {
  if (rooms.has(name)) return rooms.get(name);
  const log = document.createElement("ol");
  log.className = "log";
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "polite");
  log.setAttribute("aria-label", `Messages in ${name}`);
  log.hidden = true;
  ui.logs.append(log);

  const item = document.createElement("li");
  const select = document.createElement("button");
  select.type = "button";
  select.className = "room";
  select.dataset.room = name;
  select.addEventListener("click", () => selectRoom(name));
  const badge = document.createElement("span");
  badge.className = "unread";
  item.append(select);
  ui.rooms.append(item);

  const room = { log, item, select, badge, unread: 0, joined: false };
  rooms.set(name, room);
  renderRoomButton(name);
  return room;
}

function renderRoomButton(name) {
  const room = rooms.get(name);
  room.select.textContent = name;
  if (!room.joined) room.select.append(" (joining)");
  room.badge.textContent = room.unread ? ` ${room.unread} new` : "";
  room.select.append(room.badge);
  room.select.setAttribute("aria-current", name === current ? "true" : "false");
  room.select.dataset.joined = String(room.joined);
}

function selectRoom(name) {
  current = rooms.has(name) ? name : null;
  for (const [n, room] of rooms) {
    room.log.hidden = n !== current;
    if (n === current) room.unread = 0;
    renderRoomButton(n);
  }
  ui.currentRoom.textContent = current ?? "(none)";
  ui.members.disabled = ui.leave.disabled = current === null;
  ui.message.disabled = ui.send.disabled = current === null;
}

function markAllUnjoined() {
  for (const [name, room] of rooms) {
    room.joined = false;
    renderRoomButton(name);
  }
}

function removeRoom(name) {
  const room = rooms.get(name);
  if (!room) return;
  room.log.remove();
  room.item.remove();
  rooms.delete(name);
  if (current === name) selectRoom(rooms.keys().next().value ?? null);
}

function append(roomName, className, parts) {
  const room = rooms.get(roomName);
  if (!room) return;
  const li = document.createElement("li");
  li.className = className;
  for (const [cls, text, tag] of parts) {
    const el = document.createElement(tag || "span");
    el.className = cls;
    el.textContent = text; // never markup
    li.append(el, " ");
  }
  const stick = room.log.scrollTop + room.log.clientHeight >= room.log.scrollHeight - 4;
  room.log.append(li);
  if (stick) room.log.scrollTop = room.log.scrollHeight;
  if (roomName !== current) {
    room.unread += 1;
    renderRoomButton(roomName);
  }
}

const who = (id) => nicknames.get(id) || `${String(id).slice(0, 6)}…`;

function announce(room, name, action) {
  append(room, "event", [["text", `${name} ${action === "join" ? "joined" : "left"}`]]);
}

// The host's notice (the groups rooms backend): the principal is the authorizer's, `guest:<nickname>`
// for guests; a signed-in user's is its `sub`, so a nickname seen in its messages wins.
function hostPresence({ group, action, connectionId, principal }) {
  if (!nicknames.has(connectionId) && principal.startsWith("guest:")) nicknames.set(connectionId, principal.slice(6));
  announce(group, who(connectionId), action);
}

function receive(data) {
  let msg;
  try { msg = JSON.parse(data); } catch { return; }
  if (msg === null || typeof msg !== "object") return;
  const room = typeof msg.room === "string" ? msg.room : "";
  switch (msg.type) {
    case "joined": {
      const r = rooms.get(room);
      if (r) { r.joined = true; renderRoomButton(room); }
      pendingJoins.delete(room);
      if (pendingJoins.size === 0 && joinsDone) joinsDone();
      break;
    }
    case "left":
      break; // removed from the list when the user clicked Leave
    case "message": {
      nicknames.set(msg.connectionId, String(msg.nickname));
      const time = new Date(Number(msg.sentAt) || Date.now());
      append(room, "msg", [
        ["time", time.toLocaleTimeString(), "time"],
        ["nick", String(msg.nickname)],
        ["text", String(msg.text)],
      ]);
      break;
    }
    case "presence": // the chat function's own notice (the DynamoDB rooms backend)
      nicknames.set(msg.connectionId, String(msg.nickname));
      announce(room, String(msg.nickname), msg.event);
      break;
    case "members": {
      const ids = Array.isArray(msg.connectionIds) ? msg.connectionIds : [];
      append(room, "event", [["text", `${ids.length} in ${room}: ${ids.map(who).join(", ")}`]]);
      break;
    }
    case "error":
      notice(`server: ${msg.message}`);
      break;
    default:
      break; // pong and anything new
  }
}

// ---- user actions ----------------------------------------------------------------------------
ui.login.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = ui.nickname.value.trim();
  if (!NICKNAME_RE.test(name)) {
    notice("Nickname refused: 1-32 letters, digits, space, _ . -");
    setState("disconnected", "disconnected: nickname refused");
    ui.nickname.focus();
    return;
  }
  notice("");
  connect(name);
});

ui.disconnect.addEventListener("click", disconnect);

ui.joinForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = ui.room.value.trim();
  if (!ROOM_RE.test(name)) {
    notice("Room names are 1-64 letters, digits, _ . -");
    return;
  }
  notice("");
  const isNew = !rooms.has(name);
  addRoom(name);
  selectRoom(name);
  // Joins are not queued: on every (re)connect all rooms in the list are joined.
  if (isNew && isOpen()) send({ action: "join", room: name });
});

ui.leave.addEventListener("click", () => {
  if (current === null) return;
  const name = current;
  const joinSent = rooms.get(name).joined || pendingJoins.has(name);
  removeRoom(name);
  pendingJoins.delete(name);
  if (isOpen() && joinSent) send({ action: "leave", room: name });
});

ui.members.addEventListener("click", () => {
  if (current !== null) send({ action: "list", room: current });
});

ui.sendForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = ui.message.value.trim();
  if (current === null || text === "") return;
  if (text.length > TEXT_MAX) {
    notice(`Messages are at most ${TEXT_MAX} characters`);
    return;
  }
  send({ action: "send", room: current, text });
  ui.message.value = "";
  ui.message.focus();
});

setState("disconnected", "disconnected");
addRoom(DEFAULT_ROOM);
selectRoom(DEFAULT_ROOM);
