import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { describe, it } from 'node:test';
import { resetSocket } from '../../src/capture/socket.ts';
import { adoptForPooledReads, pooledConnect } from '../../src/proxy/read-buffers.ts';
import { outcomeOf, relay, type RelayResult, socketEnd } from '../../src/proxy/relay.ts';

/**
 * app server <- relay <- client, all on loopback. `pooled`: both of the relay's sockets read into
 * reused buffers, as the agent's pod-facing sockets do; otherwise they are plain stream reads.
 */
async function setup(onServerConn: (s: net.Socket) => void, opts: { idleMs?: number; pooled: boolean; onBytes?: (aToB: number, bToA: number, woke: boolean) => void }) {
  const appSockets: net.Socket[] = [];
  const app = net.createServer({ allowHalfOpen: true }, (s) => { appSockets.push(s); onServerConn(s); });
  await new Promise<void>((r) => app.listen(0, '127.0.0.1', r));
  const results: Promise<RelayResult>[] = [];
  const upstreams: net.Socket[] = [];
  const appPort = (app.address() as net.AddressInfo).port;
  const proxy = net.createServer({ allowHalfOpen: true, pauseOnConnect: opts.pooled }, (accepted) => {
    const client = opts.pooled ? adoptForPooledReads(accepted) : accepted;
    const up = opts.pooled ? pooledConnect('127.0.0.1', appPort) : net.connect({ port: appPort, host: '127.0.0.1', allowHalfOpen: true });
    upstreams.push(up);
    results.push(relay(socketEnd(client), socketEnd(up), opts.onBytes, opts));
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const connect = () => net.connect({ port: (proxy.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  const close = () => {
    for (const s of [...appSockets, ...upstreams]) s.destroy();
    app.close();
    proxy.close();
  };
  return { connect, results, upstreams, appSockets, close };
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

for (const pooled of [false, true]) describe(`relay, ${pooled ? 'pooled reads' : 'stream reads'}`, () => {
  it('tells a chunk after a pause (a wake-up) from chunks that come back to back', async () => {
    const chunks: boolean[] = [];
    const env = await setup((srv) => { srv.resume(); srv.once('end', () => srv.end()); }, { pooled, onBytes: (_a, _b, woke) => chunks.push(woke) });
    try {
      const c = env.connect();
      await new Promise<void>((r) => c.once('connect', () => r()));
      // Three requests 20 ms apart: three wake-ups.
      for (let i = 0; i < 3; i++) {
        const before = chunks.length;
        c.write('request');
        await new Promise<void>((r) => { const t = setInterval(() => { if (chunks.length > before) { clearInterval(t); r(); } }, 1); });
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.deepEqual(chunks, [true, true, true]);
      // 8 MiB at once: many chunks, read back to back, far fewer wake-ups than chunks.
      chunks.length = 0;
      c.end(randomBytes(8 * 1024 * 1024));
      await env.results[0];
      assert.ok(chunks.length >= 16, `${chunks.length} chunks`);
      assert.ok(chunks.filter(Boolean).length < chunks.length / 2, JSON.stringify(chunks.map(Number).join('')));
    } finally {
      env.close();
    }
  });

  it('carries bytes exactly both ways and propagates half-close', async () => {
    const payload = randomBytes(5 * 1024 * 1024);
    const env = await setup((s) => {
      const got: Buffer[] = [];
      s.on('data', (d: Buffer) => got.push(d));
      // Replies only after the client's FIN arrived through the relay, then sends more and ends.
      s.on('end', () => { const all = Buffer.concat(got); s.end(`${all.length} ${sha(all)}`); });
    }, { pooled });
    try {
      const c = env.connect();
      c.end(payload);
      const reply = await new Promise<string>((resolve, reject) => {
        const chunks: Buffer[] = [];
        c.on('data', (d: Buffer) => chunks.push(d));
        c.on('end', () => resolve(Buffer.concat(chunks).toString()));
        c.on('error', reject);
      });
      assert.equal(reply, `${payload.length} ${sha(payload)}`);
      const r = await env.results[0]!;
      assert.equal(r.aToB, payload.length);
      assert.equal(r.bToA, reply.length);
      assert.equal(r.abortedBy, undefined);
    } finally {
      env.close();
    }
  });

  it('resets both ends of a connection silent for the idle timeout, and only that one', async () => {
    const env = await setup((s) => { s.on('error', () => {}); s.on('data', (d) => s.write(d)); }, { idleMs: 400, pooled });
    try {
      const silent = env.connect();
      while (env.results.length < 1) await new Promise((r) => setTimeout(r, 5));
      const chatty = env.connect();
      chatty.on('data', () => {});
      const ping = setInterval(() => chatty.write('x'), 100);
      const err = await new Promise<NodeJS.ErrnoException>((resolve) => silent.on('error', resolve));
      assert.equal(err.code, 'ECONNRESET');
      const r = await env.results[0]!;
      assert.equal(r.idleMs, 400);
      assert.deepEqual(outcomeOf(r).error?.message, 'no bytes either way for 400 ms (--idle-timeout): connection reset');
      assert.equal(chatty.destroyed, false, 'a connection with traffic stays');
      clearInterval(ping);
      chatty.destroy();
    } finally {
      env.close();
    }
  });

  it('turns a reset on one side into a reset on the other', async () => {
    const env = await setup((s) => { s.on('data', () => s.resetAndDestroy()); }, { pooled });
    try {
      const c = env.connect();
      c.write('hello');
      const err = await new Promise<NodeJS.ErrnoException>((resolve) => c.on('error', resolve));
      assert.equal(err.code, 'ECONNRESET');
      const r = await env.results[0]!;
      assert.equal(r.abortedBy, 'b');
    } finally {
      env.close();
    }
  });

  it('resets a socket whose write half is already shut down (no leaked descriptor)', async () => {
    // libuv refuses to reset a socket while a shutdown is pending (EINVAL) and leaves it open; the relay's reset must
    // still send a RST and close, as when an HTTP/2 stream first ends and then turns out aborted.
    const server = net.createServer({ allowHalfOpen: true });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
      const c = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
      const s = await accepted;
      s.on('error', () => {});
      const err = new Promise<NodeJS.ErrnoException>((resolve) => c.on('error', resolve));
      // Reset right after end(), while the shutdown is still in flight, as a relay does when an
      // aborted HTTP/2 stream reports 'end' and 'close' back to back.
      s.end();
      const serverPort = s.localPort;
      const closed = new Promise((r) => s.once('close', () => r('closed')));
      socketEnd(s).reset();
      assert.equal(await Promise.race([closed, new Promise((r) => setTimeout(() => r('still open'), 2000))]), 'closed');
      // An abortive close leaves nothing behind in the kernel; a plain close after end() would
      // leave the server side in FIN-WAIT-2 (the client never closed its half).
      const ss = execFileSync('ss', ['-Htan', `sport = :${serverPort}`]).toString()
        .split('\n').filter((l) => l.trim() && !l.startsWith('LISTEN')).join('\n');
      assert.equal(ss, '', `server side of the connection still in the kernel: ${ss}`);
      // And the client's connection is gone: writing to it fails.
      c.write('x');
      assert.match(String((await err).code), /^(ECONNRESET|EPIPE)$/);
    } finally {
      server.close();
    }
  });

  it('applies backpressure: a reader that stops reading stops the writer instead of growing buffers', async () => {
    const env = await setup((s) => { s.pause(); }, { pooled });
    try {
      const c = env.connect();
      c.on('error', () => {});
      const big = Buffer.alloc(64 * 1024 * 1024, 1);
      c.write(big);
      await new Promise((r) => setTimeout(r, 500));
      const up = env.upstreams[0]!;
      // What the relay holds in user space stays around one high-water mark; the rest waits in the
      // client's own buffer and the kernel's socket buffers.
      assert.ok(up.writableLength <= 1024 * 1024, `relay buffered ${up.writableLength} bytes`);
      assert.ok(c.writableLength > 32 * 1024 * 1024, `client could only buffer ${c.writableLength} bytes if the relay stopped reading`);
      // The stalled application resets: the relay, blocked on its write, sees it and resets the client.
      env.appSockets[0]!.resetAndDestroy();
      const r = await env.results[0]!;
      assert.equal(r.abortedBy, 'b');
      assert.ok(r.aToB < big.length, 'the relay never read more than the kernel and one buffer could hold');
    } finally {
      env.close();
    }
  });
});

describe('relay, an end gone before it starts', () => {
  it('resets the upstream of a client that reset while the upstream was being set up', async () => {
    const appClosed = Promise.withResolvers<void>();
    const app = net.createServer((s) => { s.on('error', () => {}); s.once('close', () => appClosed.resolve()); });
    await new Promise<void>((r) => app.listen(0, '127.0.0.1', r));
    const appPort = (app.address() as net.AddressInfo).port;
    const result = Promise.withResolvers<RelayResult>();
    const proxy = net.createServer({ allowHalfOpen: true }, (client) => {
      const end = socketEnd(client);
      // As the agent does: the upstream is made while the client may already be leaving.
      client.once('close', () => {
        const up = net.connect({ port: appPort, host: '127.0.0.1', allowHalfOpen: true }, () => {
          result.resolve(relay(end, socketEnd(up)));
        });
      });
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    try {
      const c = net.connect({ port: (proxy.address() as net.AddressInfo).port, host: '127.0.0.1' }, () => c.resetAndDestroy());
      c.on('error', () => {});
      const r = await result.promise;
      assert.equal(r.abortedBy, 'a');
      await appClosed.promise;
    } finally {
      app.close();
      proxy.close();
    }
  });
});
