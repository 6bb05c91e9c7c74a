import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { hasNetAdmin } from '../../src/capture/exec.ts';
import { decodeSockaddr, encodeSockaddrIn, openTransparentSocket, plainIp, setSendBuffer } from '../../src/capture/socket.ts';
import { TUNNEL_SEND_BUFFER_BYTES } from '../../src/proxy/tunnel/h2.ts';
import { OriginalDestinationError, SourceAddressError } from '../../src/errors.ts';

function sockaddrIn(ip: number[], port: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt16LE(2, 0);
  b.writeUInt16BE(port, 2);
  Buffer.from(ip).copy(b, 4);
  return b;
}

describe('original destination decoding', () => {
  it('decodes sockaddr_in with port and address in network order', () => {
    assert.deepEqual(decodeSockaddr(sockaddrIn([10, 241, 2, 11], 8080)), { ip: '10.241.2.11', port: 8080, family: 4 });
    assert.deepEqual(decodeSockaddr(sockaddrIn([255, 0, 0, 1], 65535)), { ip: '255.0.0.1', port: 65535, family: 4 });
  });

  it('decodes sockaddr_in6, compressing zeros and printing mapped IPv4 dotted', () => {
    const b = Buffer.alloc(28);
    b.writeUInt16LE(10, 0);
    b.writeUInt16BE(443, 2);
    Buffer.from('fd000000000000000000000000000001', 'hex').copy(b, 8);
    assert.deepEqual(decodeSockaddr(b), { ip: 'fd00::1', port: 443, family: 6 });
    Buffer.from('00000000000000000000ffff0af10b0c', 'hex').copy(b, 8);
    assert.equal(decodeSockaddr(b).ip, '::ffff:10.241.11.12');
    Buffer.from('20010db8000100020003000400050006', 'hex').copy(b, 8);
    assert.equal(decodeSockaddr(b).ip, '2001:db8:1:2:3:4:5:6');
  });

  it('refuses short buffers and unknown families with a typed error', () => {
    assert.throws(() => decodeSockaddr(Buffer.alloc(8)), OriginalDestinationError);
    const b = sockaddrIn([1, 2, 3, 4], 1);
    b.writeUInt16LE(1, 0);
    assert.throws(() => decodeSockaddr(b), /unexpected address family 1/);
  });

  it('strips the IPv4-mapped prefix of dual-stack peers', () => {
    assert.equal(plainIp('::ffff:10.0.0.1'), '10.0.0.1');
    assert.equal(plainIp('fd00::1'), 'fd00::1');
    assert.equal(plainIp(undefined), '');
  });
});

describe('tunnel socket send buffer', () => {
  it('raises the kernel send buffer past the HTTP/2 window (past wmem_max with CAP_NET_ADMIN)', async (t) => {
    if (!hasNetAdmin()) { t.skip('SO_SNDBUFFORCE needs CAP_NET_ADMIN'); return; }
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const client = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1' });
    try {
      await new Promise((r) => client.once('connect', r));
      const sndbuf = () => {
        // ss prints the socket's memory as skmem:(r..,rb..,t..,tb<send buffer>,...)
        const line = execFileSync('ss', ['-tmnH', `sport = :${client.localPort}`]).toString();
        return Number(/tb(\d+)/.exec(line)?.[1]);
      };
      const before = sndbuf();
      assert.equal(setSendBuffer(client, TUNNEL_SEND_BUFFER_BYTES), true);
      assert.ok(sndbuf() >= TUNNEL_SEND_BUFFER_BYTES, `send buffer ${before} -> ${sndbuf()}, wanted >= ${TUNNEL_SEND_BUFFER_BYTES}`);
    } finally {
      client.destroy();
      server.close();
    }
  });
});

describe('source-preserving sockets', () => {
  it('encodes sockaddr_in and refuses what is not IPv4', () => {
    assert.deepEqual(encodeSockaddrIn('10.241.2.11', 8080), sockaddrIn([10, 241, 2, 11], 8080));
    assert.throws(() => encodeSockaddrIn('fd00::1', 1), SourceAddressError);
    assert.throws(() => encodeSockaddrIn('10.0.0.256', 1), SourceAddressError);
  });

  it('binds to an address the host does not own, on a port of the range given that no redirected connection holds', (t) => {
    if (!hasNetAdmin()) { t.skip('IP_TRANSPARENT needs CAP_NET_ADMIN'); return; }
    const [lo, hi] = [20_000, 20_099] as const;
    const offered: number[] = [];
    // 192.0.2.0/24 (TEST-NET-1) is nobody's address: only a transparent socket may bind it.
    const fd = openTransparentSocket('192.0.2.77', [lo, hi], (port) => { offered.push(port); return offered.length < 3; });
    const socket = new net.Socket({ fd });
    try {
      assert.equal(offered.length, 3, 'the first two ports were refused');
      assert.ok(offered.every((p) => p >= lo && p <= hi), `${offered} within ${lo}-${hi}`);
      // Bound before connect, to the port that was not taken.
      assert.deepEqual(socket.address(), { address: '192.0.2.77', family: 'IPv4', port: offered[2] });
    } finally {
      socket.destroy();
    }
    assert.throws(() => openTransparentSocket('192.0.2.77', [lo, hi], () => true), /no free source port in 8 tries/);
  });
});
