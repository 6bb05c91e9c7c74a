// The one home for OS-specific socket calls (FFI). Nothing else in meshlet touches file descriptors.
import type { Socket } from 'node:net';
import koffi from 'koffi';
import { OriginalDestinationError, SourceAddressError } from '../errors.ts';

const SOL_IP = 0;
const SOL_IPV6 = 41;
const SO_ORIGINAL_DST = 80; // same value as IP6T_SO_ORIGINAL_DST
const AF_INET = 2;
const AF_INET6 = 10;

export interface SocketAddress {
  ip: string;
  port: number;
  family: 4 | 6;
}

const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_LINGER = 13;
const SO_SNDBUFFORCE = 32; // like SO_SNDBUF but past net.core.wmem_max; needs CAP_NET_ADMIN

const IP_TRANSPARENT = 19;
const SO_REUSEADDR = 2;
const EADDRINUSE = 98;
/** An int option's value 1, as setsockopt reads it. */
const ONE = Buffer.from([1, 0, 0, 0]);
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;

type GetSockOpt = (fd: number, level: number, name: number, out: Buffer, len: number[]) => number;
type SetSockOpt = (fd: number, level: number, name: number, value: Buffer, len: number) => number;
interface Libc {
  getsockopt: GetSockOpt;
  setsockopt: SetSockOpt;
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, addr: Buffer, len: number): number;
  close(fd: number): number;
  ioctl(fd: number, request: number, out: number[]): number;
  send(fd: number, buf: Buffer, len: number, flags: number): number;
  recv(fd: number, buf: Buffer, len: number, flags: number): number;
}
let libc: Libc | undefined;

function sys(): Libc {
  if (!libc) {
    const lib = koffi.load('libc.so.6');
    libc = {
      // Option values are raw buffers (sockaddr_in, sockaddr_in6, struct linger) that we encode and
      // decode ourselves, so ports and addresses stay in network byte order as the kernel has them.
      getsockopt: lib.func('int getsockopt(int, int, int, _Out_ void *, _Inout_ uint32_t *)') as GetSockOpt,
      setsockopt: lib.func('int setsockopt(int, int, int, const void *, uint32_t)') as SetSockOpt,
      socket: lib.func('int socket(int, int, int)') as Libc['socket'],
      bind: lib.func('int bind(int, const void *, uint32_t)') as Libc['bind'],
      close: lib.func('int close(int)') as Libc['close'],
      // ioctl is variadic; on Linux (x86-64, arm64) an int pointer as third argument is passed like
      // a fixed one, which is all SIOCOUTQ takes.
      ioctl: lib.func('int ioctl(int, unsigned long, _Out_ int *)') as Libc['ioctl'],
      send: lib.func('long send(int, const void *, size_t, int)') as Libc['send'],
      recv: lib.func('long recv(int, _Out_ void *, size_t, int)') as Libc['recv'],
    };
  }
  return libc;
}

/** sockaddr_in for an IPv4 address and port (family in host order, the rest in network order). */
export function encodeSockaddrIn(ip: string, port: number): Buffer {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((n) => !Number.isInteger(n) || n < 0 || n > 255)) {
    throw new SourceAddressError(ip, 'not an IPv4 address');
  }
  const buf = Buffer.alloc(16);
  buf.writeUInt16LE(AF_INET, 0);
  buf.writeUInt16BE(port, 2);
  Buffer.from(parts).copy(buf, 4);
  return buf;
}

/** Source ports a delivery may take on another address: lowest and highest, both included. */
export type PortRange = readonly [number, number];

