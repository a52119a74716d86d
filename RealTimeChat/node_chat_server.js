// The reference peer for bench.py: the same chat events on Node.js and the
// official Socket.IO server (npm `socket.io`, pinned in package.json).
//
//   node RealTimeChat/node_chat_server.js --port 0 --log /tmp/messages.jsonl
//
// It does what app.py does on the bench's path and no more: `join` seats a
// named client in a room (presence to the others, the members in the ack),
// `message` appends the message to a file, flushes it to disk (fdatasync, as
// app.py's SQLite commit does), broadcasts it to the room and acks with its
// id. No rate limits, tokens or history: the bench measures fan-out.
"use strict";

const fs = require("fs");
const http = require("http");
const { Server } = require("socket.io");

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at > 0 ? process.argv[at + 1] : fallback;
}

const host = option("--host", "127.0.0.1");
const port = Number(option("--port", "5100"));
const log = fs.openSync(option("--log", "node-chat-messages.jsonl"), "a");

const httpServer = http.createServer();
const io = new Server(httpServer, {
  pingInterval: 10000,
  pingTimeout: 5000,
  maxHttpBufferSize: 64 * 1024,
});
const rooms = new Map(); // room -> Map(socket id -> name)
const ANNOUNCE_UP_TO = 200; // as app.py: bigger rooms do not announce each join and leave
let nextId = 1;

io.on("connection", (socket) => {
  let seat = null; // { room, name }

  socket.on("join", (request, ack) => {
    const { room, name } = request || {};
    if (typeof room !== "string" || typeof name !== "string") {
      return ack && ack({ error: "room and name must be strings", code: "wrong_type" });
    }
    if (!rooms.has(room)) rooms.set(room, new Map());
    rooms.get(room).set(socket.id, name);
    seat = { room, name };
    socket.join(room);
    if (rooms.get(room).size <= ANNOUNCE_UP_TO) {
      socket.to(room).emit("presence", { room, name, online: true });
    }
    if (ack) ack({ room, name, members: [...rooms.get(room).values()].sort(), history: [] });
  });

  socket.on("message", (payload, ack) => {
    if (!seat) return ack && ack({ error: "join a room first", code: "not_in_room" });
    const text = payload && payload.text;
    if (typeof text !== "string" || !text.trim()) {
      return ack && ack({ error: "an empty message is not sent", code: "empty" });
    }
    const message = { id: nextId++, room: seat.room, name: seat.name, text, ts: Date.now() };
    fs.writeSync(log, JSON.stringify(message) + "\n");
    fs.fdatasyncSync(log); // acknowledged means on disk, as in app.py
    io.to(seat.room).emit("message", message);
    if (ack) ack({ id: message.id, ts: message.ts });
  });

  socket.on("disconnect", () => {
    if (!seat) return;
    rooms.get(seat.room).delete(socket.id);
    if (rooms.get(seat.room).size < ANNOUNCE_UP_TO) {
      io.to(seat.room).emit("presence", { room: seat.room, name: seat.name, online: false });
    }
  });
});

httpServer.listen(port, host, () => {
  console.log(`Listening on http://${host}:${httpServer.address().port}`);
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
