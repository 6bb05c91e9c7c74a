// Load generators and the HTTP server the benchmark runs inside pod namespaces. Each prints one JSON
// line. They know nothing of meshlet.
//
//   load http-server --port P                   answers every POST with a body of the request's size
//   load latency --url U --rate R --seconds S --size B --connections C
//       open loop: requests are scheduled at a fixed rate and latency is measured from the scheduled
//       time, so a stall is charged to every request it delays (no coordinated omission)
//   load bulk --host H --port P --bytes N       one connection, N bytes to a sink, until its answer
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

async function latency(url: string, rate: number, seconds: number, size: number, connections: number): Promise<void> {
  const origin = new URL(url);
  const pool = new Pool(origin.origin, { connections, pipelining: 1, keepAliveTimeout: 60_000 });
  const body = Buffer.alloc(size, 0x62);
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
      next++;
      inflight.push(pool.request({ path: origin.pathname, method: 'POST', body }).then(async (res) => {
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
  await pool.close();
  fromSend.sort((a, b) => a - b);
  fromDue.sort((a, b) => a - b);
  process.stdout.write(`${JSON.stringify({
    requests: total, errors, achievedRate: Math.round(fromSend.length / elapsed),
    // Service time: from the moment the request was handed to the client.
    p50: percentile(fromSend, 50), p90: percentile(fromSend, 90), p99: percentile(fromSend, 99), max: fromSend.at(-1),
    // From the moment it was due: also charges the generator's own lateness and any stall ahead of it.
    due: { p50: percentile(fromDue, 50), p99: percentile(fromDue, 99) },
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

const [cmd, ...rest] = process.argv.slice(2);
const { values: v } = parseArgs({ args: rest, options: {
  port: { type: 'string' }, url: { type: 'string' }, rate: { type: 'string', default: '1000' }, seconds: { type: 'string', default: '10' },
  size: { type: 'string', default: '1024' }, connections: { type: 'string', default: '4' }, host: { type: 'string' },
  bytes: { type: 'string' }, concurrency: { type: 'string', default: '32' },
} });
if (cmd === 'http-server') httpServer(Number(v.port));
else if (cmd === 'latency') await latency(String(v.url), Number(v.rate), Number(v.seconds), Number(v.size), Number(v.connections));
else if (cmd === 'bulk') await bulk(String(v.host), Number(v.port), Number(v.bytes));
else if (cmd === 'connrate') await connrate(String(v.host), Number(v.port), Number(v.seconds), Number(v.concurrency));
else {
  process.stderr.write('usage: load http-server|latency|bulk|connrate ...\n');
  process.exitCode = 2;
}
