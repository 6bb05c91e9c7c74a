import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import net from 'node:net';
import { hasNetAdmin } from '../../src/capture/exec.ts';
import { connectLocalPod, type ProxyContext } from '../../src/proxy/context.ts';
import { OpenRedirects } from '../../src/proxy/redirects.ts';

/** A loopback server that answers each connection with the address it came from. */
async function whoamiServer(): Promise<net.Server> {
  const server = net.createServer((s) => s.end(`${s.remoteAddress}:${s.remotePort}`));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

async function reply(socket: net.Socket): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of socket) chunks.push(c as Buffer);
  // Deliveries are half-open sockets (the relay forwards FINs): end our side too.
  socket.destroy();
  return Buffer.concat(chunks).toString();
}

describe('deliveries to local pods', () => {
  it('connect from the source address when preserving, and never from an open redirected 4-tuple', async (t) => {
    if (!hasNetAdmin()) { t.skip('IP_TRANSPARENT needs CAP_NET_ADMIN'); return; }
    const server = await whoamiServer();
    const port = (server.address() as net.AddressInfo).port;
    const redirects = new OpenRedirects();
    const asked: string[] = [];
    // Every port the kernel offers first is "held" by a redirected connection of the same tuple.
    const has = redirects.has.bind(redirects);
    redirects.has = (srcIp, srcPort, dstIp, dstPort) => {
      asked.push(`${srcIp}>${dstIp}:${dstPort}`);
      return asked.length === 1 || has(srcIp, srcPort, dstIp, dstPort);
    };
    const ctx = { connectTimeoutMs: 2000, preserveSource: true, redirects } as ProxyContext;
    try {
      // 127.0.0.2 stands for the source pod: loopback, so replies come back without policy routing.
      const from = (await reply(await connectLocalPod(ctx, '127.0.0.1', port, { ip: '127.0.0.2' }))).split(':');
      assert.equal(from[0], '127.0.0.2');
      assert.deepEqual(asked, [`127.0.0.2>127.0.0.1:${port}`, `127.0.0.2>127.0.0.1:${port}`], 'asked about the delivery\'s own tuple, and took a second port');
      const plain = await reply(await connectLocalPod({ ...ctx, preserveSource: false }, '127.0.0.1', port, { ip: '127.0.0.2' }));
      assert.equal(plain.split(':')[0], '127.0.0.1', 'without preservation: from the agent\'s own address');
    } finally {
      server.close();
    }
  });
});
