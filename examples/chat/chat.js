// The browser side of examples/rooms_chat.py: JSON messages over one WebSocket.
// Served by the app (`make run`, then http://127.0.0.1:3000/), it connects to
// ws://<the page's host>/ws/chat. ?ws=URL names another server, which must allow this page's
// origin (the route's allowed_origins). Opened as a file it does not work: a file:// page sends
// `Origin: null`, which the app refuses with 403 like any other origin it does not list.
"use strict";

const $ = (id) => document.getElementById(id);

function serverUrl() {
  const given = new URLSearchParams(location.search).get("ws");
  if (given) return given;
  if (location.protocol === "http:" || location.protocol === "https:") {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws/chat`;
  }
  return "ws://127.0.0.1:3000/ws/chat";
}

function show(text, kind) {
  const item = document.createElement("li");
  item.textContent = text;
  if (kind) item.className = kind;
  $("log").append(item);
  item.scrollIntoView({ block: "end" });
}

const state = { name: "", room: "" };
const socket = new WebSocket(serverUrl());

socket.addEventListener("open", () => { $("status").textContent = "connected"; });
socket.addEventListener("close", (event) => {
  $("status").textContent = location.protocol === "file:"
    ? "refused: open the page from the app (http://127.0.0.1:3000/), not as a file"
    : `disconnected (${event.code}${event.reason ? ": " + event.reason : ""})`;
  $("send-form").hidden = true;
});

socket.addEventListener("message", (event) => {
  const data = JSON.parse(event.data);
  switch (data.type) {
    case "joined":
      state.room = data.room;
      $("status").textContent = `${state.name} in ${data.room}`;
      $("send-form").hidden = false;
      $("text").focus();
      break;
    case "chat-message":
      if (data.room === state.room) show(`${data.username}: ${data.message}`);
      break;
    case "user-joined":
      show(`${data.username} joined ${data.room}`, "notice");
      break;
    case "user-left":
      show(`${data.username} left ${data.room}`, "notice");
      break;
    case "error":
      show(data.message, "error");
      break;
    default:
      break;  // "connected", "typing": nothing to show
  }
});

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = $("room").value.trim();
  state.name = $("name").value.trim();
  if (!state.name || !room) return;
  if (state.room && state.room !== room) {
    socket.send(JSON.stringify({ type: "leave-room", room: state.room }));
  }
  socket.send(JSON.stringify({ type: "join-room", room, username: state.name }));
});

$("send-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text) return;
  socket.send(JSON.stringify({ type: "message", room: state.room, username: state.name, text }));
  $("text").value = "";
});
