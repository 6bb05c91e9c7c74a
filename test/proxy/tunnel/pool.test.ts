// The tunnel client in process on loopback. Its check of the peer: a peer that presents another
// valid identity of the mesh (the same root, the same trust domain) is refused before any CONNECT
// goes to it (attack: a node, or a hijacked route, answers for a pod it does not hold). Session
// life against certificate expiry, and the retries of what the peer never saw.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import http2 from 'node:http2';
import type net from 'node:net';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { PeerIdentityError } from '../../../src/errors.ts';
import { createCsr, createRootCa, generateRsaKey, type RootCa, signWorkloadCsr } from '../../../src/identity/ca.ts';
import { ALPN } from '../../../src/proxy/tunnel/h2.ts';
import { TunnelPool } from '../../../src/proxy/tunnel/pool.ts';
import { StallWatch } from '../../../src/proxy/tunnel/stall-watch.ts';
import { resetSocket, sendProgress } from '../../../src/capture/socket.ts';

const TD = 'pool.test';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const DB = `spiffe://${TD}/ns/shop/sa/db`;
const IMPOSTOR = `spiffe://${TD}/ns/shop/sa/cache`;

async function identity(root: RootCa, id: string, ttlMs = 3_600_000): Promise<{ key: string; cert: string }> {
  const { privateKeyPem } = await generateRsaKey();
  const { certPem } = signWorkloadCsr(root, createCsr(privateKeyPem, id), { trustDomain: TD, ttlMs });
  return { key: privateKeyPem, cert: certPem };
}

