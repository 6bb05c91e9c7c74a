// Ordinary TCP clients and servers for the demo and the end-to-end tests, run inside pod namespaces.
// They know nothing of meshlet: that is the point.
//
//   peer serve --port P                  echo server, and a "sink" mode selected by the first byte
//   peer client --host H --port P --bytes N [--connections C] [--mode echo|halfclose|hold|whoami] [--pattern TEXT] [--together] [--from ADDR]
//                                        --together (echo): every connection ends only once all have their echo
//   peer chat --host H --port P --duration MS [--interval MS]
//                                        one long-lived connection: a small echoed message every interval
//   peer dial --host H --port P --duration MS [--interval MS]
//                                        a new short connection every interval (echo, 1 KiB)
//   peer resets --host H --port P --count N [--concurrency C]
//                                        N connections, each reset (RST) as soon as it is established
//   peer udp-serve --port P              UDP echo server
//   peer udp-ping --host H --port P [--timeout MS]
//                                        one UDP datagram; prints whether its echo came back
//   peer get --url URL [--method POST]   prints an HTTP body (admin endpoints inside a node namespace)
//
// Protocol: the client's first byte picks the server's behaviour. 'E': echo every byte back and end
// when the client ends. 'S': read until the client's FIN, then answer "<bytes> <sha256>" and end: the
// answer only comes if the FIN crossed the mesh (half-close), and flows after it (the other half).
// 'H': never read, never answer (a stalled application); the client in `hold` mode keeps writing
// until something breaks the connection, and reports how. 'W': answer the address the connection
// came from, as the application sees it, and end (`whoami` mode; the client's `reply`).
import { createHash, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import { parseArgs } from 'node:util';

function serve(port: number): void {
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => undefined);
    socket.once('readable', function first() {
      const head = socket.read(1) as Buffer | null;
      if (!head) { socket.once('readable', first); return; }
      if (head.toString() === 'E') {
        socket.pipe(socket);
        return;
      }
      if (head.toString() === 'H') {
        socket.pause();
        return;
      }
      if (head.toString() === 'W') {
        const from = socket.remoteAddress ?? '';
        socket.end(`${from.startsWith('::ffff:') ? from.slice(7) : from}\n`);
        socket.resume();
        return;
      }
      const hash = createHash('sha256');
      let bytes = 0;
      socket.on('data', (d: Buffer) => { hash.update(d); bytes += d.length; });
      socket.on('end', () => socket.end(`${bytes} ${hash.digest('hex')}\n`));
    });
  });
  // No host: both families where the pod has IPv6 (dual-stack labs), IPv4 alone otherwise.
  server.listen(port, () => process.stdout.write(`listening ${port}\n`));
}

interface ClientResult {
  ok: boolean;
  sent: number;
  received: number;
  sentSha: string;
  receivedSha: string;
  ms: number;
  error?: string;
  reply?: string;
}

function makePayload(bytes: number, pattern: string | undefined): Buffer {
  if (!pattern) return randomBytes(bytes);
  // A known, repeated text lets a packet capture prove that it never crossed the wire in the clear.
  return Buffer.alloc(bytes, pattern);
}

type Mode = 'echo' | 'halfclose' | 'hold' | 'whoami';

/** Echo connections that end only once every one of them has its echo: all of them open at once. */
interface Barrier { arrived(): void; all: Promise<void> }

function barrier(n: number): Barrier {
  let left = n;
  let open!: () => void;
  const all = new Promise<void>((resolve) => { open = resolve; });
  return { all, arrived: () => { if (--left === 0) open(); } };
}

