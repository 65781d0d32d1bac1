// Bun peer (Bun.serve, uWebSockets inside Bun): /echo, /sub (sends "ok"), /pub, and
// /subz, /pubz with permessage-deflate.
//
//   bun bench/peers/bun_server.js --host 127.0.0.1 --port N [--ping-interval SEC]
//
// Bun has one set of WebSocket handlers per server: the path is kept in ws.data at the upgrade
// and the handlers dispatch on it. Fan-out: server.publish(topic, message), which sends to every
// subscriber from native code (ws.publish would skip the sender). perMessageDeflate is on for
// the server, so it is negotiated whenever a client offers it (only the compressed fan-out's
// clients do); /pubz publishes compressed, the others not. The close handshake is Bun's own (a
// close frame is answered with the same code). --ping-interval: Bun's automatic pings
// (sendPings) with idleTimeout set to that many seconds (Bun's default: no pings before 120 s
// of silence).

function option(name, fallback) {
  const i = Bun.argv.indexOf(name);
  return i >= 0 && i + 1 < Bun.argv.length ? Bun.argv[i + 1] : fallback;
}

const host = option("--host", "127.0.0.1");
const port = Number(option("--port", ""));
const pingInterval = Number(option("--ping-interval", "0"));
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error("usage: bun bench/peers/bun_server.js --host H --port N [--ping-interval SEC]");
  process.exit(2);
}

const ROUTES = {
  "/echo": { role: "echo" },
  "/sub": { role: "sub", topic: "bench" },
  "/pub": { role: "pub", topic: "bench", compress: false },
  "/subz": { role: "sub", topic: "benchz" },
  "/pubz": { role: "pub", topic: "benchz", compress: true },
};

const websocket = {
  perMessageDeflate: true,
  maxPayloadLength: 16 * 1024 * 1024,
  open(ws) {
    if (ws.data.role === "sub") {
      ws.subscribe(ws.data.topic);
      ws.send("ok");
    }
  },
  message(ws, message) {
    const route = ws.data;
    if (route.role === "echo") {
      ws.send(message);
    } else if (route.role === "pub") {
      server.publish(route.topic, message, route.compress);
    }
  },
};
if (pingInterval > 0) {
  websocket.sendPings = true;
  websocket.idleTimeout = Math.max(1, Math.round(pingInterval));
}

const server = Bun.serve({
  hostname: host,
  port,
  fetch(req, srv) {
    const route = ROUTES[new URL(req.url).pathname];
    if (route && srv.upgrade(req, { data: route })) {
      return undefined;
    }
    return new Response("not found", { status: 404 });
  },
  websocket,
});

// SIGTERM ends the process at once, without a graceful close of 10k sockets (as the other peers).
process.on("SIGTERM", () => process.exit(0));
console.log(`bun ${Bun.version} listening on ${server.hostname}:${server.port}`);
