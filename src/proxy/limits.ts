// Connection limits on the listeners that face other hosts (15006, 15008) and the pods (15001): a
// total, so a flood cannot exhaust the agent's file descriptors, and one per source address, so one
// noisy or hostile source cannot take the share of the others. Tunnel streams count too (each holds
// an upstream socket), per source identity: many streams on one session are many connections.
// Over the limit a connection is reset at once (a stream gets 503), counted, and logged at most
// once a second per source.
import type net from 'node:net';
import { plainIp } from '../capture/socket.ts';
import { HandshakeRateError } from '../errors.ts';
import { LogThrottle, RateLimiter, type SlotCounts, SlotLimiter, type Limits } from '../rate-limit.ts';

export type { Limits };

/** Connection limits on one listener (or a group of them), in all and per source address. */
export class ConnectionLimiter extends SlotLimiter {
  /**
   * Admits the socket (released when it closes) or says why not. `onRefused` is told the source
   * and whether it should be logged now (once a second per source).
   */
  admit(socket: net.Socket, onRefused: (source: string, reason: string, log: boolean) => void): boolean {
    const source = plainIp(socket.remoteAddress);
    const slot = this.acquire(source);
    if ('refused' in slot) {
      onRefused(source, slot.refused, slot.log);
      socket.resetAndDestroy();
      return false;
    }
    socket.once('close', slot.release);
    return true;
  }
}

/**
 * The tunnel port's gate for sockets still in their mTLS handshake. Until it is done a socket is
 * anyone's, so it holds a slot of a budget of its own (in all and per source), not one of the
 * connections the node's pods need, and each source may start `ratePerSecond` handshakes a second
 * (a token bucket, bursts of twice that): each costs an RSA signature on the one event loop.
 */
export class HandshakeGate {
  readonly #pending: SlotLimiter;
  readonly #rate: RateLimiter;
  #perSecond: number;
  readonly #throttle = new LogThrottle();

  constructor(opts: { maxPending: number; maxPendingPerSource: number; ratePerSecond: number; counts?: SlotCounts }) {
    this.#pending = new SlotLimiter({ maxConnections: opts.maxPending, maxPerSource: opts.maxPendingPerSource }, opts.counts);
    this.#rate = new RateLimiter({ ratePerSecond: opts.ratePerSecond, burst: 2 * opts.ratePerSecond });
    this.#perSecond = opts.ratePerSecond;
  }

  /** Each source's rate from now on (a worker's share changes with the number of workers). */
  setRate(perSecond: number): void {
    this.#rate.setRate(perSecond, 2 * perSecond);
    this.#perSecond = perSecond;
  }

  /**
   * The release of the socket's pending slot (also released when it closes), or undefined when it
   * was refused and reset; `onRefused` is told the error code and, once a second per source, why.
   */
  admit(socket: net.Socket, onRefused: (code: string, source: string, reason: string | undefined) => void): (() => void) | undefined {
    const source = plainIp(socket.remoteAddress);
    let code: string | undefined;
    let reason: string | undefined;
    if (this.#rate.take(source) > 0) {
      const err = new HandshakeRateError(source, this.#perSecond);
      code = err.code;
      if (this.#throttle.ready(source)) reason = err.message;
    } else {
      const slot = this.#pending.acquire(source);
      if (!('refused' in slot)) {
        socket.once('close', slot.release);
        return slot.release;
      }
      code = 'connection_limit';
      if (slot.log) reason = `sockets in their handshake: ${slot.refused}`;
    }
    onRefused(code, source, reason);
    socket.resetAndDestroy();
    return undefined;
  }
}