/** `from`: the local address to connect from (a pod that took another pod's address, in the attack tests). */
function oneConnection(host: string, port: number, bytes: number, mode: Mode, timeoutMs: number, opts: { pattern?: string | undefined; together?: Barrier | undefined; from?: string | undefined } = {}): Promise<ClientResult> {
  const { pattern, together } = opts;
  return new Promise((resolve) => {
    const started = Date.now();
    const payload = makePayload(bytes, pattern);
    const sentSha = createHash('sha256').update(payload).digest('hex');
    const recv = createHash('sha256');
    const chunks: Buffer[] = [];
    let received = 0;
    let done = false;
    const finish = (extra: Partial<ClientResult>) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      // A client that has its answer (or gave up) lets go of the connection, like any real client.
      socket.destroy();
      const receivedSha = recv.digest('hex');
      const reply = mode === 'halfclose' || mode === 'whoami' ? Buffer.concat(chunks).toString().trim() : undefined;
      const ok = extra.error === undefined && mode !== 'hold' && (mode === 'echo'
        ? received === bytes && receivedSha === sentSha
        : mode === 'whoami' ? net.isIP(reply ?? '') !== 0 : reply === `${bytes} ${sentSha}`);
      resolve({ ok, sent: bytes, received, sentSha, receivedSha, ms: Date.now() - started, ...(reply !== undefined ? { reply } : {}), ...extra });
    };
    const timer = setTimeout(() => finish({ error: 'timeout' }), timeoutMs);
    const socket = net.connect({ host, port, allowHalfOpen: true, ...(opts.from ? { localAddress: opts.from } : {}) });
    socket.on('connect', () => {
      if (mode === 'hold') {
        socket.write('H');
        socket.write(payload);
        return;
      }
      if (mode === 'whoami') {
        socket.end('W');
        return;
      }
      socket.write(mode === 'echo' ? 'E' : 'S');
      if (together) socket.write(payload);
      else socket.end(payload);
    });
    socket.on('data', (d: Buffer) => {
      const before = received;
      received += d.length;
      if (mode === 'echo') recv.update(d); else chunks.push(d);
      if (together && before < bytes && received >= bytes) {
        together.arrived();
        void together.all.then(() => socket.end());
      }
    });
    socket.on('end', () => finish({}));
    socket.on('error', (err: NodeJS.ErrnoException) => finish({ error: err.code ?? err.message }));
    socket.on('close', () => finish({ error: 'closed before end' }));
  });
}

async function client(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: {
    host: { type: 'string' }, port: { type: 'string' }, bytes: { type: 'string', default: '1024' },
    connections: { type: 'string', default: '1' }, mode: { type: 'string', default: 'echo' }, from: { type: 'string' },
    timeout: { type: 'string', default: '60000' }, pattern: { type: 'string' }, together: { type: 'boolean', default: false },
  } });
  const n = Number(values.connections);
  const mode: Mode = values.mode === 'halfclose' || values.mode === 'hold' || values.mode === 'whoami' ? values.mode : 'echo';
  // Only echo connections can wait: the other modes' servers answer after the client's end.
  const together = values.together && mode === 'echo' ? barrier(n) : undefined;
  const results = await Promise.all(Array.from({ length: n }, () =>
    oneConnection(String(values.host), Number(values.port), Number(values.bytes), mode, Number(values.timeout), { pattern: values.pattern, together, from: values.from })));
  process.stdout.write(`${JSON.stringify({ ok: results.every((r) => r.ok), results })}\n`);
}

/** One connection kept open for `durationMs`, checking an echo every `intervalMs`. */
function chat(host: string, port: number, durationMs: number, intervalMs: number): Promise<{ ok: boolean; rounds: number; ms: number; error?: string }> {
  return new Promise((resolve) => {
    const started = Date.now();
    let rounds = 0;
    let pending = '';
    let got = '';
    let done = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (error?: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ ok: error === undefined, rounds, ms: Date.now() - started, ...(error ? { error } : {}) });
    };
    const round = () => {
      if (Date.now() - started >= durationMs) { finish(); return; }
      pending = `round ${rounds} ${Date.now()}\n`;
      got = '';
      socket.write(pending);
      timer = setTimeout(() => finish(`no echo for round ${rounds} within 5 s`), 5_000);
    };
    const socket = net.connect({ host, port });
    socket.on('connect', () => { socket.write('E'); round(); });
    socket.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.length < pending.length) return;
      if (got !== pending) { finish(`echo mismatch in round ${rounds}`); return; }
      clearTimeout(timer);
      rounds++;
      timer = setTimeout(round, intervalMs);
    });
    socket.on('error', (err: NodeJS.ErrnoException) => finish(err.code ?? err.message));
    socket.on('close', () => finish('closed'));
  });
}

