// Settings shared by both ends of the HBONE-style tunnel (HTTP/2 CONNECT over mutual TLS 1.3).
import { randomUUID, X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { connect, isIP, isIPv4, isIPv6, type Socket } from 'node:net';
import { setSendBuffer } from '../../capture/socket.ts';
import { UpstreamConnectError } from '../../errors.ts';

export const ALPN = 'h2';

// Default HTTP/2 windows (64 KB) cap one stream at a small fraction of direct bulk throughput; 16 MB
// windows doubled it (bench/README.md, "Measurements behind the code").
export const WINDOW_BYTES = 16 * 1024 * 1024;

// 100 streams a session: a peer (even one ignoring SETTINGS) can hand the agent at most 100 new
// connections in one socket read, which the one event loop then serves before anything else; with
// 1000 such a burst held other tenants up for about 0.2 s (bench/README.md, Reliability). The pool
// opens more sessions for a pair that needs more (pool.ts).
export const h2Settings = {
  initialWindowSize: WINDOW_BYTES,
  enablePush: false,
  maxConcurrentStreams: 100,
};

// Node caps what one HTTP/2 session may hold (maxSessionMemory, in MB, default 10) and refuses new
// streams once over it. With 16 MB windows a session legitimately holds a window of data in each
// direction, so the cap sits above that: two windows each way, plus headroom.
export const SESSION_MEMORY_MB = (4 * WINDOW_BYTES) / (1024 * 1024) + 16;

// Node's HTTP/2 stops reading its socket while a write to it is in progress (nodejs/node#29399).
// When both agents write more than TCP will take, each waits for the other to read: the session
// deadlocks (seen: 50 concurrent echo streams on one session stopped dead, Recv-Q and Send-Q full
// on both ends). What one side may have written and the other not yet consumed is bounded by the
// peer's HTTP/2 connection window, so a kernel send buffer larger than that window means a write
// never waits on the peer, and each side keeps reading. Set on both ends of every tunnel socket.
export const TUNNEL_SEND_BUFFER_BYTES = 2 * WINDOW_BYTES;

/** The SPIFFE URI SANs of a certificate, from Node's "URI:...,  DNS:..." summary. */
export function uriSans(cert: X509Certificate): string[] {
  return (cert.subjectAltName ?? '').split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
}

/** The verified peer's SPIFFE ID, or undefined when the peer presented none (or several). */
export function peerSpiffeId(socket: TLSSocket): string | undefined {
  const cert = socket.getPeerX509Certificate();
  return cert && spiffeIdOf(cert);
}

/** A certificate's one SPIFFE ID, or undefined when it has none (or several). */
export function spiffeIdOf(cert: X509Certificate): string | undefined {
  const uris = uriSans(cert).filter((u) => u.startsWith('spiffe://'));
  return uris.length === 1 ? uris[0] : undefined;
}

/**
 * Why a tunnel peer's certificate (its subjectaltname) does not prove what the client needs, or
 * undefined when it does: exactly `expected`; for an address the table does not know (expected
 * undefined), one SPIFFE ID of the source's own trust domain, as the peer's agent vouches.
 */
export function tunnelPeerProblem(subjectAltName: string | undefined, expected: string | undefined, sourceId: string): string | undefined {
  const ids = subjectAltName?.split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4)) ?? [];
  const domain = `spiffe://${sourceId.slice('spiffe://'.length).split('/')[0]}/`;
  if (ids.length === 1 && (expected === undefined ? ids[0]!.startsWith(domain) : ids[0] === expected)) return undefined;
  return `presented ${ids.join(',') || 'no SPIFFE ID'}, expected ${expected ?? `one of ${domain}`}`;
}

/** A new session's TCP connect was refused (RST to the SYN): nothing was sent, so a retry is safe. */
export function refusedAtConnect(err: unknown): boolean {
  return err instanceof UpstreamConnectError && (err.cause as NodeJS.ErrnoException | undefined)?.code === 'ECONNREFUSED';
}

/** TCP to a tunnel peer, with a send buffer above the peer's window (see TUNNEL_SEND_BUFFER_BYTES). */
export function tunnelSocket(host: string, port: number): Socket {
  const socket = connect({ host, port, noDelay: true });
  // The descriptor exists once connected; the TLS handshake only starts after that.
  socket.once('connect', () => setSendBuffer(socket, TUNNEL_SEND_BUFFER_BYTES));
  return socket;
}

/** Splits a CONNECT authority `ip:port` / `[v6]:port` strictly. */
export function parseAuthority(authority: string | undefined): { host: string; port: number } | undefined {
  if (!authority || authority.length > 64) return undefined;
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):([0-9]{1,5})$/.exec(authority);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  const host = (m[1] ?? m[2]) as string;
  // Bracketed means IPv6, bare means IPv4; anything that only looks like an address is not one.
  if (m[1] !== undefined ? !isIPv6(host) : !isIPv4(host)) return undefined;
  return { host, port };
}

export function formatAuthority(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** RFC 7239 `Forwarded: for=` naming the source pod (IPv6 quoted and bracketed). */
export function formatForwardedFor(ip: string): string {
  return ip.includes(':') ? `for="[${ip}]"` : `for=${ip}`;
}

/** The IP in a `forwarded: for=` header this agent's peers send, or undefined for anything else. */
export function parseForwardedFor(value: string | string[] | undefined): string | undefined {
  if (typeof value !== 'string' || value.length > 80) return undefined;
  const m = /^for=(?:"\[([0-9a-fA-F:.]+)\]"|([0-9.]+))$/.exec(value.trim());
  const ip = m?.[1] ?? m?.[2];
  return ip && isIP(ip) ? ip : undefined;
}

/** W3C `traceparent` for a tunnelled connection: the source agent's trace id, a fresh span id, sampled. */
export function formatTraceparent(traceId: string): string {
  return `00-${traceId}-${randomUUID().replaceAll('-', '').slice(0, 16)}-01`;
}

/** The trace id of a well-formed `traceparent`, or undefined (the caller starts a new trace). */
export function parseTraceparent(value: string | string[] | undefined): string | undefined {
  if (typeof value !== 'string') return undefined;
  const m = /^00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/.exec(value.trim());
  // All-zero ids are invalid per the W3C spec.
  return m && !/^0+$/.test(m[1]!) ? m[1] : undefined;
}
