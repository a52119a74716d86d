// RealTimeChat's page: plain JavaScript on the Socket.IO client, no build step.
//
// Rule of the page: whatever a person typed (names, messages, room names) is put
// on the page with textContent, never innerHTML, so a message such as
// <img src=x onerror=alert(1)> shows as those characters and runs nothing.
"use strict";

const ACK_TIMEOUT_MS = 5000; // an unacknowledged message stays in the input box
const GAP_WAIT_MS = 500; // a missing message this long is fetched with `history`
const PAGE = 200; // messages per `history` page when catching up
const TYPING_IDLE_MS = 2000; // stop "typing" after this long without a keystroke
const TYPING_SHOWN_MS = 5000; // forget someone's "typing" if no update arrives

const $ = (id) => document.getElementById(id);
const state = {
  room: null, // the room we sit in, once the server said yes
  name: null,
  seated: false, // joined on the current connection: sending is allowed
  // The rejoin token the server signed for us: after a reconnect it takes our
  // name back from the ghost of the old connection. Per tab, not per browser.
  token: sessionStorage.getItem("chat-token"),
  shown: new Map(), // seq -> id of the messages on screen: a rejoin never shows one twice
  // Everything up to `through` is on screen (seq and id of that message), so a
  // rejoin or a catch-up asks the server for what came after it.
  through: { seq: 0, id: 0 },
  members: new Set(),
  typing: new Map(), // name -> timer that forgets it
};

// The client tries the HTTP long-polling transport first, then upgrades to a
// WebSocket; after a disconnect it retries after 0.5 s, doubling up to 5 s,
// each delay randomised by +-50% so that a crowd does not come back at once.
const socket = io({ reconnectionDelay: 500, reconnectionDelayMax: 5000, randomizationFactor: 0.5 });

// -- connection status -------------------------------------------------------

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").className = `status ${kind}`;
}

function showTransport() {
  setStatus(`connected · ${socket.io.engine.transport.name}`, "ok");
}

socket.on("connect", () => {
  showTransport();
  socket.io.engine.once("upgrade", showTransport);
  if (state.room) join(state.room, state.name); // back after a reconnect: sit down again
});
let attempts = 0; // reconnection attempts since the connection was lost
socket.on("disconnect", (reason) => {
  setSeated(false);
  if (reason === "io server disconnect") {
    // Not a drop: the server closed us because our name was taken back by a newer
    // connection with our token (another tab or device). The client does not
    // reconnect after this, so the two cannot take the name from each other forever.
    return setStatus("disconnected: you joined from somewhere else", "bad");
  }
  setStatus(`reconnecting… (${reason})`, "bad");
});
// The server lost our seat without a disconnect (its presence lease expired
// during a pause): sit down again, as after a reconnect.
socket.on("rejoin", () => {
  setSeated(false);
  if (state.room) join(state.room, state.name);
});
socket.on("replaced", ({ reason }) => showNotice(reason));
socket.io.on("reconnect_attempt", (n) => {
  attempts = n;
  setStatus(`reconnecting… attempt ${n}`, "wait");
});
socket.io.on("reconnect", () => (attempts = 0));
socket.on("connect_error", () => {
  if (attempts === 0) setStatus("server unreachable, retrying…", "bad");
});

// -- building the page (textContent only) -------------------------------------

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function clock(ms) {
  const parts = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
  return new Date(ms).toLocaleTimeString([], parts);
}

function scrollToEnd() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

function addMessage(message) {
  if (message.room !== state.room || state.shown.has(message.seq)) return;
  if (message.seq <= state.through.seq) return; // before what this page started with
  state.shown.set(message.seq, message.id);
  while (state.shown.has(state.through.seq + 1)) {
    const seq = state.through.seq + 1;
    state.through = { seq, id: state.shown.get(seq) };
  }
  // A later message with an earlier one missing (it was sent while we were
  // away, or crossed a reconnect): fetch it, unless it turns up by itself.
  if (message.seq > state.through.seq) setTimeout(() => hasGap() && catchUp(), GAP_WAIT_MS);
  const item = element("li", undefined, message.name === state.name ? "mine" : "");
  item.dataset.id = message.id;
  const time = element("time", clock(message.ts));
  time.dateTime = new Date(message.ts).toISOString();
  item.append(time, element("span", message.name, "author"), element("span", message.text, "text"));
  // Keep the list in id order: with several server processes, broadcasts can cross.
  const later = [...$("messages").querySelectorAll("li[data-id]")].find(
    (li) => Number(li.dataset.id) > message.id,
  );
  $("messages").insertBefore(item, later || null);
  stopShowingTyping(message.name);
  scrollToEnd();
}

function addSystemLine(text) {
  $("messages").append(element("li", text, "system"));
  scrollToEnd();
}

function renderMembers() {
  const list = $("members");
  list.replaceChildren(
    ...[...state.members]
      .sort((a, b) => a.localeCompare(b))
      .map((name) => element("li", name, name === state.name ? "me" : "")),
  );
}

function renderRooms(rooms) {
  $("rooms").replaceChildren(
    ...rooms.map(({ room, members }) => {
      const item = element("li", undefined, room === state.room ? "current" : "");
      const button = element("button", room);
      button.type = "button";
      button.addEventListener("click", () => {
        $("room").value = room;
        $("join-form").requestSubmit();
      });
      item.append(button, element("span", String(members), "count"));
      return item;
    }),
  );
}

