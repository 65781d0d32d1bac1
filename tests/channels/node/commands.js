// The commands the tests give the official centrifuge SDK, the same in Node (driver.js) and in
// Chromium (test_node_sdk.py loads this file in a page): makeRunner(Centrifuge, WebSocket, emit)
// returns run(cmd), a promise of the command's result; the SDK's events go to emit(event).
// WebSocket is the implementation to give the SDK (the `ws` package in Node), or undefined for
// the browser's own.
'use strict';

function makeRunner(Centrifuge, WebSocketImpl, emit) {
  const clients = new Map();

  function track(name, sub) {
    const channel = sub.channel;
    sub.on('subscribed', (ctx) => emit({ as: name, event: 'subscribed', channel, recovered: ctx.recovered,
      wasRecovering: ctx.wasRecovering, positioned: ctx.positioned, recoverable: ctx.recoverable,
      streamPosition: ctx.streamPosition || null }));
    sub.on('subscribing', (ctx) => emit({ as: name, event: 'subscribing', channel, code: ctx.code }));
    sub.on('unsubscribed', (ctx) => emit({ as: name, event: 'unsubscribed', channel, code: ctx.code }));
    sub.on('publication', (ctx) => emit({ as: name, event: 'publication', channel, data: ctx.data,
      offset: ctx.offset === undefined ? null : ctx.offset }));
    sub.on('join', (ctx) => emit({ as: name, event: 'join', channel, user: ctx.info.user }));
    sub.on('leave', (ctx) => emit({ as: name, event: 'leave', channel, user: ctx.info.user }));
    sub.on('error', (ctx) => emit({ as: name, event: 'sub_error', channel, code: ctx.error.code }));
  }

  return async function run(cmd) {
    const name = cmd.as || 'a';
    const client = clients.get(name);
    switch (cmd.op) {
      case 'connect': {
        const tokens = (cmd.tokens || []).slice();
        const options = { token: cmd.token || '', name: 'harpy-tests',
          minReconnectDelay: 100, maxReconnectDelay: 500, timeout: 5000 };
        if (WebSocketImpl) options.websocket = WebSocketImpl;
        if (tokens.length) {
          options.getToken = async () => {
            emit({ as: name, event: 'get_token' });
            return tokens.length > 1 ? tokens.shift() : tokens[0];
          };
        }
        const c = new Centrifuge(cmd.url, options);
        clients.set(name, c);
        c.on('connected', (ctx) => emit({ as: name, event: 'connected', client: ctx.client }));
        c.on('connecting', (ctx) => emit({ as: name, event: 'connecting', code: ctx.code }));
        c.on('disconnected', (ctx) => emit({ as: name, event: 'disconnected', code: ctx.code }));
        c.on('message', (ctx) => emit({ as: name, event: 'message', data: ctx.data }));
        c.on('subscribed', (ctx) => emit({ as: name, event: 'server_subscribed', channel: ctx.channel }));
        c.on('publication', (ctx) => emit({ as: name, event: 'server_publication', channel: ctx.channel,
          data: ctx.data }));
        c.connect();
        return null;
      }
      case 'subscribe': {
        const options = { joinLeave: !!cmd.joinLeave, recoverable: true, positioned: true };
        if (cmd.token) options.token = cmd.token;
        const sub = client.newSubscription(cmd.channel, options);
        track(name, sub);
        sub.subscribe();
        return null;
      }
      case 'publish': return client.publish(cmd.channel, cmd.data);
      case 'history': return client.history(cmd.channel, cmd.options || {});
      case 'presence': return client.presence(cmd.channel);
      case 'presenceStats': return client.presenceStats(cmd.channel);
      case 'rpc': return client.rpc(cmd.method, cmd.data);
      case 'send': return client.send(cmd.data);
      case 'disconnect': client.disconnect(); return null;
      default: throw new Error('unknown op ' + cmd.op);
    }
  };
}

// A command's outcome as the tests read it: {ok: true, result} or {ok: false, code, message}.
function outcome(promise) {
  return Promise.resolve(promise).then(
    (result) => ({ ok: true, result: result === undefined ? null : result }),
    (err) => ({ ok: false, code: err && err.code, message: String(err && err.message) }));
}

if (typeof module !== 'undefined') {
  module.exports = { makeRunner, outcome };
} else {
  window.makeRunner = makeRunner;
  window.outcome = outcome;
}
