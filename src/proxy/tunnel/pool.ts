// Client side of the tunnel: one mTLS HTTP/2 session per (source identity, destination pod), shared
// by every app connection between them, so handshakes happen once per pair, not once per connection.
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { setSendBuffer } from '../../capture/socket.ts';
import { PeerIdentityError, TunnelRejectedError, UpstreamConnectError } from '../../errors.ts';
import { ALPN, formatAuthority, formatForwardedFor, formatTraceparent, h2Settings, SESSION_MEMORY_MB, TUNNEL_SEND_BUFFER_BYTES, WINDOW_BYTES, uriSans } from './h2.ts';

export interface TunnelTarget {
  /** IP of the destination pod: the tunnel goes to its port 15008, where its node's agent answers. */
  podIp: string;
  port: number;
  expectedPeerId: string;
  /** The source pod's IP, sent as `forwarded: for=` so the destination's policy sees the pod, not the node. */
  sourceIp?: string;
  /** The connection's trace id, sent as `traceparent` so both agents' access logs share it. */
  traceId?: string;
}

export interface TunnelPoolOptions {
  tunnelPort: number;
  connectTimeoutMs: number;
  log: Logger;
  /** The TLS context to present as `spiffeId` (throws NoCertificateError when there is none). */
  secureContextFor(spiffeId: string): tls.SecureContext;
  /** Told how long each new session took to set up (TCP + TLS + HTTP/2), and whether it succeeded. */
  onHandshake?(seconds: number, ok: boolean): void;
}

interface PoolEntry {
  key: string;
  session: Promise<http2.ClientHttp2Session>;
  streams: number;
  createdAt: number;
  peerId: string;
  /** The session, once established (lets a going-away session be forgotten synchronously). */
  resolved?: http2.ClientHttp2Session;
}

/** A stream the peer never processed, on a session that is going away: retried once. */
class NeverSeenError extends Error {
  readonly session: http2.ClientHttp2Session;
  override readonly cause: Error;
  constructor(session: http2.ClientHttp2Session, cause: Error) {
    super(cause.message);
    this.session = session;
    this.cause = cause;
  }
}

export class TunnelPool {
  readonly #entries = new Map<string, PoolEntry>();
  readonly #opts: TunnelPoolOptions;
  readonly #log: Logger;
  #closed = false;

