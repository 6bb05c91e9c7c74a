// A tunnel socket's kernel send buffer is forced above the peer's HTTP/2 window (h2.ts), so a peer
// that stops reading TCP pins that much kernel memory per session, for as long as it likes, and a
// peer with many sessions pins it many times over. Legitimate peers always read (both ends keep
// reading whatever their pods do: flow control, not TCP, is what slows a stream down), so data that
// waits in the send queue while the peer acknowledges nothing means the peer has stopped reading.
// Such a session is reset after the stall timeout; and while the send queues of all tunnel sockets
// together hold more than the node's budget, the stalled ones are reset at once, largest first.
// The reset (SO_LINGER 0) discards the queue: a plain close would leave it to the kernel to deliver.
import type net from 'node:net';
import type { SendProgress } from '../../capture/socket.ts';

export type StallReason = 'stalled' | 'queue_budget';

export interface StallWatchOptions {
  /** Reset a socket whose queued data has seen no acknowledgement for this long. */
  stallMs: number;
  /** What the send queues of all watched sockets may hold together before stalled ones are reset. */
  budgetBytes: number;
  /** How often the queues are read. */
  intervalMs: number;
  /** The socket's send queue and acknowledged bytes; undefined once closed (capture/socket.ts). */
  probe(socket: net.Socket): SendProgress | undefined;
  /** Resets the socket, discarding its send queue (capture/socket.ts resetSocket). */
  reset(socket: net.Socket): void;
  /** Told of each session reset, before it is: for the log and the metrics. */
  onStall(reason: StallReason, peer: string, queuedBytes: number): void;
  now?: () => number;
}

/** What a watched socket carries: its HTTP/2 session, ended with it. */
export interface WatchedSession {
  destroy(): void;
}

interface Watched {
  session: WatchedSession;
  peer: string;
  acked: bigint;
  queued: number;
  /** Since when the queue has held data with no acknowledgement (undefined: it is moving). */
  stalledSince: number | undefined;
}

export class StallWatch {
  readonly #opts: StallWatchOptions;
  readonly #now: () => number;
  readonly #sockets = new Map<net.Socket, Watched>();
  #timer: NodeJS.Timeout | undefined;

  constructor(opts: StallWatchOptions) {
    this.#opts = { ...opts };
    this.#now = opts.now ?? Date.now;
  }

  /** Watches a tunnel socket (the TCP one under TLS) and its session until the socket closes. */
  watch(socket: net.Socket, session: WatchedSession, peer: string): void {
    if (socket.destroyed) return;
    this.#sockets.set(socket, { session, peer, acked: -1n, queued: 0, stalledSince: undefined });
    socket.once('close', () => this.#forget(socket));
    if (!this.#timer) {
      this.#timer = setInterval(() => this.check(), this.#opts.intervalMs);
      this.#timer.unref();
    }
  }

  /** The budget from the next check on (a worker's share changes with the number of workers). */
  setBudget(bytes: number): void {
    this.#opts.budgetBytes = bytes;
  }

  /** Bytes queued on all watched sockets at the last check. */
  get queuedBytes(): number {
    let total = 0;
    for (const w of this.#sockets.values()) total += w.queued;
    return total;
  }

  get size(): number {
    return this.#sockets.size;
  }

  /** One pass over the watched sockets (the timer calls it; tests may too). */
  check(): void {
    const now = this.#now();
    let total = 0;
    for (const [socket, w] of this.#sockets) {
      const p = this.#opts.probe(socket);
      if (!p) { this.#forget(socket); continue; }
      const moving = p.queued === 0 || p.acked !== w.acked;
      w.stalledSince = moving ? undefined : (w.stalledSince ?? now);
      w.acked = p.acked;
      w.queued = p.queued;
      total += p.queued;
    }
    for (const [socket, w] of [...this.#sockets]) {
      if (w.stalledSince !== undefined && now - w.stalledSince >= this.#opts.stallMs) {
        total -= w.queued;
        this.#end(socket, w, 'stalled');
      }
    }
    if (total <= this.#opts.budgetBytes) return;
    const stalled = [...this.#sockets].filter(([, w]) => w.stalledSince !== undefined).sort((a, b) => b[1].queued - a[1].queued);
    for (const [socket, w] of stalled) {
      if (total <= this.#opts.budgetBytes) break;
      total -= w.queued;
      this.#end(socket, w, 'queue_budget');
    }
  }

  #end(socket: net.Socket, w: Watched, reason: StallReason): void {
    this.#forget(socket);
    this.#opts.onStall(reason, w.peer, w.queued);
    this.#opts.reset(socket);
    w.session.destroy();
  }

  #forget(socket: net.Socket): void {
    this.#sockets.delete(socket);
    if (this.#sockets.size === 0 && this.#timer) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }

  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#sockets.clear();
  }
}