describe('tunnel pool: the peer must be the destination workload', () => {
  let root: RootCa;
  let web: { key: string; cert: string };
  const servers: http2.Http2SecureServer[] = [];
  const sessions: http2.ServerHttp2Session[] = [];
  const pools: TunnelPool[] = [];
  const stalls = new StallWatch({ stallMs: 30_000, budgetBytes: 1 << 30, intervalMs: 1_000, probe: sendProgress, reset: resetSocket, onStall: () => undefined });

  before(async () => {
    root = await createRootCa({ trustDomain: TD });
    web = await identity(root, WEB);
  });
  after(() => {
    for (const p of pools) p.destroy();
    stalls.close();
    for (const s of sessions) s.destroy();
    for (const s of servers) s.close();
  });

  /** A tunnel server on loopback presenting `id`, answering every CONNECT with 200; counts the streams it saw. */
  async function peer(id: string, ttlMs?: number, refuseFirst = 0): Promise<{ port: number; streams: () => number; sessions: () => number; expiresAt: number }> {
    const me = await identity(root, id, ttlMs);
    const server = http2.createSecureServer({ ...me, ca: root.certPem, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3', ALPNProtocols: [ALPN] });
    servers.push(server);
    let mine = 0;
    server.on('session', (s) => { sessions.push(s); mine++; });
    let streams = 0;
    server.on('stream', (stream) => {
      streams++;
      // An agent on its way out refuses what it will not process (RST_STREAM REFUSED_STREAM).
      if (streams <= refuseFirst) {
        stream.on('error', () => {}); // Node reports the server's own reset as the stream's error
        stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      }
      else stream.respond({ ':status': 200 });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { port: (server.address() as net.AddressInfo).port, streams: () => streams, sessions: () => mine, expiresAt: Date.parse(new X509Certificate(me.cert).validTo) };
  }

  const pool = (port: number) => {
    const p = new TunnelPool({
      tunnelPort: port, connectTimeoutMs: 5000, log: pino({ level: 'silent' }), drainMs: 1000, stalls,
      secureContextFor: () => tls.createSecureContext({ ...web, ca: root.certPem, minVersion: 'TLSv1.3' }),
    });
    pools.push(p);
    return p;
  };

  it('connects to the peer that presents the destination\'s SPIFFE ID', async () => {
    const db = await peer(DB);
    const p = pool(db.port);
    const stream = await p.connect(WEB, { podIp: '127.0.0.1', port: 8080, expectedPeerId: DB });
    assert.equal(db.streams(), 1);
    // The connection that opened the session is the one that caused its handshake; the next shares it.
    assert.deepEqual(p.streamInfo(stream), { peerId: DB, openedSession: true });
    const again = await p.connect(WEB, { podIp: '127.0.0.1', port: 8080, expectedPeerId: DB });
    assert.deepEqual(p.streamInfo(again), { peerId: DB, openedSession: false });
    assert.equal(db.sessions(), 1);
    stream.close();
    again.close();
  });

  it('for an address the table lacks, takes one identity of the trust domain, pooled apart from the vouched', async () => {
    const db = await peer(DB);
    const p = pool(db.port);
    const unvouched = await p.connect(WEB, { podIp: '127.0.0.1', port: 8080, expectedPeerId: undefined });
    assert.deepEqual(p.streamInfo(unvouched), { peerId: DB, openedSession: true });
    const vouched = await p.connect(WEB, { podIp: '127.0.0.1', port: 8080, expectedPeerId: DB });
    assert.equal(p.streamInfo(vouched).openedSession, true, 'a session opened unvouched served a vouched connection');
    assert.equal(db.sessions(), 2);
    unvouched.close();
    vouched.close();
  });

  it('refuses a peer with another valid identity of the mesh, and sends it no CONNECT', async () => {
    const impostor = await peer(IMPOSTOR);
    const p = pool(impostor.port);
    await assert.rejects(p.connect(WEB, { podIp: '127.0.0.1', port: 8080, expectedPeerId: DB }), (err: unknown) => {
      assert.ok(err instanceof PeerIdentityError, String(err));
      assert.match(err.message, new RegExp(`presented ${IMPOSTOR}, expected ${DB}`));
      return true;
    });
    assert.equal(impostor.streams(), 0, 'a CONNECT reached the impostor');
  });

  it('gives a session no new connection past half its certificates\' life, and ends it when they expire', async () => {
    // The peer's certificate expires in 6 s (certificates carry whole seconds: 5-6 s).
    const db = await peer(DB, 6_000);
    const p = pool(db.port);
    const first = await p.connect(WEB, { podIp: '127.0.0.1', port: 8080, expectedPeerId: DB });
    const firstClosed = new Promise<number>((r) => first.once('close', () => r(Date.now())));
    first.on('error', () => {});
    const again = await p.connect(WEB, { podIp: '127.0.0.1', port: 8080, expectedPeerId: DB });
    assert.equal(db.sessions(), 1, 'a fresh session takes new connections');
    again.close();
    await new Promise((r) => setTimeout(r, 3_500));
    const late = await p.connect(WEB, { podIp: '127.0.0.1', port: 8080, expectedPeerId: DB });
    assert.equal(db.sessions(), 2, 'past half its life the session took a new connection');
    late.close();
    // At expiry the first session is retired; its open stream is reset after the drain (1 s).
    const closedAt = await firstClosed;
    assert.ok(closedAt >= db.expiresAt - 1_000, `the open stream ended ${db.expiresAt - closedAt} ms before the certificate expired`);
    assert.ok(closedAt - db.expiresAt < 1_000 + 2_000, `the open stream ended ${closedAt - db.expiresAt} ms after expiry`);
  });

  it('retries a stream the peer refused unprocessed (REFUSED_STREAM) on a new session', async () => {
    const db = await peer(DB, undefined, 1);
    const p = pool(db.port);
    const stream = await p.connect(WEB, { podIp: '127.0.0.1', port: 8080, expectedPeerId: DB });
    assert.equal(db.streams(), 2, 'the refused stream was tried again');
    assert.equal(db.sessions(), 2, 'the retry went on a new session');
    stream.close();
  });

  it('retries a new session refused at TCP connect (a peer agent handing over), and gives up on a dead one', async () => {
    // The peer's port refuses for a moment, then its new agent listens there.
    const db = await peer(DB);
    const port = db.port;
    servers.at(-1)!.close();
    const p = pool(port);
    const later = setTimeout(() => servers.at(-1)!.listen(port, '127.0.0.1'), 30);
    try {
      const stream = await p.connect(WEB, { podIp: '127.0.0.1', port: 8080, expectedPeerId: DB });
      assert.equal(db.streams(), 1);
      stream.close();
    } finally {
      clearTimeout(later);
    }
    // Nobody there at all: refused after the retries, not hanging.
    const closed = await peer(DB);
    servers.at(-1)!.close();
    const started = Date.now();
    await assert.rejects(pool(closed.port).connect(WEB, { podIp: '127.0.0.1', port: 8080, expectedPeerId: DB }), /ECONNREFUSED/);
    assert.ok(Date.now() - started < 5_000);
  });
});
