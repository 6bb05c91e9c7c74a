import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { describe, it } from 'node:test';
import { adoptForPooledReads, findPooledReads, READ_BUFFER_BYTES, readBufferStats, type ReadSink } from '../../src/proxy/read-buffers.ts';

/** A server whose accepted connections are moved into pooled sockets; each is handed to `onSocket`. */
async function pooledServer(onSocket: (s: net.Socket, accepted: net.Socket) => void) {
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (accepted) => onSocket(adoptForPooledReads(accepted), accepted));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const connect = () => net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  return { server, connect };
}

/** One client connection to a pooled server, once the server has moved it into a pooled socket. */
async function oneAdopted(): Promise<{ server: net.Server; client: net.Socket; adopted: net.Socket; accepted: net.Socket }> {
  let resolve!: (pair: [net.Socket, net.Socket]) => void;
  const pair = new Promise<[net.Socket, net.Socket]>((r) => { resolve = r; });
  const { server, connect } = await pooledServer((s, accepted) => resolve([s, accepted]));
  const client = connect();
  const [adopted, accepted] = await pair;
  return { server, client, adopted, accepted };
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('pooled reads', () => {
  it('moves an accepted connection into a socket that reads through the pool, and the old one goes', async () => {
    const { server, client: c, adopted, accepted: old } = await oneAdopted();
    try {
      if (c.connecting) await new Promise((r) => c.once('connect', r));
      assert.notEqual(adopted, old);
      assert.ok(findPooledReads(adopted), 'the new socket is registered as reading through the pool');
      assert.equal(findPooledReads(old), undefined);
      assert.equal(old.destroyed, true);
      assert.equal(adopted.remotePort, c.localPort, 'same connection, same peer');
      // The server no longer counts the moved connection (its wrapper is gone), so close() is not held up.
      const count = await new Promise<number>((r, j) => server.getConnections((e, n) => (e ? j(e) : r(n))));
      assert.equal(count, 0);
      c.destroy();
    } finally {
      server.close();
    }
  });

  it('keeps what arrives before a sink is attached, paused, and hands it over in order', async () => {
    const { server, client: c, adopted } = await oneAdopted();
    try {
      c.write('first ');
      await new Promise((r) => setTimeout(r, 50));
      c.end('second');
      await new Promise((r) => setTimeout(r, 50));
      const got: string[] = [];
      findPooledReads(adopted)!.attach((chunk, release) => { got.push(chunk.toString()); release(); return true; });
      assert.deepEqual(got, ['first '], 'one read before the attach, then reading paused');
      const ended = new Promise((r) => adopted.once('end', r));
      adopted.resume();
      await ended;
      assert.equal(got.join(''), 'first second');
      adopted.destroy();
    } finally {
      server.close();
    }
  });

  it('carries a bulk transfer in a handful of reused buffers', async () => {
    const payload = randomBytes(16 * 1024 * 1024);
    const before = readBufferStats().allocated;
    const received: Buffer[] = [];
    const backing = new Set<ArrayBufferLike>();
    let reads = 0;
    const { server, client, adopted } = await oneAdopted();
    try {
      // Copies out (the buffer is reused after release) and, as the relay's HTTP/2 writes do,
      // completes later and asks for a pause meanwhile.
      const sink: ReadSink = (chunk, release) => {
        reads++;
        backing.add(chunk.buffer);
        received.push(Buffer.from(chunk));
        setImmediate(() => { release(); adopted.resume(); });
        return false;
      };
      const ended = new Promise((r) => adopted.once('end', r));
      findPooledReads(adopted)!.attach(sink);
      adopted.resume();
      client.end(payload);
      await ended;
      adopted.destroy();
    } finally {
      server.close();
    }
    assert.equal(sha(Buffer.concat(received)), sha(payload));
    const allocated = readBufferStats().allocated - before;
    assert.ok(reads > 100, `the transfer took ${reads} reads`);
    assert.ok(allocated <= 4, `${allocated} buffers of ${READ_BUFFER_BYTES} bytes allocated for ${reads} reads`);
    assert.ok(backing.size < reads / 10, `reads landed in ${backing.size} distinct buffers`);
  });

  it('gives quiet connections no buffer of their own', async () => {
    const sockets: net.Socket[] = [];
    const { server, connect } = await pooledServer((s) => {
      sockets.push(s);
      findPooledReads(s)!.attach((chunk, release) => { release(); return s.write(chunk); });
      s.resume();
    });
    const before = readBufferStats().allocated;
    const clients: net.Socket[] = [];
    try {
      for (let i = 0; i < 50; i++) {
        const c = connect();
        clients.push(c);
        c.write('ping');
        await new Promise((r) => c.once('data', r));
      }
      // 50 open connections, each after a small read: none holds a pooled buffer.
      assert.equal(readBufferStats().allocated - before, 0);
    } finally {
      for (const c of clients) c.destroy();
      for (const s of sockets) s.destroy();
      server.close();
    }
  });

  it('takes a buffer back once however often its release is called', async () => {
    const { server, client: c, adopted } = await oneAdopted();
    try {
      const releases: Array<() => void> = [];
      findPooledReads(adopted)!.attach((chunk, release) => { releases.push(release); return true; });
      adopted.resume();
      // More than a small read, so the chunk is copied into a pooled buffer.
      c.write(Buffer.alloc(32 * 1024, 7));
      while (releases.length === 0) await new Promise((r) => setTimeout(r, 5));
      const free = readBufferStats().free;
      releases[0]!();
      releases[0]!();
      assert.equal(readBufferStats().free, free + 1);
      c.destroy();
      adopted.destroy();
    } finally {
      server.close();
    }
  });
});