  constructor(opts: TunnelPoolOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ component: 'tunnel-pool' });
  }

  /**
   * Opens a CONNECT stream to `target` as `sourceId`; resolves once the peer answered 200. A stream
   * the peer never saw (its session was going away: GOAWAY, REFUSED_STREAM) is retried once on a
   * fresh session, so an agent upgrade on either side loses no connection.
   */
  async connect(sourceId: string, target: TunnelTarget): Promise<http2.ClientHttp2Stream> {
    try {
      return await this.#connectOnce(sourceId, target);
    } catch (err) {
      if (!(err instanceof NeverSeenError)) throw err;
      this.#log.debug({ podIp: target.podIp, reason: err.message }, 'stream refused by a session going away; retrying on a new session');
      this.#forget(`${sourceId}|${target.podIp}`, err.session);
      return this.#connectOnce(sourceId, target).catch((e: unknown) => { throw e instanceof NeverSeenError ? e.cause : e; });
    }
  }

  /** Drops the pool's entry for `key` if it still holds this session (a newer one is left alone). */
  #forget(key: string, session: http2.ClientHttp2Session): void {
    const current = this.#entries.get(key);
    if (current?.resolved === session) this.#entries.delete(key);
  }

  async #connectOnce(sourceId: string, target: TunnelTarget): Promise<http2.ClientHttp2Stream> {
    const entry = this.#entry(sourceId, target);
    const session = await entry.session;
    if (session.closed || session.destroyed) {
      throw new NeverSeenError(session, new TunnelRejectedError(undefined, 'tunnel session is closing'));
    }
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request(
      {
        ':method': 'CONNECT', ':authority': formatAuthority(target.podIp, target.port),
        ...(target.sourceIp ? { forwarded: formatForwardedFor(target.sourceIp) } : {}),
        ...(target.traceId ? { traceparent: formatTraceparent(target.traceId) } : {}),
      },
      { endStream: false },
    );
    } catch (err) {
      // ERR_HTTP2_GOAWAY_SESSION / ERR_HTTP2_INVALID_SESSION: the session went away under us.
      throw new NeverSeenError(session, new TunnelRejectedError(undefined, (err as Error).message));
    }
    entry.streams++;
    let answered = false;
    stream.once('close', () => { entry.streams--; });
    await new Promise<void>((resolve, reject) => {
      const settle = (err?: Error) => {
        if (answered) return;
        answered = true;
        clearTimeout(timer);
        if (err) {
          if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_CANCEL);
          reject(err);
        } else resolve();
      };
      const timer = setTimeout(() => settle(new TunnelRejectedError(undefined, `no answer within ${this.#opts.connectTimeoutMs} ms`)),
        this.#opts.connectTimeoutMs);
      stream.once('error', (err) => settle(new TunnelRejectedError(undefined, err.message)));
      stream.once('close', () => {
        const refused = new TunnelRejectedError(undefined, `stream closed before an answer (code ${stream.rstCode})`);
        // REFUSED_STREAM is the peer saying it never processed the stream (RFC 9113 §8.7): safe to retry.
        settle(stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM ? new NeverSeenError(session, refused) : refused);
      });
      stream.once('response', (headers) => {
        const status = Number(headers[':status']);
        settle(status === 200 ? undefined
          : new TunnelRejectedError(status, String(headers['x-meshlet-error'] ?? 'refused by peer agent')));
      });
    });
    return stream;
  }

  #entry(sourceId: string, target: TunnelTarget): PoolEntry {
    const key = `${sourceId}|${target.podIp}`;
    const existing = this.#entries.get(key);
    if (existing) return existing;
    const entry: PoolEntry = {
      key, streams: 0, createdAt: Date.now(), peerId: target.expectedPeerId,
      session: this.#open(sourceId, target, key),
    };
    // A failed session attempt is forgotten at once so the next connection tries again.
    entry.session.then((s) => { entry.resolved = s; }, () => { if (this.#entries.get(key) === entry) this.#entries.delete(key); });
    this.#entries.set(key, entry);
    return entry;
  }

  #open(sourceId: string, target: TunnelTarget, key: string): Promise<http2.ClientHttp2Session> {
    if (this.#closed) return Promise.reject(new UpstreamConnectError(target.podIp, 'pool is closed'));
    const secureContext = this.#opts.secureContextFor(sourceId);
    const authority = `https://${formatAuthority(target.podIp, this.#opts.tunnelPort)}`;
    const started = performance.now();
    const observe = (ok: boolean) => this.#opts.onHandshake?.((performance.now() - started) / 1000, ok);
    return new Promise((resolve, reject) => {
      let identityError: PeerIdentityError | undefined;
      const session = http2.connect(authority, {
        settings: h2Settings,
        maxSessionMemory: SESSION_MEMORY_MB,
        createConnection: () => tls.connect({
          socket: tunnelSocket(target.podIp, this.#opts.tunnelPort),
          secureContext,
          ALPNProtocols: [ALPN],
          minVersion: 'TLSv1.3',
          // The peer proves the destination workload's identity, not a host name.
          checkServerIdentity: (_host, cert) => {
            const ids = cert.subjectaltname?.split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4)) ?? [];
            if (ids.length === 1 && ids[0] === target.expectedPeerId) return undefined;
            identityError = new PeerIdentityError(`tunnel peer ${target.podIp} presented ${ids.join(',') || 'no SPIFFE ID'}, expected ${target.expectedPeerId}`);
            return identityError;
          },
        }),
      });
      const timer = setTimeout(() => {
        session.destroy();
        reject(new UpstreamConnectError(authority, `tunnel handshake timed out after ${this.#opts.connectTimeoutMs} ms`));
      }, this.#opts.connectTimeoutMs);
      session.once('connect', () => {
        clearTimeout(timer);
        observe(true);
        session.setLocalWindowSize(WINDOW_BYTES);
        const peer = (session.socket as tls.TLSSocket).getPeerX509Certificate();
        this.#log.debug({ key, peer: peer ? uriSans(peer) : [] }, 'tunnel session established');
        resolve(session);
      });
      session.once('error', (err) => {
        clearTimeout(timer);
        observe(false);
        reject(identityError ?? new UpstreamConnectError(authority, err));
      });
      const forget = () => this.#forget(key, session);
      session.once('close', forget);
      session.once('goaway', () => {
        this.#log.info({ key }, 'tunnel peer sent GOAWAY: new connections open a new session');
        forget();
      });
      // Idle sessions should not keep the process alive during shutdown.
      session.unref();
    });
  }

  /** Pool state for /config_dump. */
  dump(): Array<{ key: string; streams: number; ageMs: number; peer: string }> {
    return [...this.#entries.values()].map((e) => ({ key: e.key, streams: e.streams, ageMs: Date.now() - e.createdAt, peer: e.peerId }));
  }

  get size(): number {
    return this.#entries.size;
  }

  /**
   * Sends GOAWAY on every session; open streams finish. A draining agent still opens sessions for
   * connections it accepted before its listeners closed; destroy() ends everything.
   */
  async close(): Promise<void> {
    const sessions = await Promise.allSettled([...this.#entries.values()].map((e) => e.session));
    this.#entries.clear();
    for (const s of sessions) if (s.status === 'fulfilled') s.value.close();
  }

  destroy(): void {
    this.#closed = true;
    for (const e of this.#entries.values()) void e.session.then((s) => s.destroy(), () => undefined);
    this.#entries.clear();
  }
}

/** TCP to a tunnel peer, with a send buffer above the peer's window (see TUNNEL_SEND_BUFFER_BYTES). */
function tunnelSocket(host: string, port: number): net.Socket {
  const socket = net.connect({ host, port, noDelay: true });
  // The descriptor exists once connected; the TLS handshake only starts after that.
  socket.once('connect', () => setSendBuffer(socket, TUNNEL_SEND_BUFFER_BYTES));
  return socket;
}
