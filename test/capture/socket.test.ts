import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeSockaddr, plainIp } from '../../src/capture/socket.ts';
import { OriginalDestinationError } from '../../src/errors.ts';

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
