// Load generators and the HTTP server the benchmark runs inside pod namespaces. Each prints one JSON
// line. They know nothing of meshlet.
//
//   load http-server --port P                   answers every POST with a body of the request's size
//   load latency --url U [--url U2 ...] [--method POST|GET] --rate R --seconds S --size B --connections C [--close]
//       open loop: requests are scheduled at a fixed rate and latency is measured from the scheduled
//       time, so a stall is charged to every request it delays (no coordinated omission); keep-alive
//       connections, or with --close a new connection per request
//   load bulk --host H --port P --bytes N       one connection, N bytes to a sink, until its answer
//   load poll --url U [--interval-ms 20] [--seconds S] [--until-ok]
//       a GET on a fresh connection every interval; when the first one succeeded
//   load connrate --host H --port P --seconds S --concurrency C
//       new connections per second: connect, 1 byte echoed, close; C at a time
import { createServer } from 'node:http';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

function httpServer(port: number): void {
  const server = createServer((req, res) => {
    let n = 0;
    req.on('data', (d: Buffer) => { n += d.length; });
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': n });
      res.end(Buffer.alloc(n, 0x61));
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(port, '0.0.0.0', () => process.stdout.write(`listening ${port}\n`));
}

/**
 * Open loop at `rate` over `urls` in turn (one pool each). POST: the server echoes `size` bytes
 * (http-server above). GET: any server answering `size` bytes (a static file).
 */
async function latency(urls: string[], rate: number, seconds: number, size: number, connections: number, method: 'POST' | 'GET', close = false): Promise<void> {
  const targets = urls.map((u) => {
    const origin = new URL(u);
    return { path: origin.pathname, pool: new Pool(origin.origin, { connections, pipelining: 1, keepAliveTimeout: 60_000 }) };
  });
  const body = method === 'POST' ? Buffer.alloc(size, 0x62) : undefined;
  const fromSend: number[] = [];
  const fromDue: number[] = [];
  let errors = 0;
  const total = Math.round(rate * seconds);
  const interval = 1000 / rate;
  const start = performance.now();
  const inflight: Promise<void>[] = [];
  let next = 0;
  // Each wake-up sends every request whose time has come; none is sent early.
  while (next < total) {
    const now = performance.now();
    while (next < total && start + next * interval <= now) {
      const due = start + next * interval;
      const sent = performance.now();
      const target = targets[next % targets.length]!;
      next++;
      // reset: `connection: close`, and the connection is not reused.
      inflight.push(target.pool.request({ path: target.path, method, reset: close, ...(body ? { body } : {}) }).then(async (res) => {
        const got = Buffer.from(await res.body.arrayBuffer());
        if (res.statusCode !== 200 || got.length !== size) errors++;
        const end = performance.now();
        fromSend.push(end - sent);
        fromDue.push(end - due);
      }, () => { errors++; }));
    }
    await new Promise((r) => setTimeout(r, Math.max(0, start + next * interval - performance.now())));
  }
  await Promise.all(inflight);
  const elapsed = (performance.now() - start) / 1000;
  await Promise.all(targets.map((t) => t.pool.close()));
  fromSend.sort((a, b) => a - b);
  fromDue.sort((a, b) => a - b);
  process.stdout.write(`${JSON.stringify({
    requests: total, errors, achievedRate: Math.round(fromSend.length / elapsed),
    // Service time: from the moment the request was handed to the client.
    p50: percentile(fromSend, 50), p90: percentile(fromSend, 90), p95: percentile(fromSend, 95), p99: percentile(fromSend, 99), max: fromSend.at(-1),
    // From the moment it was due: also charges the generator's own lateness and any stall ahead of it.
    due: { p50: percentile(fromDue, 50), p95: percentile(fromDue, 95), p99: percentile(fromDue, 99) },
  })}\n`);
}

function bulk(host: string, port: number, bytes: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const chunk = Buffer.alloc(1024 * 1024, 0x63);
    const socket = net.connect({ host, port, allowHalfOpen: true, noDelay: true });
    let start = 0;
    let sent = 0;
    let reply = '';
    const pump = () => {
      while (sent < bytes) {
        const n = Math.min(chunk.length, bytes - sent);
        sent += n;
        if (!socket.write(n === chunk.length ? chunk : chunk.subarray(0, n))) { socket.once('drain', pump); return; }
      }
      socket.end();
    };
    socket.on('connect', () => { start = performance.now(); socket.write('S'); pump(); });
    socket.on('data', (d: Buffer) => { reply += d.toString(); });
    socket.on('end', () => {
      const seconds = (performance.now() - start) / 1000;
      const received = Number(reply.split(' ')[0]);
      process.stdout.write(`${JSON.stringify({ bytes, received, seconds, mbPerSecond: bytes / seconds / 1e6, ok: received === bytes })}\n`);
      socket.destroy();
      resolve();
    });
    socket.on('error', reject);
  });
}

