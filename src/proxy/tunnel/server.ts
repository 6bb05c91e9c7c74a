// Port 15008: tunnels from other nodes' agents. The TCP connection was addressed to a captured pod
// of this node (REDIRECT rewrote it here), so that pod's identity answers the TLS handshake; the
// client's certificate gives the source identity that policy is evaluated on, never a header.
//
// Each local destination pod has its own (non-listening) HTTP/2 secure server holding that pod's
// certificate; the tunnel listener reads the original destination and hands the raw socket to that
// pod's server with `emit('connection')`. Node's TLS server then enforces the client certificate,
// ALPN and the handshake timeout exactly as for a listening server. Each CONNECT goes to
// handleConnect (../inbound.ts).
import http2 from 'node:http2';
import net from 'node:net';
import type tls from 'node:tls';
import type { X509Certificate } from 'node:crypto';
import type { Logger } from 'pino';
import { plainIp, setSendBuffer } from '../../capture/socket.ts';
import {
  H2ProtocolError, MeshletError, PeerIdentityError, StreamLimitError, TlsHandshakeError, UnknownDestinationError, errorCode,
} from '../../errors.ts';
import { parseWorkloadId } from '../../identity/spiffe.ts';
import type { Workload } from '../../workloads/model.ts';
import type { ProxyContext } from '../context.ts';
import type { ServingCert } from '../identities.ts';
import { handleConnect } from '../inbound.ts';
import { ALPN, h2Settings, SESSION_MEMORY_MB, TUNNEL_SEND_BUFFER_BYTES, peerSpiffeId, WINDOW_BYTES } from './h2.ts';
import { issuedByOneOf, retire, retireAt, sessionDeadline } from './session-life.ts';

interface PodServer {
  server: http2.Http2SecureServer;
  /** Certificate revision the server holds (renewal or a new trust bundle changes it). */
  revision: number;
  target: Workload;
  /** Live sessions: server.close() alone sends no GOAWAY (Node's HTTP/2 server only stops accepting). */
  sessions: Set<http2.ServerHttp2Session>;
}

export class TunnelServer {
  readonly listener: net.Server;
  readonly #byPod = new Map<string, PodServer>();
  readonly #peers = new WeakMap<http2.Http2Session, string>();
  readonly #streams = new WeakMap<http2.Http2Session, { open: number; atLimit: boolean }>();
  /** Each session's peer certificate, checked again when the trust bundle changes. */
  readonly #peerCerts = new WeakMap<http2.Http2Session, X509Certificate>();
  readonly #ctx: ProxyContext;
  /** Sockets in their handshake: the release of their pending slot. */
  readonly #pending = new WeakMap<net.Socket, () => void>();

  constructor(ctx: ProxyContext) {
    this.#ctx = ctx;
    this.listener = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
  }

  accept(raw: net.Socket): void {
    const ctx = this.#ctx;
    raw.on('error', () => { /* reported by the TLS server or the handshake timeout */ });
    // Until its handshake is done a socket is anyone's: it holds a slot of the pending budget, not
    // one of the connections the node's pods need (those it takes once the peer is verified).
    const pending = ctx.admitHandshake(raw);
    if (!pending) return;
    this.#pending.set(raw, pending);
    try {
      const dst = ctx.originalDestination(raw);
      const target = ctx.registry.findWorkload(dst.ip);
      if (!target || !target.captured || !ctx.registry.isLocal(target)) throw new UnknownDestinationError(`${dst.ip}:${dst.port}`);
      const cert = ctx.certs.assertAvailable(target.spiffeId);
      setSendBuffer(raw, TUNNEL_SEND_BUFFER_BYTES);
      this.#serverFor(target, cert).server.emit('connection', raw);
    } catch (err) {
      ctx.log.warn({ component: 'inbound', peer: plainIp(raw.remoteAddress), err: errorCode(err), reason: (err as Error).message },
        'tunnel connection refused before handshake');
      ctx.connections.refused('destination', errorCode(err));
      raw.destroy();
    }
  }

