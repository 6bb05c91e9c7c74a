// A tunnel session lives no longer than the certificates it was opened with. TLS checks a
// certificate once, at the handshake; an HTTP/2 session then carries new CONNECTs for as long as it
// stays up, so without an end of its own a session outlived its client certificate (new CONNECTs
// were accepted after expiry) and a root removed from the trust bundle. Both ends retire their
// sessions: GOAWAY first (no new streams; the pool opens a new session with fresh certificates), and
// after the drain period the session is destroyed, resetting whatever still runs on it.
import type http2 from 'node:http2';
import type { TLSSocket } from 'node:tls';
import type { X509Certificate } from 'node:crypto';

/** Node's timers hold at most 2^31-1 ms; a certificate valid longer is re-armed on the way. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The earlier end of validity of the session's two certificates (ours and the peer's), in ms since
 * the epoch. `peer`: the peer's certificate, read by the caller (on a client socket Node returns it
 * from getPeerX509Certificate() only once; a second call gives undefined).
 */
export function sessionDeadline(socket: TLSSocket, peer: X509Certificate | undefined): number {
  const ends = [peer, socket.getX509Certificate()]
    .filter((c): c is X509Certificate => c !== undefined)
    .map((c) => Date.parse(c.validTo));
  return ends.length > 0 ? Math.min(...ends) : Date.now();
}

/** Whether `cert` was issued (and signed) by one of `roots`. */
export function issuedByOneOf(cert: X509Certificate, roots: readonly X509Certificate[]): boolean {
  return roots.some((root) => cert.checkIssued(root) && cert.verify(root.publicKey));
}

/**
 * Sends GOAWAY on `session` now (close: streams in flight go on, no new ones) and destroys it
 * after `drainMs` if anything still runs on it. `why` is told once, before the GOAWAY.
 */
export function retire(session: http2.Http2Session, drainMs: number, why?: () => void): void {
  if (session.destroyed) return;
  why?.();
  // A session closed already (GOAWAY sent, streams finishing) is destroyed after the drain all the same.
  if (!session.closed) session.close();
  const timer = setTimeout(() => { if (!session.destroyed) session.destroy(); }, drainMs);
  timer.unref();
  session.once('close', () => clearTimeout(timer));
}

/** Retires `session` at `deadline` (ms since the epoch); returns the function that cancels it. */
export function retireAt(session: http2.Http2Session, deadline: number, drainMs: number, why?: () => void): () => void {
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    const left = deadline - Date.now();
    if (left <= 0) { retire(session, drainMs, why); return; }
    timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
    timer.unref();
  };
  arm();
  const cancel = () => { if (timer) clearTimeout(timer); };
  session.once('close', cancel);
  return cancel;
}