function renderTyping() {
  const names = [...state.typing.keys()];
  $("typing").textContent =
    names.length === 0 ? "" :
    names.length === 1 ? `${names[0]} is typing…` :
    names.length <= 3 ? `${names.join(" and ")} are typing…` :
    `${names.length} people are typing…`;
}

function stopShowingTyping(name) {
  clearTimeout(state.typing.get(name));
  if (state.typing.delete(name)) renderTyping();
}

let noticeTimer;
function showNotice(text) {
  $("notice").textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => ($("notice").textContent = ""), 6000);
}

// -- what the server sends -----------------------------------------------------

socket.on("message", addMessage);
socket.on("rooms", renderRooms);
socket.on("error", (error) => showNotice(`${error.event}: ${error.reason}`));

socket.on("presence", ({ room, name, online }) => {
  if (room !== state.room) return;
  if (online) state.members.add(name);
  else {
    state.members.delete(name);
    stopShowingTyping(name);
  }
  renderMembers();
  addSystemLine(`${name} ${online ? "joined" : "left"}`);
});

socket.on("typing", ({ room, name, typing }) => {
  if (room !== state.room) return;
  stopShowingTyping(name);
  if (typing) {
    state.typing.set(name, setTimeout(() => stopShowingTyping(name), TYPING_SHOWN_MS));
    renderTyping();
  }
});

// -- what the user does ------------------------------------------------------------

function setSeated(seated) {
  state.seated = seated;
  $("send").disabled = !seated;
  $("text").disabled = !state.room; // before the first join there is nothing to type into
}

function join(room, name) {
  const switching = room !== state.room;
  const request = { room, name, after_id: switching ? 0 : state.through.id };
  if (state.token) request.token = state.token;
  socket.timeout(ACK_TIMEOUT_MS).emit("join", request, (timedOut, reply) => {
    if (timedOut) return showNotice("join: no answer from the server");
    // Joined too often (a flapping network): joins refill at one a second.
    if (reply.code === "rate_limited") return setTimeout(() => join(room, name), 1000);
    if (reply.error) return showNotice(`join: ${reply.error}`);
    state.token = reply.token;
    sessionStorage.setItem("chat-token", reply.token);
    if (reply.room !== state.room) {
      $("messages").replaceChildren();
      state.shown.clear();
      // The history is the room's latest messages: start counting from the first.
      const first = reply.history[0];
      state.through = first ? { seq: first.seq - 1, id: first.id - 1 } : { seq: 0, id: 0 };
    }
    state.room = reply.room;
    state.name = reply.name;
    state.members = new Set(reply.members);
    reply.history.forEach(addMessage);
    setSeated(true);
    if (reply.more) catchUp(); // away for longer than one page
    renderMembers();
    $("room-title").textContent = `# ${reply.room} · you are ${reply.name}`;
    for (const li of $("rooms").children) {
      li.classList.toggle("current", li.firstChild.textContent === reply.room);
    }
    $("text").placeholder = `message #${reply.room}`;
    $("text").focus();
    localStorage.setItem("chat-name", reply.name);
    history.replaceState(null, "", `#${reply.room}`);
  });
}

// Page forward with `history` from the last message we have all before, until
// the server says there is no more: any number of missed messages, in order.
let catchingUp = false;
function catchUp() {
  if (catchingUp || !state.seated) return;
  catchingUp = true;
  const room = state.room;
  const request = { room, after_id: state.through.id, limit: PAGE };
  socket.timeout(ACK_TIMEOUT_MS).emit("history", request, (timedOut, page) => {
    catchingUp = false;
    if (timedOut || page.error || room !== state.room) return;
    page.messages.forEach(addMessage);
    if (page.more && page.messages.length > 0) catchUp();
  });
}

function hasGap() {
  return [...state.shown.keys()].some((seq) => seq > state.through.seq);
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  join($("room").value.trim(), $("name").value.trim());
});

let typingSent = false;
let typingIdle;
function stopTyping() {
  clearTimeout(typingIdle);
  if (typingSent) socket.emit("typing", { typing: false });
  typingSent = false;
}

$("text").addEventListener("input", () => {
  if (!typingSent && $("text").value) {
    socket.emit("typing", { typing: true });
    typingSent = true;
  }
  clearTimeout(typingIdle);
  typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
});

// The message in the box until the server acknowledges it, with the id we
// chose for it: pressing Send again after a lost ack resends the same id, and
// the server stores it once.
let pending = null;
function newClientId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID(); // secure contexts
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

$("send-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  if (!state.seated) {
    // Not sent into a buffer that would go out before we are back in the room:
    // it stays here, visibly unsent, and Send comes back once we are.
    return showNotice("offline: reconnecting… your message stays here until you send it");
  }
  stopTyping();
  if (!pending || pending.text !== text) pending = { text, clientId: newClientId() };
  const clientId = pending.clientId;
  // The text leaves the box only when the server acknowledges it, which it does
  // after storing it: no ack (server down, rate limit) and it is still there to resend.
  socket.timeout(ACK_TIMEOUT_MS).emit("message", { text, client_id: clientId }, (timedOut, reply) => {
    if (timedOut) return showNotice("message: not acknowledged, press Send to retry");
    if (reply.error) return; // the `error` event already shows why
    if (pending && pending.clientId === clientId) pending = null;
    if ($("text").value === text) $("text").value = "";
  });
});

$("name").value = localStorage.getItem("chat-name") || "";
if (location.hash.length > 1) $("room").value = decodeURIComponent(location.hash.slice(1));
