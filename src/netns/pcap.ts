// Reads classic pcap files (what `tcpdump -w` writes) far enough to look at TCP payloads over IPv4
// on Ethernet: enough to prove what crossed the wire between nodes.

export interface TcpSegment {
  src: string;
  dst: string;
  srcPort: number;
  dstPort: number;
  payload: Buffer;
}

const LINKTYPE_ETHERNET = 1;

export function readPcap(buf: Buffer): TcpSegment[] {
  if (buf.length < 24) return [];
  const magic = buf.readUInt32LE(0);
  const le = magic === 0xa1b2c3d4 || magic === 0xa1b23c4d;
  if (!le && buf.readUInt32BE(0) !== 0xa1b2c3d4 && buf.readUInt32BE(0) !== 0xa1b23c4d) {
    throw new Error('not a pcap file (pcapng is not supported; use tcpdump -w)');
  }
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const linktype = u32(20);
  if (linktype !== LINKTYPE_ETHERNET) throw new Error(`unsupported link type ${linktype}`);
  const segments: TcpSegment[] = [];
  let off = 24;
  while (off + 16 <= buf.length) {
    const caplen = u32(off + 8);
    const start = off + 16;
    off = start + caplen;
    if (off > buf.length) break; // truncated last record (capture stopped mid-write)
    const frame = buf.subarray(start, start + caplen);
    const seg = parseEthernetTcp(frame);
    if (seg) segments.push(seg);
  }
  return segments;
}

function parseEthernetTcp(frame: Buffer): TcpSegment | undefined {
  if (frame.length < 14 + 20) return undefined;
  let etherType = frame.readUInt16BE(12);
  let ipOff = 14;
  if (etherType === 0x8100) { etherType = frame.readUInt16BE(16); ipOff = 18; } // VLAN tag
  if (etherType !== 0x0800) return undefined;
  const ihl = ((frame[ipOff] ?? 0) & 0x0f) * 4;
  if (frame[ipOff + 9] !== 6) return undefined; // TCP only
  const totalLen = frame.readUInt16BE(ipOff + 2);
  const ip = (o: number) => `${frame[o]}.${frame[o + 1]}.${frame[o + 2]}.${frame[o + 3]}`;
  const tcpOff = ipOff + ihl;
  if (frame.length < tcpOff + 20) return undefined;
  const dataOff = ((frame[tcpOff + 12] ?? 0) >> 4) * 4;
  const end = Math.min(frame.length, ipOff + totalLen);
  return {
    src: ip(ipOff + 12),
    dst: ip(ipOff + 16),
    srcPort: frame.readUInt16BE(tcpOff),
    dstPort: frame.readUInt16BE(tcpOff + 2),
    payload: frame.subarray(tcpOff + dataOff, end),
  };
}

/** The TLS record content types that start TCP payloads in one direction of a flow. */
export function tlsRecordTypes(segments: TcpSegment[]): Set<number> {
  // Each direction of each connection as one byte stream (capture order: the lab's links neither
  // reorder nor drop), walked record by record (type, version, length), so a segment that starts in
  // the middle of a record is never mistaken for a record header.
  const streams = new Map<string, Buffer[]>();
  for (const s of segments) {
    if (s.payload.length === 0) continue;
    const key = `${s.src}:${s.srcPort}>${s.dst}:${s.dstPort}`;
    const list = streams.get(key);
    if (list) list.push(s.payload); else streams.set(key, [s.payload]);
  }
  const types = new Set<number>();
  for (const parts of streams.values()) {
    const bytes = Buffer.concat(parts);
    let at = 0;
    while (at + 5 <= bytes.length) {
      const type = bytes[at] as number;
      // TLS content types are 20-24 and the record version's major byte is 3; anything else means
      // this stream is not TLS (or began before the capture): stop reading it.
      if (type < 20 || type > 24 || bytes[at + 1] !== 0x03) break;
      types.add(type);
      at += 5 + bytes.readUInt16BE(at + 3);
    }
  }
  return types;
}