/** A new echo connection every `intervalMs` for `durationMs`; reports each attempt. */
async function dial(host: string, port: number, durationMs: number, intervalMs: number): Promise<{ ok: boolean; attempts: number; failures: Array<{ atMs: number; error: string }> }> {
  const started = Date.now();
  const runs: Array<Promise<{ atMs: number; r: ClientResult }>> = [];
  while (Date.now() - started < durationMs) {
    const atMs = Date.now() - started;
    runs.push(oneConnection(host, port, 1024, 'echo', 10_000).then((r) => ({ atMs, r })));
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  const all = await Promise.all(runs);
  const failures = all.filter((x) => !x.r.ok).map((x) => ({ atMs: x.atMs, error: x.r.error ?? 'bad echo' }));
  return { ok: failures.length === 0, attempts: all.length, failures };
}

/**
 * `count` connections, `concurrency` at a time, each reset the moment it is established: a client
 * that leaves while the mesh is still setting up its upstream.
 */
async function resets(host: string, port: number, count: number, concurrency: number): Promise<{ connected: number; failed: number }> {
  let connected = 0;
  let failed = 0;
  const one = () => new Promise<void>((resolve) => {
    const socket = net.connect({ host, port });
    socket.once('connect', () => { connected++; socket.resetAndDestroy(); });
    socket.once('error', () => { failed++; });
    socket.once('close', () => resolve());
  });
  for (let i = 0; i < count; i += concurrency) await Promise.all(Array.from({ length: Math.min(concurrency, count - i) }, one));
  return { connected, failed };
}

function udpServe(port: number): void {
  const sock = dgram.createSocket('udp4');
  sock.on('message', (msg, from) => sock.send(msg, from.port, from.address));
  sock.bind(port, () => process.stdout.write(`udp listening on ${port}\n`));
}

function udpPing(host: string, port: number, timeoutMs: number): Promise<{ ok: boolean; error?: string }> {
  return new Promise((resolve) => {
    const sock = dgram.createSocket('udp4');
    const payload = `ping ${Date.now()}`;
    const finish = (r: { ok: boolean; error?: string }) => { clearTimeout(timer); sock.close(); resolve(r); };
    const timer = setTimeout(() => finish({ ok: false, error: 'timeout' }), timeoutMs);
    sock.on('message', (msg) => { if (msg.toString() === payload) finish({ ok: true }); });
    sock.on('error', (err: NodeJS.ErrnoException) => finish({ ok: false, error: err.code ?? err.message }));
    sock.send(payload, port, host);
  });
}

async function get(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { url: { type: 'string' }, method: { type: 'string', default: 'GET' } } });
  const res = await fetch(String(values.url), { method: values.method });
  process.stdout.write(await res.text());
  if (!res.ok) process.exitCode = 1;
}

const [cmd, ...rest] = process.argv.slice(2);
if (cmd === 'serve') {
  const { values } = parseArgs({ args: rest, options: { port: { type: 'string' } } });
  serve(Number(values.port));
} else if (cmd === 'client') {
  await client(rest);
} else if (cmd === 'chat' || cmd === 'dial') {
  const { values } = parseArgs({ args: rest, options: {
    host: { type: 'string' }, port: { type: 'string' }, duration: { type: 'string' }, interval: { type: 'string', default: '250' },
  } });
  const run = cmd === 'chat' ? chat : dial;
  const report = await run(String(values.host), Number(values.port), Number(values.duration), Number(values.interval));
  process.stdout.write(`${JSON.stringify(report)}\n`);
} else if (cmd === 'resets') {
  const { values } = parseArgs({ args: rest, options: {
    host: { type: 'string' }, port: { type: 'string' }, count: { type: 'string', default: '1000' }, concurrency: { type: 'string', default: '50' },
  } });
  process.stdout.write(`${JSON.stringify(await resets(String(values.host), Number(values.port), Number(values.count), Number(values.concurrency)))}\n`);
} else if (cmd === 'udp-serve') {
  const { values } = parseArgs({ args: rest, options: { port: { type: 'string' } } });
  udpServe(Number(values.port));
} else if (cmd === 'udp-ping') {
  const { values } = parseArgs({ args: rest, options: { host: { type: 'string' }, port: { type: 'string' }, timeout: { type: 'string', default: '2000' } } });
  process.stdout.write(`${JSON.stringify(await udpPing(String(values.host), Number(values.port), Number(values.timeout)))}\n`);
} else if (cmd === 'get') {
  await get(rest);
} else {
  process.stderr.write('usage: peer serve|client|chat|dial|resets|udp-serve|udp-ping|get ...\n');
  process.exitCode = 2;
}