/**
 * A TCP socket bound to `sourceIp`, an address this node does not own (the source pod's), ready to
 * be connected by Node (`new net.Socket({ fd })` then connect). IP_TRANSPARENT lets the kernel bind
 * it and send from it; it needs CAP_NET_ADMIN, which the node agent holds.
 *
 * The agent picks the port, at random in `ports`, and never one that is `taken`. The address is
 * shared with the pod, whose kernel knows nothing of the agent's sockets: a connection the pod
 * opened with the same 4-tuple (redirected to the agent, a NAT entry on this node) would take the
 * delivery's SYN for one of its own packets and send it back to the agent (the delivery hangs
 * until its connect timeout), and a connection the pod opens later with a delivery's 4-tuple
 * would be taken for the delivery's. So `ports` lies outside the range the pods' kernels pick
 * from (--source-ports, 1024-32767 by default: below Linux's default ephemeral range, 32768-60999,
 * which every pod's network namespace starts with); `taken` (the redirected connections the agent
 * holds) catches clients whose ports fall inside it anyway.
 *
 * Letting the kernel pick (bind to port 0) made it search every port of the address for one no
 * socket holds, whatever the destination: under sustained churn, with thousands of TIME_WAITs,
 * that search was 62% of the destination agent's CPU (perf). SO_REUSEADDR lets sockets to
 * different destinations share a port, as the kernel's own connect() does; the one 4-tuple that
 * may not be shared makes connect() fail with EADDRNOTAVAIL, and connectLocalPod tries another.
 */
export function openTransparentSocket(sourceIp: string, ports: PortRange, taken: (port: number) => boolean = () => false): number {
  const libc = sys();
  const [lo, hi] = ports;
  const addr = encodeSockaddrIn(sourceIp, 0);
  const tries = 8;
  for (let attempt = 0; attempt < tries; attempt++) {
    const port = lo + Math.floor(Math.random() * (hi - lo + 1));
    if (taken(port)) continue;
    addr.writeUInt16BE(port, 2);
    const fd = libc.socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new SourceAddressError(sourceIp, `socket() failed with errno ${koffi.errno()}`);
    const failed = libc.setsockopt(fd, SOL_IP, IP_TRANSPARENT, ONE, 4) !== 0 ? 'setsockopt(IP_TRANSPARENT)'
      : libc.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, ONE, 4) !== 0 ? 'setsockopt(SO_REUSEADDR)'
      : libc.bind(fd, addr, addr.length) !== 0 ? `bind() to port ${port}` : undefined;
    if (!failed) return fd;
    const errno = koffi.errno();
    libc.close(fd);
    // A listener of the node's own on that address and port: another port will do.
    if (errno === EADDRINUSE) continue;
    throw new SourceAddressError(sourceIp, `${failed} failed with errno ${errno}${failed.includes('TRANSPARENT') ? ' (CAP_NET_ADMIN is required)' : ''}`);
  }
  throw new SourceAddressError(sourceIp, `no free source port in ${tries} tries (each was taken by a redirected connection or in use)`);
}

/** Decodes a sockaddr_in / sockaddr_in6 as written by the kernel. Exported for unit tests. */
export function decodeSockaddr(buf: Buffer): SocketAddress {
  if (buf.length < 16) throw new OriginalDestinationError(`sockaddr too short (${buf.length} bytes)`);
  const family = buf.readUInt16LE(0); // sa_family_t is host order (little-endian on x86/arm64)
  const port = buf.readUInt16BE(2);
  if (family === AF_INET) {
    return { ip: `${buf[4]}.${buf[5]}.${buf[6]}.${buf[7]}`, port, family: 4 };
  }
  if (family === AF_INET6) {
    if (buf.length < 24) throw new OriginalDestinationError(`sockaddr_in6 too short (${buf.length} bytes)`);
    const groups: string[] = [];
    for (let i = 0; i < 8; i++) groups.push(buf.readUInt16BE(8 + i * 2).toString(16));
    return { ip: compressIpv6(groups), port, family: 6 };
  }
  throw new OriginalDestinationError(`unexpected address family ${family}`);
}

