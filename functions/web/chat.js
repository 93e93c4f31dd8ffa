// Demo chat client for connection-host, speaking the protocol of the `chat` function
// (functions/src/examples/chat.rs), served by the host from this folder (functions/demo.toml).
//
// Connects to ws(s)://{this host}/{stage}?nickname=..., stage "dev" unless the page URL has ?stage=NAME.
// Plain JavaScript, no build step. All text that users or the server provide is rendered with
// textContent, never as markup.
"use strict";

(() => {
  const STAGE = new URLSearchParams(location.search).get("stage") || "dev";
  const DEFAULT_ROOM = "lobby";
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_MAX_MS = 30_000;
  const CONNECT_TIMEOUT_MS = 10_000; // a handshake that hangs this long counts as failed
  const JOIN_ACK_TIMEOUT_MS = 5_000; // queued sends wait at most this long for re-joins
  const KEEPALIVE_MS = 5 * 60_000; // the server closes after 10 minutes without a message
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
  let ws = null; // the current WebSocket, or null
  let wanted = false; // the user wants to be connected (false after "Disconnect")
  let nickname = "";
  let attempt = 0; // failed attempts since the last successful open
  let retryTimer = 0, connectTimer = 0, keepaliveTimer = 0, joinAckTimer = 0;
  const outbox = []; // JSON strings waiting to be sent, in order
  const pendingJoins = new Set(); // joins sent on this connection, not yet acknowledged

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

  function open() {
    clearTimeout(retryTimer);
    const socket = new WebSocket(url());
    ws = socket;
    connectTimer = setTimeout(() => socket.close(), CONNECT_TIMEOUT_MS);
    socket.onopen = () => {
      if (ws !== socket) return;
      clearTimeout(connectTimer);
      attempt = 0; // the connection came up: the next failure starts the backoff again
      setState("connected", `connected as ${nickname}`);
      notice("");
      // The server forgot our memberships with the old connection: join again, and hold queued
      // messages until the joins are acknowledged (the server may handle one connection's messages
      // concurrently, so a send right behind its join could arrive "before" it).
      pendingJoins.clear();
      armKeepalive();
      for (const room of rooms.keys()) sendJoin(room);
      flush();
    };
    socket.onmessage = (ev) => { if (ws === socket) receive(ev.data); };
    // A close before open (host down, or the handshake refused: the browser cannot tell which, not
    // even a 400 for a bad nickname) and a close after open are both retried with backoff, until the
    // user clicks Disconnect. Nicknames are checked here first, so the server's refusal is unexpected.
    socket.onclose = () => {
      if (ws !== socket) return;
      clearTimeout(connectTimer);
      ws = null;
      pendingJoins.clear();
      markAllUnjoined();
      if (wanted) scheduleRetry();
    };
    socket.onerror = () => {}; // always followed by close
  }

  // delay = min(30 s, 500 ms * 2^attempt + random 0..1 s)
  function scheduleRetry() {
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt + Math.random() * 1000);
    attempt += 1;
    setState("reconnecting", `reconnecting: attempt ${attempt} in ${(delay / 1000).toFixed(1)} s`);
    retryTimer = setTimeout(() => {
      setState("reconnecting", `reconnecting: attempt ${attempt}…`);
      open();
    }, delay);
  }

  function connect(name) {
    nickname = name;
    wanted = true;
    attempt = 0;
    if (rooms.size === 0) addRoom(DEFAULT_ROOM);
    setState("connecting", `connecting as ${nickname}…`);
    open();
  }

  function disconnect() {
    wanted = false;
    clearTimeout(retryTimer);
    clearTimeout(connectTimer);
    const socket = ws;
    ws = null;
    pendingJoins.clear();
    if (socket) socket.close(1000, "bye");
    markAllUnjoined();
    setState("disconnected", "disconnected");
  }

  const isOpen = () => ws !== null && ws.readyState === WebSocket.OPEN;

  function transmit(json) {
    ws.send(json);
    armKeepalive();
  }

  // Keep-alive: a ping 5 minutes after the connection opened or the last message was sent.
  function armKeepalive() {
    clearTimeout(keepaliveTimer);
    keepaliveTimer = setTimeout(() => { if (isOpen()) transmit('{"action":"ping"}'); }, KEEPALIVE_MS);
  }

  // Messages go out in order: straight away when connected and no join is pending, else queued.
  function send(msg) {
    outbox.push(JSON.stringify(msg));
    flush();
  }

  function flush() {
    while (outbox.length > 0 && isOpen() && pendingJoins.size === 0) transmit(outbox.shift());
    ui.queue.textContent = outbox.length === 0 ? "" :
      `${outbox.length} message${outbox.length === 1 ? "" : "s"} waiting to be sent`;
  }

  function sendJoin(room) {
    pendingJoins.add(room);
    transmit(JSON.stringify({ action: "join", room }));
    clearTimeout(joinAckTimer);
    joinAckTimer = setTimeout(() => { pendingJoins.clear(); flush(); }, JOIN_ACK_TIMEOUT_MS);
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
        flush();
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
      case "presence":
        nicknames.set(msg.connectionId, String(msg.nickname));
        append(room, "event", [["text", `${String(msg.nickname)} ${msg.event === "join" ? "joined" : "left"}`]]);
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
    if (isNew && isOpen()) sendJoin(name);
  });

  ui.leave.addEventListener("click", () => {
    if (current === null) return;
    const name = current;
    const joinSent = rooms.get(name).joined || pendingJoins.has(name);
    removeRoom(name);
    pendingJoins.delete(name);
    if (isOpen() && joinSent) transmit(JSON.stringify({ action: "leave", room: name }));
    flush();
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
})();
