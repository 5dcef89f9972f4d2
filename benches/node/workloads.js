// The eight benchmark workloads of issue #5, written for Node.js native promises
// (Node 20, no npm packages): the contender `examples/workloads.rs` (thenable) is
// compared with.
//
//   node benches/node/workloads.js chain 1000000   # one workload, one size
//   node benches/node/workloads.js                 # all of them, small, checked
//
// One workload prints exactly one line,
// `workload=<name> impl=node n=<n> ms=<timed part> check=<checksum>`,
// and exits with status 1 (and a message on stderr) if its checksum is wrong.
//
// Each workload is the plain, fastest way to write it with `then`, `Promise.all`,
// `async`/`await`, `setTimeout` and `net`. Handlers that need no state of their
// own are one shared function rather than a fresh closure per call, as Node code
// written for speed does. Sums stay below 2^53, so plain numbers are exact.
'use strict';

const net = require('node:net');

// 0 + 1 + ... + (n - 1).
const sumBelow = (n) => (n * (n - 1)) / 2;

const PARALLEL_OPS = 25;
const ECHO_CLIENTS = 50;
const ECHO_MESSAGE = 64;

// A fake I/O operation: a promise a 1 ms timer fulfils.
function fakeIo() {
  return new Promise((resolve) => setTimeout(resolve, 1));
}

// A pending promise and the function that fulfils it.
function pending() {
  let resolve;
  const promise = new Promise((r) => {
    resolve = r;
  });
  return [promise, resolve];
}

const addOne = (v) => v + 1;

// n `then` links on one pending promise, each adding 1; resolve the root with 0.
async function chain(n) {
  const [root, resolve] = pending();
  let tail = root;
  for (let i = 0; i < n; i++) tail = tail.then(addOne);
  resolve(0);
  return await tail;
}

// One `Promise.all` over n pending promises, resolved in order with their index.
async function all(n) {
  const promises = new Array(n);
  const resolvers = new Array(n);
  for (let i = 0; i < n; i++) {
    promises[i] = new Promise((r) => {
      resolvers[i] = r;
    });
  }
  const everything = Promise.all(promises);
  for (let i = 0; i < n; i++) resolvers[i](i);
  const values = await everything;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += values[i];
  return sum;
}

// n handlers on one pending promise, each adding its index to a shared counter.
async function fanout(n) {
  const [root, resolve] = pending();
  let counter = 0;
  for (let i = 0; i < n; i++) {
    root.then(() => {
      counter += i;
    });
  }
  resolve();
  // Reactions run in the order they were attached, so this one runs last.
  await root;
  return counter;
}

const one = () => 1;

// bluebird's doxbee-sequential shape: two operations in parallel, then five in
// sequence.
function upload() {
  return Promise.all([fakeIo(), fakeIo()])
    .then(fakeIo)
    .then(fakeIo)
    .then(fakeIo)
    .then(fakeIo)
    .then(fakeIo)
    .then(one);
}

// n concurrent uploads; the check counts the ones that completed.
async function doxbee(n) {
  const uploads = new Array(n);
  for (let i = 0; i < n; i++) uploads[i] = upload();
  const done = await Promise.all(uploads);
  let completed = 0;
  for (let i = 0; i < n; i++) completed += done[i];
  return completed;
}

const length = (done) => done.length;

// bluebird's madeup-parallel shape: 25 operations at once, then done; the request
// reports how many of them completed.
function request() {
  const ops = new Array(PARALLEL_OPS);
  for (let k = 0; k < PARALLEL_OPS; k++) ops[k] = fakeIo();
  return Promise.all(ops).then(length);
}

// n concurrent requests; the check counts the operations that completed.
async function parallel(n) {
  const requests = new Array(n);
  for (let i = 0; i < n; i++) requests[i] = request();
  const done = await Promise.all(requests);
  let completed = 0;
  for (let i = 0; i < n; i++) completed += done[i];
  return completed;
}

// n one-shot timers, 0 to 99 ms, counted as they fire.
function timers(n) {
  return new Promise((resolve) => {
    let fired = 0;
    const fire = () => {
      if (++fired === n) resolve(fired);
    };
    for (let i = 0; i < n; i++) setTimeout(fire, (i * 7919) % 100);
  });
}

// n tasks, each awaiting its own pending promise and adding the value to a sum;
// the promises are resolved, in order, once every task waits on its own (an async
// function runs up to its first `await` when called).
async function tasks(n) {
  const [allDone, finish] = pending();
  let sum = 0;
  let left = n;
  async function task(promise) {
    const value = await promise;
    sum += value;
    if (--left === 0) finish();
  }
  const resolvers = new Array(n);
  for (let i = 0; i < n; i++) {
    const [promise, resolve] = pending();
    resolvers[i] = resolve;
    task(promise);
  }
  for (let i = 0; i < n; i++) resolvers[i](i);
  await allDone;
  return sum;
}

