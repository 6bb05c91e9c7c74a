import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { readPcap, tlsRecordTypes } from '../../src/netns/pcap.ts';

function frame(payload: Buffer, dstPort: number): Buffer {
  const eth = Buffer.alloc(14);
  eth.writeUInt16BE(0x0800, 12);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + 20 + payload.length, 2);
  ip[9] = 6;
  Buffer.from([10, 0, 0, 1]).copy(ip, 12);
  Buffer.from([10, 0, 0, 2]).copy(ip, 16);
  const tcp = Buffer.alloc(20);
  tcp.writeUInt16BE(40000, 0);
  tcp.writeUInt16BE(dstPort, 2);
  tcp[12] = 5 << 4;
  return Buffer.concat([eth, ip, tcp, payload]);
}

function pcap(frames: Buffer[]): Buffer {
  const header = Buffer.alloc(24);
  header.writeUInt32LE(0xa1b2c3d4, 0);
  header.writeUInt16LE(2, 4);
  header.writeUInt16LE(4, 6);
  header.writeUInt32LE(65535, 16);
  header.writeUInt32LE(1, 20);
  return Buffer.concat([header, ...frames.flatMap((f) => {
    const rec = Buffer.alloc(16);
    rec.writeUInt32LE(f.length, 8);
    rec.writeUInt32LE(f.length, 12);
    return [rec, f];
  })]);
}

describe('pcap reader', () => {
  it('extracts TCP segments and their payloads', () => {
    const tls = Buffer.from([0x17, 0x03, 0x03, 0x00, 0x02, 0xaa, 0xbb]);
    const segs = readPcap(pcap([frame(tls, 15008), frame(Buffer.from('hello'), 8080)]));
    assert.equal(segs.length, 2);
    assert.deepEqual([segs[0]?.src, segs[0]?.dst, segs[0]?.dstPort], ['10.0.0.1', '10.0.0.2', 15008]);
    assert.equal(segs[1]?.payload.toString(), 'hello');
    assert.deepEqual([...tlsRecordTypes(segs)], [0x17]);
  });

  it('reads TLS record types across segment boundaries, never from the middle of a record', () => {
    const seg = (payload: number[], srcPort = 40000) => ({ src: '10.0.0.1', dst: '10.0.0.2', srcPort, dstPort: 15008, payload: Buffer.from(payload) });
    // A handshake record, then an application-data record of 6 bytes split over two segments; the
    // second segment's first bytes (0xbe 0x03 ...) look like a header but are record body.
    const types = tlsRecordTypes([
      seg([0x16, 0x03, 0x03, 0x00, 0x01, 0x01]),
      seg([0x17, 0x03, 0x03, 0x00, 0x06, 0x00]),
      seg([0xbe, 0x03, 0x00, 0x00, 0x00, 0x15, 0x03, 0x03, 0x00, 0x00]),
      // Another connection's plaintext: not TLS, ignored.
      seg([0x47, 0x45, 0x54, 0x20, 0x2f, 0x20], 40001),
    ]);
    assert.deepEqual([...types].sort(), [0x15, 0x16, 0x17]);
  });

  it('refuses files that are not pcap', () => {
    assert.throws(() => readPcap(Buffer.alloc(32, 7)), /not a pcap/);
  });
});