function compressIpv6(groups: string[]): string {
  const full = groups.join(':');
  // IPv4-mapped addresses read better in their dotted form, as Node prints them.
  if (/^0:0:0:0:0:ffff:/.test(full)) {
    const hi = parseInt(groups[6] ?? '0', 16);
    const lo = parseInt(groups[7] ?? '0', 16);
    return `::ffff:${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  if (bestStart < 0) return full;
  return `${groups.slice(0, bestStart).join(':')}::${groups.slice(bestStart + bestLen).join(':')}`;
}

/** The socket's file descriptor, or undefined once libuv has closed it. */
function fdOf(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** The destination a redirected TCP connection was originally addressed to (SO_ORIGINAL_DST). */
export function originalDestination(socket: Socket): SocketAddress {
  const fd = fdOf(socket);
  if (fd === undefined) throw new OriginalDestinationError('socket has no file descriptor');
  const v6 = socket.localFamily === 'IPv6' && !socket.localAddress?.startsWith('::ffff:');
  const buf = Buffer.alloc(28);
  const len = [v6 ? 28 : 16];
  const rc = sys().getsockopt(fd, v6 ? SOL_IPV6 : SOL_IP, SO_ORIGINAL_DST, buf, len);
  if (rc !== 0) {
    const errno = koffi.errno();
    throw new OriginalDestinationError(`getsockopt(SO_ORIGINAL_DST) failed with errno ${errno}` +
      (errno === 2 ? ' (no NAT entry: the connection was not redirected)' : ''));
  }
  return decodeSockaddr(buf.subarray(0, Math.max(16, len[0] ?? 16)));
}

/** Strips the IPv4-mapped prefix a dual-stack listener reports. */
export function plainIp(address: string | undefined): string {
  if (!address) return '';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

/**
 * Abortive close: the peer gets a TCP RST, not a FIN, and unsent data is dropped. libuv's own reset
 * (socket.resetAndDestroy) refuses with EINVAL while a shutdown is pending (right after end()), and
 * then leaves the descriptor open; SO_LINGER {on, 0} followed by close works in every state.
 */
export function resetSocket(socket: Socket): void {
  if (socket.destroyed) return;
  const fd = fdOf(socket);
  if (fd !== undefined) {
    const linger = Buffer.alloc(8); // struct linger { int l_onoff; int l_linger; }
    linger.writeInt32LE(1, 0);
    linger.writeInt32LE(0, 4);
    sys().setsockopt(fd, SOL_SOCKET, SO_LINGER, linger, linger.length);
  }
  socket.destroy();
}

/**
 * Gives a TCP socket a kernel send buffer of at least `bytes` (the kernel doubles it for its own
 * bookkeeping). Uses SO_SNDBUFFORCE, which the agent may (it holds CAP_NET_ADMIN), and falls back to
 * SO_SNDBUF, which the kernel caps at net.core.wmem_max. Returns whether either call succeeded.
 */
export function setSendBuffer(socket: Socket, bytes: number): boolean {
  const fd = fdOf(socket);
  if (fd === undefined) return false;
  const value = Buffer.alloc(4);
  value.writeInt32LE(bytes, 0);
  return sys().setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, value, 4) === 0 ||
    sys().setsockopt(fd, SOL_SOCKET, SO_SNDBUF, value, 4) === 0;
}

const IPPROTO_TCP = 6;
const TCP_INFO = 11;
const SIOCOUTQ = 0x5411; // bytes in the send queue: not yet sent, or sent and not yet acknowledged
/** struct tcp_info up to tcpi_bytes_received (Linux 4.1+): tcpi_bytes_acked is the u64 at 120. */
const TCP_INFO_BYTES = 136;
const TCPI_BYTES_ACKED = 120;

/** What a TCP socket has waiting to be delivered, and how much the peer has acknowledged so far. */
export interface SendProgress {
  /** Bytes in the kernel's send queue (unsent, or sent and unacknowledged). */
  queued: number;
  /** Bytes the peer has acknowledged over the connection's life. */
  acked: bigint;
}

/** The socket's send queue and acknowledged bytes (SIOCOUTQ, TCP_INFO); undefined once it is closed. */
export function sendProgress(socket: Socket): SendProgress | undefined {
  const fd = fdOf(socket);
  if (fd === undefined) return undefined;
  const queued = [0];
  if (sys().ioctl(fd, SIOCOUTQ, queued) !== 0) return undefined;
  const info = Buffer.alloc(TCP_INFO_BYTES);
  const len = [TCP_INFO_BYTES];
  if (sys().getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, len) !== 0 || (len[0] ?? 0) < TCP_INFO_BYTES) return undefined;
  return { queued: queued[0] ?? 0, acked: info.readBigUInt64LE(TCPI_BYTES_ACKED) };
}

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const NETLINK_ROUTE = 0;
const RTM_NEWADDR = 20;
const RTM_GETADDR = 22;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLM_F_REQUEST = 0x1;
const NLM_F_DUMP = 0x300;
const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFA_TARGET_NETNSID = 10;
const SOL_NETLINK = 270;
const NETLINK_GET_STRICT_CHK = 12;
const NLMSG_HDRLEN = 16;
const IFADDRMSG_LEN = 8;

/** An IPv4 address of an interface in another network namespace. */
export interface PeerAddress {
  /** The interface's index in its own namespace. */
  index: number;
  ip: string;
}

/**
 * The IPv4 addresses in the network namespace this one knows as `nsid` (a veth peer's
 * link-netnsid), read with one netlink dump (RTM_GETADDR with IFA_TARGET_NETNSID, Linux 4.20+).
 * Unlike entering the namespace (setns, CAP_SYS_ADMIN), this needs only CAP_NET_ADMIN, and no
 * view of the runtime's namespace files.
 */
export function addressesInNetns(nsid: number): PeerAddress[] {
  const fd = sys().socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) throw new Error('cannot open a netlink socket');
  try {
    // Without strict checking the kernel ignores the target namespace and dumps this one.
    sys().setsockopt(fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, ONE, 4);
    const req = Buffer.alloc(NLMSG_HDRLEN + IFADDRMSG_LEN + 8);
    req.writeUInt32LE(req.length, 0);
    req.writeUInt16LE(RTM_GETADDR, 4);
    req.writeUInt16LE(NLM_F_REQUEST | NLM_F_DUMP, 6);
    req.writeUInt32LE(1, 8); // sequence number
    req.writeUInt8(AF_INET, NLMSG_HDRLEN); // ifaddrmsg: family, the rest 0
    req.writeUInt16LE(8, NLMSG_HDRLEN + IFADDRMSG_LEN); // rtattr length
    req.writeUInt16LE(IFA_TARGET_NETNSID, NLMSG_HDRLEN + IFADDRMSG_LEN + 2);
    req.writeInt32LE(nsid, NLMSG_HDRLEN + IFADDRMSG_LEN + 4);
    if (sys().send(fd, req, req.length, 0) !== req.length) throw new Error('netlink send failed');
    const out: PeerAddress[] = [];
    const buf = Buffer.alloc(64 * 1024);
    // The kernel builds each part of a dump as it is read: these reads do not wait.
    for (;;) {
      const n = sys().recv(fd, buf, buf.length, 0);
      if (n <= 0) throw new Error('netlink receive failed');
      for (let off = 0; off + NLMSG_HDRLEN <= n;) {
        const len = buf.readUInt32LE(off);
        const type = buf.readUInt16LE(off + 4);
        if (len < NLMSG_HDRLEN || off + len > n) throw new Error('malformed netlink message');
        if (type === NLMSG_DONE || type === NLMSG_ERROR) {
          // A dump's error comes in its DONE message (or an ERROR one): a negative errno, 0 for none.
          const errno = len >= NLMSG_HDRLEN + 4 ? -buf.readInt32LE(off + NLMSG_HDRLEN) : 0;
          if (errno === 0) return out;
          throw new Error(`netlink RTM_GETADDR for nsid ${nsid}: errno ${errno}`);
        }
        if (type === RTM_NEWADDR) {
          const index = buf.readUInt32LE(off + NLMSG_HDRLEN + 4);
          let local: string | undefined;
          let address: string | undefined;
          for (let a = off + NLMSG_HDRLEN + IFADDRMSG_LEN; a + 4 <= off + len;) {
            const alen = buf.readUInt16LE(a);
            const atype = buf.readUInt16LE(a + 2);
            if (alen < 4) break;
            if (alen === 8 && (atype === IFA_LOCAL || atype === IFA_ADDRESS)) {
              const ip = [...buf.subarray(a + 4, a + 8)].join('.');
              if (atype === IFA_LOCAL) local = ip; else address = ip;
            }
            a += (alen + 3) & ~3;
          }
          const ip = local ?? address;
          if (ip) out.push({ index, ip });
        }
        off += (len + 3) & ~3;
      }
    }
  } finally {
    sys().close(fd);
  }
}
