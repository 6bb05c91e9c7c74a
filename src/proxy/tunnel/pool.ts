// Client side of the tunnel: mTLS HTTP/2 sessions per (source identity, destination pod), shared by
// the app connections between them, so handshakes happen once per pair, not once per connection.
// A session carries at most STREAMS_PER_SESSION connections (what the peer advertises); past that
// the pool opens another session for the pair rather than queue connections behind a full one.
import http2 from 'node:http2';
import tls from 'node:tls';
import type { X509Certificate } from 'node:crypto';
import type { Logger } from 'pino';
import { PeerIdentityError, TunnelRejectedError, UpstreamConnectError } from '../../errors.ts';
import type { StallWatch } from './stall-watch.ts';
import { issuedByOneOf, retire, retireAt, sessionDeadline } from './session-life.ts';
import { ALPN, formatAuthority, formatForwardedFor, formatTraceparent, h2Settings, refusedAtConnect, SESSION_MEMORY_MB, spiffeIdOf, tunnelPeerProblem, tunnelSocket, WINDOW_BYTES, uriSans } from './h2.ts';

export interface TunnelTarget {
  /** IP of the destination pod: the tunnel goes to its port 15008, where its node's agent answers. */
  podIp: string;
  port: number;
  /** The identity the destination must prove; undefined: an address the table lacks (outbound.ts), any of the trust domain. */
  expectedPeerId: string | undefined;
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
  /** How long a retired session may finish its streams after GOAWAY before it is destroyed (--drain). */
  drainMs: number;
  /** Resets sessions whose peer stopped reading (stall-watch.ts). */
  stalls: StallWatch;
}

/** Connections one session carries at most: the stream limit every agent advertises. */
export const STREAMS_PER_SESSION = h2Settings.maxConcurrentStreams;

interface PoolEntry {
  key: string;
  session: Promise<http2.ClientHttp2Session>;
  /** Streams open or being opened on it (a slot is taken before the session is even up). */
  streams: number;
  createdAt: number;
  /** What the session was opened to prove: an identity, or `*` (any of the trust domain). */
  peerId: string;
  /** The session, once established (lets a going-away session be forgotten synchronously). */
  resolved?: http2.ClientHttp2Session;
  /**
   * Past this (ms since the epoch), half the life its certificates had left at the handshake, it
   * takes no new connection: each connection gets at least that long before the session ends.
   */
  freshUntil?: number;
  /** Set until a connection on it is answered: that one caused its handshake (telemetry/overhead.ts). */
  unclaimed?: boolean;
}

/** Retries of a connection the peer never saw. Four: the old agent's listeners close one thread at
 * a time, and on a busy node a fresh session can land on a draining one again (issue 22 part 5). */
const MAX_RETRIES = 4;
/** The first pause before a stream refused by a draining peer is tried again; doubled each time. */
const NEVER_SEEN_RETRY_MS = 25;
/** The pause before a connection refused at TCP connect is tried again. */
const REFUSED_RETRY_MS = 100;

/** Sessions are pooled per source identity, destination address, and what the peer had to prove. */
function poolKey(sourceId: string, target: TunnelTarget): string {
  return target.expectedPeerId === undefined ? `${sourceId}|${target.podIp}|*` : `${sourceId}|${target.podIp}`;
}

/** A stream the peer never processed, on a session that is going away: retried on a fresh session. */
class NeverSeenError extends Error {
  readonly session: http2.ClientHttp2Session;
  override readonly cause: Error;
  constructor(session: http2.ClientHttp2Session, cause: Error) { super(cause.message); this.session = session; this.cause = cause; }
}

export class TunnelPool {
  /** Sessions per (source identity, destination pod). */
  readonly #entries = new Map<string, PoolEntry[]>();
  readonly #opts: TunnelPoolOptions;
  readonly #log: Logger;
  /** Each session's peer certificate and the pair it serves, checked again when the trust bundle changes. */
  readonly #peerCerts = new WeakMap<http2.ClientHttp2Session, { key: string; sourceId: string; cert: X509Certificate; id: string | undefined }>();
  readonly #opened = new WeakSet<http2.ClientHttp2Stream>();
  /** When each session's certificates end (session-life.ts). */
  readonly #deadlines = new WeakMap<http2.ClientHttp2Session, number>();
  #closed = false;

