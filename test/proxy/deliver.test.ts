import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import net from 'node:net';
import pino from 'pino';
import { hasNetAdmin } from '../../src/capture/exec.ts';
import { proxyContext } from '../support/proxy-context.ts';
import { connectLocalPod, holdRedirect } from '../../src/proxy/deliver.ts';
import { OpenRedirects } from '../../src/proxy/redirects.ts';
import { onSocketData, readToEnd } from '../support/pooled-reads.ts';

/** A loopback server that answers each connection with the address it came from. */
async function whoamiServer(): Promise<net.Server> {
  const server = net.createServer((s) => s.end(`${s.remoteAddress}:${s.remotePort}`));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

async function reply(socket: net.Socket): Promise<string> {
  const all = await readToEnd(socket);
  // Deliveries are half-open sockets (the relay forwards FINs): end our side too.
  socket.destroy();
  return all.toString();
}

/** Where deliveries pick their source ports here: away from the kernel's own (32768-60999). */
const SOURCE_PORTS = [20_000, 21_023] as const;

describe('deliveries to local pods', () => {
  it('connect from the source address and a port of the range when preserving, never from an open redirected 4-tuple', async (t) => {
    if (!hasNetAdmin()) { t.skip('IP_TRANSPARENT needs CAP_NET_ADMIN'); return; }
    const server = await whoamiServer();
    const port = (server.address() as net.AddressInfo).port;
    const redirects = new OpenRedirects();
    const asked: string[] = [];
    // The first port the agent picks is "held" by a redirected connection of the same tuple.
    const has = redirects.has.bind(redirects);
    redirects.has = (srcIp, srcPort, dstIp, dstPort) => {
      asked.push(`${srcIp}>${dstIp}:${dstPort}`);
      return asked.length === 1 || has(srcIp, srcPort, dstIp, dstPort);
    };
    const ctx = proxyContext({ connectTimeoutMs: 2000, preserveSource: { sourcePorts: SOURCE_PORTS }, redirects });
    try {
      // 127.0.0.2 stands for the source pod: loopback, so replies come back without policy routing.
      const from = (await reply(await connectLocalPod(ctx, '127.0.0.1', port, { ip: '127.0.0.2' }))).split(':');
      assert.equal(from[0], '127.0.0.2');
      assert.ok(Number(from[1]) >= SOURCE_PORTS[0] && Number(from[1]) <= SOURCE_PORTS[1], `port ${from[1]} in ${SOURCE_PORTS}`);
      assert.deepEqual(asked, [`127.0.0.2>127.0.0.1:${port}`, `127.0.0.2>127.0.0.1:${port}`], 'asked about the delivery\'s own tuple, and took a second port');
      const plain = await reply(await connectLocalPod({ ...ctx, preserveSource: false }, '127.0.0.1', port, { ip: '127.0.0.2' }));
      assert.equal(plain.split(':')[0], '127.0.0.1', 'without preservation: from the agent\'s own address');
    } finally {
      server.close();
    }
  });

  it('take another source port when the one picked already carries this very 4-tuple', async (t) => {
    if (!hasNetAdmin()) { t.skip('IP_TRANSPARENT needs CAP_NET_ADMIN'); return; }
    // A server that holds every connection open: the first delivery's 4-tuple stays in use.
    const held: net.Socket[] = [];
    const server = net.createServer((s) => { held.push(s); s.write(`${s.remotePort}`); });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    const ctx = proxyContext({ connectTimeoutMs: 2000, preserveSource: { sourcePorts: SOURCE_PORTS } });
    // Make the agent's first pick of each delivery the same port.
    const [lo, hi] = SOURCE_PORTS;
    const same = 0.5;
    const picked = lo + Math.floor(same * (hi - lo + 1));
    const random = Math.random;
    let forced = 0;
    Math.random = () => (forced++ % 2 === 0 ? same : random());
    const firstPort = (s: net.Socket) => new Promise<number>((resolve) => onSocketData(s, (d) => resolve(Number(d.toString()))));
    const sockets: net.Socket[] = [];
    try {
      forced = 0;
      sockets.push(await connectLocalPod(ctx, '127.0.0.1', port, { ip: '127.0.0.2' }));
      assert.equal(await firstPort(sockets[0]!), picked, 'the first delivery got the port picked');
      forced = 0;
      // The same pick again: connect() refuses the 4-tuple (EADDRNOTAVAIL) and the delivery draws another port.
      sockets.push(await connectLocalPod(ctx, '127.0.0.1', port, { ip: '127.0.0.2' }));
      const second = await firstPort(sockets[1]!);
      assert.notEqual(second, picked);
      assert.ok(second >= lo && second <= hi);
    } finally {
      Math.random = random;
      for (const s of [...sockets, ...held]) s.destroy();
      server.close();
    }
  });

  it('hold a redirected connection\'s 4-tuple, and tell the operator once a minute about a pod whose ports are in the delivery range', () => {
    const lines: Array<{ msg: string; source: string; sourcePort: number }> = [];
    const log = pino({ level: 'warn' }, { write: (l: string) => { lines.push(JSON.parse(l)); } });
    const ctx = proxyContext({ preserveSource: { sourcePorts: SOURCE_PORTS }, log });
    const dst = { ip: '10.9.0.2', port: 8080, family: 4 } as const;
    const releases = [
      holdRedirect(ctx, '10.9.0.1', 40_000, dst),
      holdRedirect(ctx, '10.9.0.1', 20_500, dst),
      holdRedirect(ctx, '10.9.0.1', 20_501, dst),
    ];
    assert.equal(ctx.redirects.has('10.9.0.1', 20_500, '10.9.0.2', 8080), true);
    assert.deepEqual(lines.map((l) => [l.source, l.sourcePort]), [['10.9.0.1', 20_500]], 'one line, for the port in the range');
    assert.match(lines[0]!.msg, /--source-ports/);
    for (const release of releases) release();
    assert.equal(ctx.redirects.has('10.9.0.1', 20_500, '10.9.0.2', 8080), false);
    holdRedirect({ ...ctx, preserveSource: false }, '10.9.0.3', 20_500, dst)();
    assert.equal(lines.length, 1, 'no delivery range without source preservation');
  });
});
