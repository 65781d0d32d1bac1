// The official centrifuge SDK (npm, 5.x) driven by the tests in Node: one JSON command per line
// on stdin, one JSON event per line on stdout.  Commands name a client ("as") so that one
// process holds several; replies carry the command's "ref".  The commands are commands.js's.
'use strict';

const readline = require('readline');
const WebSocket = require('ws');
const { Centrifuge } = require('centrifuge');
const { makeRunner, outcome } = require('./commands');

function emit(event) {
  process.stdout.write(JSON.stringify(event) + '\n');
}

const run = makeRunner(Centrifuge, WebSocket, emit);
const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.op === 'exit') process.exit(0);
  outcome(Promise.resolve().then(() => run(cmd))).then((reply) => emit({ ref: cmd.ref, ...reply }));
});
lines.on('close', () => process.exit(0));