async function connrate(host: string, port: number, seconds: number, concurrency: number): Promise<void> {
  const deadline = performance.now() + seconds * 1000;
  let done = 0;
  let errors = 0;
  const one = () => new Promise<void>((resolve) => {
    const s = net.connect({ host, port, noDelay: true });
    s.on('connect', () => s.write('Ex'));
    s.on('data', () => { done++; s.end(); });
    s.on('error', () => { errors++; resolve(); });
    s.on('close', () => resolve());
  });
  const start = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < deadline) await one();
  }));
  const elapsed = (performance.now() - start) / 1000;
  process.stdout.write(`${JSON.stringify({ connections: done, errors, seconds: elapsed, perSecond: Math.round(done / elapsed) })}\n`);
}

/**
 * A GET every `intervalMs` on a fresh connection, for up to `seconds`: prints when the first one
 * succeeded (ms from start). With `untilOk` it stops there; otherwise it keeps going (the harness
 * decides from the agents' logs which success counts).
 */
async function poll(url: string, intervalMs: number, seconds: number, untilOk: boolean): Promise<void> {
  const start = performance.now();
  let firstOkMs: number | undefined;
  let attempts = 0;
  while (performance.now() - start < seconds * 1000) {
    attempts++;
    const ok = await fetch(url, { signal: AbortSignal.timeout(1000), headers: { connection: 'close' } })
      .then(async (r) => { await r.arrayBuffer(); return r.status === 200; }, () => false);
    if (ok && firstOkMs === undefined) {
      firstOkMs = performance.now() - start;
      if (untilOk) break;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  process.stdout.write(`${JSON.stringify({ firstOkMs, attempts })}\n`);
}

const [cmd, ...rest] = process.argv.slice(2);
const { values: v } = parseArgs({ args: rest, options: {
  port: { type: 'string' }, url: { type: 'string', multiple: true }, method: { type: 'string', default: 'POST' }, rate: { type: 'string', default: '1000' }, seconds: { type: 'string', default: '10' },
  size: { type: 'string', default: '1024' }, connections: { type: 'string', default: '4' }, host: { type: 'string' },
  bytes: { type: 'string' }, concurrency: { type: 'string', default: '32' },
  'interval-ms': { type: 'string', default: '20' }, 'until-ok': { type: 'boolean', default: false },
  close: { type: 'boolean', default: false },
} });
if (cmd === 'http-server') httpServer(Number(v.port));
else if (cmd === 'latency') await latency(v.url ?? [], Number(v.rate), Number(v.seconds), Number(v.size), Number(v.connections), v.method === 'GET' ? 'GET' : 'POST', Boolean(v.close));
else if (cmd === 'bulk') await bulk(String(v.host), Number(v.port), Number(v.bytes));
else if (cmd === 'poll') await poll(String(v.url?.[0]), Number(v['interval-ms']), Number(v.seconds), Boolean(v['until-ok']));
else if (cmd === 'connrate') await connrate(String(v.host), Number(v.port), Number(v.seconds), Number(v.concurrency));
else {
  process.stderr.write('usage: load http-server|latency|bulk|connrate ...\n');
  process.exitCode = 2;
}
