// Connection limits on the listeners that face other hosts (15006, 15008) and the pods (15001): a
// total, so a flood cannot exhaust the agent's file descriptors, and one per source address, so one
// noisy or hostile source cannot take the share of the others. Tunnel streams count too (each holds
// an upstream socket), per source identity: many streams on one session are many connections.
// Over the limit a connection is reset at once (a stream gets 503), counted, and logged at most
// once a second per source.
import type net from 'node:net';
import { plainIp } from '../capture/socket.ts';

export interface Limits {
  maxConnections: number;
  maxPerSource: number;
}

export class ConnectionLimiter {
  readonly #limits: Limits;
  readonly #bySource = new Map<string, number>();
  #total = 0;
  readonly #lastLogged = new Map<string, number>();

  constructor(limits: Limits) {
    this.#limits = limits;
  }

  get total(): number {
    return this.#total;
  }

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

  /**
   * One connection's share for `source` (an address, or a tunnel peer's identity: each tunnel stream
   * holds an upstream socket of its own), or why there is none. Release exactly once.
   */
  acquire(source: string): { release: () => void } | { refused: string; log: boolean } {
    const held = this.#bySource.get(source) ?? 0;
    const reason = this.#total >= this.#limits.maxConnections ? `the agent holds its maximum of ${this.#limits.maxConnections} connections`
      : held >= this.#limits.maxPerSource ? `${source} holds its maximum of ${this.#limits.maxPerSource} connections` : undefined;
    if (reason) {
      const now = Date.now();
      const log = now - (this.#lastLogged.get(source) ?? 0) >= 1000;
      if (log) {
        this.#lastLogged.set(source, now);
        if (this.#lastLogged.size > 10_000) this.#lastLogged.clear();
      }
      return { refused: reason, log };
    }
    this.#total++;
    this.#bySource.set(source, held + 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.#total--;
        const n = (this.#bySource.get(source) ?? 1) - 1;
        if (n <= 0) this.#bySource.delete(source); else this.#bySource.set(source, n);
      },
    };
  }
}