// One client: n round trips of one message, each compared with what was sent;
// resolves with the bytes echoed back intact.
function client(port, id, n) {
  return new Promise((resolve, reject) => {
    const conn = net.connect({ port, host: '127.0.0.1', noDelay: true });
    // Reused: the previous message has been sent once its echo is back.
    const message = Buffer.alloc(ECHO_MESSAGE);
    let sent = 0;
    let received = 0; // bytes of the current message echoed so far
    let intact = true;
    let echoed = 0;
    const send = () => {
      message.fill((id * 31 + sent) & 0xff);
      sent++;
      conn.write(message);
    };
    conn.on('connect', () => {
      if (n === 0) {
        conn.end();
        resolve(0);
      } else {
        send();
      }
    });
    conn.on('data', (chunk) => {
      const expected = (id * 31 + sent - 1) & 0xff;
      for (let k = 0; k < chunk.length; k++) intact = intact && chunk[k] === expected;
      received += chunk.length;
      if (received < ECHO_MESSAGE) return;
      if (received === ECHO_MESSAGE && intact) echoed += ECHO_MESSAGE;
      received = 0;
      intact = true;
      if (sent < n) {
        send();
      } else {
        conn.end();
        resolve(echoed);
      }
    });
    conn.on('error', reject);
  });
}

// A server and 50 clients on one loop; each client sends n 64-byte messages one at
// a time and waits for each echo. The check counts the bytes echoed back intact.
// Connecting is timed; binding the listener is not, so this workload times itself.
async function echo(n) {
  const server = net.createServer({ noDelay: true }, (conn) => {
    conn.on('data', (chunk) => conn.write(chunk));
    conn.on('error', () => conn.destroy());
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  const start = performance.now();
  const clients = [];
  for (let id = 0; id < ECHO_CLIENTS; id++) clients.push(client(port, id, n));
  const echoed = await Promise.all(clients);
  const ms = performance.now() - start;
  server.close();
  return { ms, check: echoed.reduce((a, b) => a + b, 0) };
}

const WORKLOADS = {
  chain: { smokeN: 10000, run: chain, expected: (n) => n },
  all: { smokeN: 10000, run: all, expected: sumBelow },
  fanout: { smokeN: 10000, run: fanout, expected: sumBelow },
  doxbee: { smokeN: 200, run: doxbee, expected: (n) => n },
  parallel: { smokeN: 200, run: parallel, expected: (n) => n * PARALLEL_OPS },
  timers: { smokeN: 10000, run: timers, expected: (n) => n },
  tasks: { smokeN: 10000, run: tasks, expected: sumBelow },
  echo: { smokeN: 20, run: echo, expected: (n) => ECHO_CLIENTS * n * ECHO_MESSAGE },
};

function usage(problem) {
  process.stderr.write(
    `${problem}\nusage: node workloads.js [<workload> <n>]   workloads: ` +
      `${Object.keys(WORKLOADS).join(', ')}\n`,
  );
  process.exitCode = 1;
}

// Runs one workload and prints its line; false if its checksum is wrong.
async function runOne(name, n) {
  const workload = WORKLOADS[name];
  let ms;
  let check;
  if (name === 'echo') {
    ({ ms, check } = await workload.run(n));
  } else {
    const start = performance.now();
    check = await workload.run(n);
    ms = performance.now() - start;
  }
  const expected = workload.expected(n);
  if (check !== expected) {
    process.stderr.write(`workload ${name} n=${n}: check=${check} but ${expected} was expected\n`);
    return false;
  }
  process.stdout.write(`workload=${name} impl=node n=${n} ms=${ms.toFixed(3)} check=${check}\n`);
  return true;
}

async function main() {
  const args = process.argv.slice(2);
  let chosen;
  if (args.length === 0) {
    chosen = Object.entries(WORKLOADS).map(([name, w]) => [name, w.smokeN]);
  } else if (args.length === 2) {
    const [name, size] = args;
    if (!Object.hasOwn(WORKLOADS, name)) return usage(`unknown workload ${JSON.stringify(name)}`);
    // `1e6` and `1_000_000` both work; sizes are whole and positive.
    const n = Number(size.replaceAll('_', ''));
    if (!Number.isInteger(n) || n < 1 || n > 2 ** 32 - 1) {
      return usage(`bad size ${JSON.stringify(size)}`);
    }
    chosen = [[name, n]];
  } else {
    return usage('expected a workload and a size, or nothing');
  }
  for (const [name, n] of chosen) {
    if (!(await runOne(name, n))) {
      process.exitCode = 1;
      return;
    }
  }
}

main().catch((error) => {
  process.stderr.write(`workloads.js failed: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