  /** The pod's server, created on first use and rebuilt when its certificate was renewed. */
  #serverFor(target: Workload, cert: ServingCert): PodServer {
    const existing = this.#byPod.get(target.ip);
    if (existing && existing.revision === cert.revision && existing.target === target) return existing;
    if (existing && existing.target.spiffeId === target.spiffeId) {
      // Renewal or root rotation: new handshakes use the new material, established sessions keep going.
      existing.server.setSecureContext({ key: cert.privateKeyPem, cert: cert.certChainPem, ca: cert.trustBundlePem, minVersion: 'TLSv1.3' });
      existing.revision = cert.revision;
      existing.target = target;
      return existing;
    }
    const log = this.#ctx.log.child({ component: 'inbound', pod: `${target.namespace}/${target.name}` });
    const server = http2.createSecureServer({
      key: cert.privateKeyPem,
      cert: cert.certChainPem,
      ca: cert.trustBundlePem,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.3',
      ALPNProtocols: [ALPN],
      allowHTTP1: false,
      handshakeTimeout: this.#ctx.handshakeTimeoutMs,
      settings: h2Settings,
      maxSessionMemory: SESSION_MEMORY_MB,
    });
    const entry: PodServer = { server, revision: cert.revision, target, sessions: new Set() };
    const refuse = (err: MeshletError, peer: string | undefined, msg: string) => {
      log.warn({ err: err.code, reason: err.message, peer }, msg);
      this.#ctx.connections.refused('destination', err.code);
    };
    server.on('tlsClientError', (err, socket) => refuse(new TlsHandshakeError(err.message), plainIp(socket.remoteAddress), 'tunnel handshake refused'));
    // Handshake done: the socket leaves the pending budget for the connections' (node's TLS wraps
    // the raw socket it was handed, as `_parent`).
    server.on('secureConnection', (secure: tls.TLSSocket) => {
      const raw = rawSocketOf(secure);
      const release = raw && this.#pending.get(raw);
      if (!raw || !release) return;
      this.#pending.delete(raw);
      release();
      if (!this.#ctx.admit(raw)) secure.destroy();
    });
    server.on('unknownProtocol', (socket: tls.TLSSocket) => {
      refuse(new PeerIdentityError(`peer negotiated ALPN ${String(socket.alpnProtocol)}, not ${ALPN}`), plainIp(socket.remoteAddress), 'tunnel peer did not negotiate h2');
      socket.destroy();
    });
    server.on('session', (session) => {
      entry.sessions.add(session);
      session.once('close', () => entry.sessions.delete(session));
      const peerAddress = plainIp(session.socket?.remoteAddress);
      session.on('error', (err: NodeJS.ErrnoException) => {
        // A peer that vanished (reset) is not a protocol breach; HTTP/2 errors are.
        if (String(err.code ?? '').startsWith('ERR_HTTP2')) refuse(new H2ProtocolError(err.message), peerAddress, 'tunnel session broke the protocol');
        else log.debug({ err: err.message, peer: peerAddress }, 'tunnel session error');
        // The session is over, and so is its connection: nothing a peer sends after a breach is read.
        if (!session.destroyed) session.destroy();
      });
      session.on('frameError', (type, code) => {
        refuse(new H2ProtocolError(`frame type ${type} error ${code}`), peerAddress, 'tunnel session broke the protocol');
        if (!session.destroyed) session.destroy();
      });
      const socket = session.socket as tls.TLSSocket;
      let peerId: string;
      let peerCert: X509Certificate;
      try {
        ({ id: peerId, cert: peerCert } = verifiedPeer(socket, this.#ctx, entry.target));
        this.#peers.set(session, peerId);
      } catch (err) {
        log.warn({ err: errorCode(err), reason: (err as Error).message }, 'tunnel peer refused');
        this.#ctx.connections.refused('destination', errorCode(err));
        session.destroy();
        return;
      }
      this.#peerCerts.set(session, peerCert);
      const raw = rawSocketOf(socket);
      if (raw) this.#ctx.stalls.watch(raw, session, peerId);
      // No CONNECT after either certificate of the handshake has expired (session-life.ts).
      retireAt(session, sessionDeadline(socket, peerCert), this.#ctx.drainMs, () =>
        log.info({ peer: this.#peers.get(session), peerAddress }, 'tunnel session retired: a certificate of its handshake expired (GOAWAY)'));
      session.once('remoteSettings', () => { if (!session.destroyed) session.setLocalWindowSize(WINDOW_BYTES); });
    });
    server.on('stream', (stream, headers) => {
      const session = stream.session as http2.Http2Session;
      const peerId = this.#peers.get(session);
      if (!peerId) {
        // Node reports our own reset as the stream's 'error'; unheard, it would end the process.
        stream.on('error', () => {});
        stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
        return;
      }
      // The session's first CONNECT caused its handshake (telemetry/overhead.ts).
      const first = !this.#streams.has(session);
      this.#countStream(session, stream, log);
      void handleConnect(stream, headers, { peerId, target: entry.target, handshake: first }, this.#ctx);
    });
    this.#byPod.set(target.ip, entry);
    return entry;
  }

  /**
   * nghttp2 refuses streams beyond SETTINGS_MAX_CONCURRENT_STREAMS by itself, before Node sees them,
   * so the refusals cannot be counted one by one. What can be seen is a session reaching the limit:
   * that is logged and counted once per episode (a peer ignoring SETTINGS floods right there).
   */
  #countStream(session: http2.Http2Session, stream: http2.ServerHttp2Stream, log: Logger): void {
    const state = this.#streams.get(session) ?? { open: 0, atLimit: false };
    this.#streams.set(session, state);
    state.open++;
    stream.once('close', () => {
      state.open--;
      if (state.open < h2Settings.maxConcurrentStreams) state.atLimit = false;
    });
    if (state.open >= h2Settings.maxConcurrentStreams && !state.atLimit) {
      state.atLimit = true;
      const err = new StreamLimitError(h2Settings.maxConcurrentStreams);
      log.warn({ err: err.code, reason: err.message, peer: plainIp(session.socket?.remoteAddress) }, 'tunnel session at its stream limit');
      this.#ctx.connections.refused('destination', err.code);
    }
  }

  /** Drops servers of pods that are no longer local and captured. */
  prune(): void {
    for (const [ip, entry] of this.#byPod) {
      const w = this.#ctx.registry.findWorkload(ip);
      if (!w || !w.captured || !this.#ctx.registry.isLocal(w) || w.spiffeId !== entry.target.spiffeId) {
        entry.server.close();
        this.#byPod.delete(ip);
      }
    }
  }

  /**
   * After a trust bundle change: sessions whose peer certificate no longer chains to a trusted root
   * are retired (GOAWAY, destroyed after the drain). Returns how many.
   */
  recheckRoots(): number {
    let retired = 0;
    for (const entry of this.#byPod.values()) {
      let roots: X509Certificate[];
      try {
        roots = this.#ctx.certs.assertAvailable(entry.target.spiffeId).roots;
      } catch {
        continue; // no certificate of our own: no new handshake either, and nothing to check against
      }
      for (const session of entry.sessions) {
        const peer = this.#peerCerts.get(session);
        if (!peer || issuedByOneOf(peer, roots)) continue;
        retired++;
        retire(session, this.#ctx.drainMs, () => this.#ctx.log.info({ component: 'inbound', peer: this.#peers.get(session) },
          'tunnel session retired: its peer certificate\'s root left the trust bundle (GOAWAY)'));
      }
    }
    return retired;
  }

  /** GOAWAY to every tunnel session so peers open new ones elsewhere; open streams finish. */
  close(): void {
    for (const entry of this.#byPod.values()) {
      entry.server.close();
      // GOAWAY: the peer sends new connections to a new session (on the agent that replaces this
      // one); streams already open keep flowing until they end or the drain period runs out.
      for (const session of entry.sessions) session.close();
    }
  }
}

/**
 * Defence in depth on top of the TLS server's own verification: the client chain ends at one of our
 * roots, is within its validity, and names exactly one SPIFFE ID in our trust domain.
 */
function verifiedPeer(socket: tls.TLSSocket, ctx: ProxyContext, target: Workload): { id: string; cert: X509Certificate } {
  if (socket.alpnProtocol !== ALPN) throw new PeerIdentityError(`peer did not negotiate ALPN ${ALPN}`);
  const peer = socket.getPeerX509Certificate();
  if (!peer) throw new PeerIdentityError('peer presented no client certificate');
  const { roots } = ctx.certs.assertAvailable(target.spiffeId);
  if (!roots.some((root) => peer.checkIssued(root) && peer.verify(root.publicKey))) {
    throw new PeerIdentityError('peer certificate is not signed by a trusted root');
  }
  const now = Date.now();
  if (now < Date.parse(peer.validFrom) || now > Date.parse(peer.validTo)) throw new PeerIdentityError('peer certificate is outside its validity period');
  const id = peerSpiffeId(socket);
  if (!id) throw new PeerIdentityError('peer certificate must carry exactly one SPIFFE ID');
  parseWorkloadId(id, ctx.registry.trustDomain);
  return { id, cert: peer };
}

/** The TCP socket under a TLS socket that Node's TLS server wrapped (it keeps it as `_parent`). */
function rawSocketOf(secure: tls.TLSSocket): net.Socket | undefined {
  return (secure as tls.TLSSocket & { _parent?: net.Socket })._parent;
}
