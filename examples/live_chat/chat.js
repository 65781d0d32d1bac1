// The browser side of examples/rooms_chat.py: a chat on harpy's channels endpoint.
// Served by the app (`make run`), it connects to ws(s)://<the page's host>/connection/websocket;
// ?ws=URL names another server. A room is the channel "chat:<room>". When the connection drops
// the page says "reconnecting", and once back it shows every message sent meanwhile (the server
// keeps each room's recent history and the client resubscribes from its last offset).
"use strict";

const $ = (id) => document.getElementById(id);

function serverUrl() {
  const given = new URLSearchParams(location.search).get("ws");
  if (given) return given;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/connection/websocket`;
}

const state = {
  name: "",
  room: "",
  client: null,
  mine: new Set(),          // this tab's client ids (a new one after each reconnection)
  logs: new Map(),          // room -> entries shown for it (a room switch keeps the logs apart)
  members: new Map(),       // client id -> user name, for the room shown
};

function clock(ms) {
  const when = new Date(ms || Date.now());
  return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function render(entry) {
  const item = document.createElement("li");
  if (entry.kind === "notice") {
    item.className = "notice";
    item.textContent = entry.text;
  } else {
    if (entry.mine) item.className = "mine";
    const time = document.createElement("time");
    time.textContent = clock(entry.time);
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = entry.user;
    item.append(time, who, document.createTextNode(entry.text));
  }
  return item;
}

function add(room, entry) {
  if (!state.logs.has(room)) state.logs.set(room, []);
  state.logs.get(room).push(entry);
  if (room === state.room) {
    const item = render(entry);
    $("log").append(item);
    item.scrollIntoView({ block: "end" });
  }
}

function showRoom(room) {
  $("log").replaceChildren(...(state.logs.get(room) || []).map(render));
  $("room-title").textContent = `# ${room}`;
  $("room-title").hidden = false;
}

function showMembers() {
  const names = [...new Set(state.members.values())].sort();
  $("members").replaceChildren(...names.map((name) => {
    const item = document.createElement("li");
    item.textContent = name;
    if (name === state.name) item.className = "me";
    return item;
  }));
}

function showStatus({ state: status, code, reason }) {
  const badge = $("status");
  badge.className = status;
  badge.textContent = status === "disconnected" && code
    ? `disconnected (${code}${reason ? ": " + reason : ""})`
    : status;
  $("send-form").hidden = status !== "connected" || !state.room;
}

function channelOf(room) { return `chat:${room}`; }

async function loadMembers(sub) {
  try {
    const result = await sub.presence();
    state.members = new Map(Object.entries(result.presence || {}).map(([id, info]) => [id, info.user]));
    showMembers();
  } catch (error) {
    add(state.room, { kind: "notice", text: `members unavailable: ${error.message}` });
  }
}

function enter(room) {
  const client = state.client;
  if (state.room && state.room !== room) client.unsubscribe(channelOf(state.room));
  state.room = room;
  state.members = new Map();
  showRoom(room);
  showMembers();
  const sub = client.subscribe(channelOf(room));
  if (sub.listeners.publication) return;  // already subscribed to this room
  sub.on("publication", (pub) => {
    const data = pub.data || {};
    const mine = !!(pub.info && state.mine.has(pub.info.client));
    add(room, { kind: "message", user: data.from || "?", text: String(data.text || ""), time: data.time, mine });
  });
  // Notices are for others: this tab's own connections (a new one after each reconnection)
  // come and go without one.
  sub.on("join", (info) => {
    if (room !== state.room) return;
    state.members.set(info.client, info.user);
    showMembers();
    if (!state.mine.has(info.client)) add(room, { kind: "notice", text: `${info.user} joined` });
  });
  sub.on("leave", (info) => {
    if (room !== state.room) return;
    state.members.delete(info.client);
    showMembers();
    if (!state.mine.has(info.client)) add(room, { kind: "notice", text: `${info.user} left` });
  });
  sub.on("subscribed", ({ recovering, recovered }) => {
    if (recovering && !recovered) add(room, { kind: "notice", text: "some messages could not be recovered" });
    if (room === state.room) loadMembers(sub);
    $("send-form").hidden = false;
    $("text").focus();
  });
  sub.on("error", (error) => add(room, { kind: "notice", text: `cannot join: ${error.message}` }));
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("name").value.trim();
  const room = $("room").value.trim();
  if (!name || !room) return;
  if (!state.client || state.name !== name) {
    if (state.client) state.client.disconnect();
    state.name = name;
    state.room = "";
    state.client = new ChannelsClient(serverUrl(), { data: { name } });
    state.client.on("state", (change) => {
      if (change.state === "connected") state.mine.add(change.client);
      showStatus(change);
    });
    state.client.connect();
  }
  enter(room);
});

$("send-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text || !state.room) return;
  $("text").value = "";
  try {
    await state.client.subscribe(channelOf(state.room)).publish({ text });
  } catch (error) {
    $("text").value = text;  // not sent: keep it for another try
    add(state.room, { kind: "notice", text: `not sent: ${error.message}` });
  }
});

showStatus({ state: "disconnected" });
$("status").textContent = "pick a name and a room";