  constructor(opts: TunnelPoolOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ component: 'tunnel-pool' });
  }

  /**
   * Opens a CONNECT stream to `target` as `sourceId`; resolves once the peer answered 200. What the
   * peer never saw is retried, four times at most, so an agent upgrade on either side loses no
   * connection: a stream refused by a session going away (GOAWAY, REFUSED_STREAM) on a fresh
   * session, and a new session refused at TCP connect (the peer's listeners handing over between
   * the old agent and the new one) after REFUSED_RETRY_MS.
   */
  async connect(sourceId: string, target: TunnelTarget): Promise<http2.ClientHttp2Stream> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#connectOnce(sourceId, target);
      } catch (err) {
        const neverSeen = err instanceof NeverSeenError;
        // Refused at connect where no agent is known to answer: nothing captures it (outbound.ts).
        const retry = neverSeen || (refusedAtConnect(err) && target.expectedPeerId !== undefined);
        if (attempt > MAX_RETRIES || !retry) throw neverSeen ? err.cause : err;
        if (neverSeen) {
          this.#log.debug({ podIp: target.podIp, reason: err.message }, 'stream refused by a session going away; retrying on a new session');
          this.#forget(poolKey(sourceId, target), err.session);
          // The first retry at once (a fresh session usually reaches the new agent), then paced.
          if (attempt > 1) await new Promise((r) => setTimeout(r, NEVER_SEEN_RETRY_MS * 2 ** (attempt - 2)));
        } else {
          this.#log.debug({ podIp: target.podIp, reason: (err as Error).message }, 'tunnel connection refused; retrying');
          await new Promise((r) => setTimeout(r, REFUSED_RETRY_MS));
        }
      }
    }
  }

  /** Drops the pool's entry that holds this session, if it still has one. */
  #forget(key: string, session: http2.ClientHttp2Session): void { this.#drop(key, (e) => e.resolved === session); }

  #drop(key: string, which: (e: PoolEntry) => boolean): void {
    const list = this.#entries.get(key);
    if (!list) return;
    const rest = list.filter((e) => !which(e));
    if (rest.length === 0) this.#entries.delete(key); else this.#entries.set(key, rest);
  }

  async #connectOnce(sourceId: string, target: TunnelTarget): Promise<http2.ClientHttp2Stream> {
    const entry = this.#entry(sourceId, target);
    let released = false;
    const release = () => { if (!released) { released = true; entry.streams--; } };
    let session: http2.ClientHttp2Session;
    try {
      session = await entry.session;
    } catch (err) {
      release();
      throw err;
    }
    if (session.closed || session.destroyed) {
      release();
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
      release();
      // ERR_HTTP2_GOAWAY_SESSION / ERR_HTTP2_INVALID_SESSION: the session went away under us.
      throw new NeverSeenError(session, new TunnelRejectedError(undefined, (err as Error).message));
    }
    let answered = false;
    stream.once('close', release);
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
      // REFUSED_STREAM is the peer saying it never processed the stream (RFC 9113 §8.7): safe to
      // retry. Node reports it as an 'error' (ERR_HTTP2_STREAM_ERROR) before 'close', so both look.
      const unanswered = (reason: string) => {
        const refused = new TunnelRejectedError(undefined, reason);
        settle(stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM ? new NeverSeenError(session, refused) : refused);
      };
      stream.once('error', (err) => unanswered(err.message));
      stream.once('close', () => {
        // Every stream closes in the end: build the error only for one that closed unanswered.
        if (!answered) unanswered(`stream closed before an answer (code ${stream.rstCode})`);
      });
      stream.once('response', (headers) => {
        const status = Number(headers[':status']);
        settle(status === 200 ? undefined
          : new TunnelRejectedError(status, String(headers['x-meshlet-error'] ?? 'refused by peer agent')));
      });
    });
    if (entry.unclaimed) { entry.unclaimed = false; this.#opened.add(stream); }
    return stream;
  }

  /** A session of the pair with a free slot, or a new one; the slot is taken here (release it). */
  #entry(sourceId: string, target: TunnelTarget): PoolEntry {
    const key = poolKey(sourceId, target);
    const now = Date.now();
    // A session in the second half of its life goes: GOAWAY, its streams finish on it.
    for (const stale of (this.#entries.get(key) ?? []).filter((e) => e.freshUntil !== undefined && now >= e.freshUntil)) {
      this.#drop(key, (e) => e === stale);
      stale.resolved?.close();
    }
    const list = this.#entries.get(key) ?? [];
    let entry = list.find((e) => e.streams < STREAMS_PER_SESSION);
    if (!entry) {
      const created: PoolEntry = {
        key, streams: 0, createdAt: Date.now(), peerId: target.expectedPeerId ?? '*', unclaimed: true,
        session: this.#open(sourceId, target, key),
      };
      // A failed session attempt is forgotten at once so the next connection tries again.
      created.session.then((s) => {
        created.resolved = s;
        const deadline = this.#deadlines.get(s);
        if (deadline !== undefined) created.freshUntil = created.createdAt + (deadline - created.createdAt) / 2;
      }, () => this.#drop(key, (e) => e === created));
      this.#entries.set(key, [...list, created]);
      entry = created;
    }
    entry.streams++;
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
      const raw = tunnelSocket(target.podIp, this.#opts.tunnelPort);
      const session = http2.connect(authority, {
        settings: h2Settings,
        maxSessionMemory: SESSION_MEMORY_MB,
        createConnection: () => tls.connect({
          socket: raw,
          secureContext,
          ALPNProtocols: [ALPN],
          minVersion: 'TLSv1.3',
          // The peer proves the destination workload's identity, not a host name.
          checkServerIdentity: (_host, cert) => {
            const problem = tunnelPeerProblem(cert.subjectaltname, target.expectedPeerId, sourceId);
            return problem ? (identityError = new PeerIdentityError(`tunnel peer ${target.podIp} ${problem}`)) : undefined;
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
        const socket = session.socket as tls.TLSSocket;
        const peer = socket.getPeerX509Certificate();
        this.#log.debug({ key, peer: peer ? uriSans(peer) : [] }, 'tunnel session established');
        const peerId = peer && spiffeIdOf(peer);
        if (peer) this.#peerCerts.set(session, { key, sourceId, cert: peer, id: peerId });
        // Not past either certificate of its handshake (session-life.ts): new connections then open
        // a new session, with the renewed certificates.
        const deadline = sessionDeadline(socket, peer);
        this.#deadlines.set(session, deadline);
        this.#opts.stalls.watch(raw, session, target.expectedPeerId ?? peerId ?? '');
        retireAt(session, deadline, this.#opts.drainMs, () => {
          this.#log.info({ key }, 'tunnel session retired: a certificate of its handshake expired');
          this.#forget(key, session);
        });
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

  /**
   * After a trust bundle change: sessions whose peer certificate no longer chains to a root that
   * `sourceId`'s bundle trusts are forgotten and retired (GOAWAY, destroyed after the drain).
   */
  recheckRoots(rootsFor: (sourceId: string) => readonly X509Certificate[] | undefined): number {
    let retired = 0;
    for (const e of this.#all()) {
      const session = e.resolved;
      const peer = session && this.#peerCerts.get(session);
      const roots = peer && rootsFor(peer.sourceId);
      if (!session || !peer || !roots || issuedByOneOf(peer.cert, roots)) continue;
      retired++;
      this.#forget(peer.key, session);
      retire(session, this.#opts.drainMs, () => this.#log.info({ key: peer.key }, 'tunnel session retired: its peer certificate\'s root left the trust bundle'));
    }
    return retired;
  }

  /** Who `stream`'s peer proved to be (Node hands a client its peer's certificate once), and whether it opened its session. */
  streamInfo(stream: http2.ClientHttp2Stream): { peerId?: string | undefined; openedSession: boolean } {
    const peer = stream.session && this.#peerCerts.get(stream.session as http2.ClientHttp2Session);
    return { peerId: peer?.id, openedSession: this.#opened.has(stream) };
  }

  /** Pool state for /config_dump. */
  dump(): Array<{ key: string; streams: number; ageMs: number; peer: string }> {
    return this.#all().map((e) => ({ key: e.key, streams: e.streams, ageMs: Date.now() - e.createdAt, peer: e.peerId }));
  }

  /** Sessions held (a pair with more than STREAMS_PER_SESSION connections has several). */
  get size(): number {
    return this.#all().length;
  }

  #all(): PoolEntry[] {
    return [...this.#entries.values()].flat();
  }

  /**
   * Sends GOAWAY on every session; open streams finish. A draining agent still opens sessions for
   * connections it accepted before its listeners closed; destroy() ends everything.
   */
  async close(): Promise<void> {
    const sessions = await Promise.allSettled(this.#all().map((e) => e.session));
    this.#entries.clear();
    for (const s of sessions) if (s.status === 'fulfilled') s.value.close();
  }

  destroy(): void {
    this.#closed = true;
    for (const e of this.#all()) void e.session.then((s) => s.destroy(), () => undefined);
    this.#entries.clear();
  }
}
