// Copies bytes both ways between two duplex ends (TCP sockets or HTTP/2 CONNECT streams).
//  - backpressure: a slow reader pauses the fast writer, no buffer grows unbounded;
//  - an end (FIN / END_STREAM) on one side ends the other side's writable half only (half-close);
//  - an abnormal end (RST, stream reset, error, destroy before a clean finish) resets the other side.
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import http2 from 'node:http2';
import { resetSocket } from '../capture/socket.ts';
import { IdleTimeoutError } from '../errors.ts';
import type { ConnectionHandle } from '../telemetry/connections.ts';
import { findPooledReads, type PooledReads } from './read-buffers.ts';
import { freshChunks } from './young-collection.ts';

export interface RelayEnd {
  stream: Duplex;
  /** Abortive close: TCP RST for sockets, RST_STREAM for HTTP/2 streams. */
  reset(): void;
  /** Whether the stream closed cleanly (no error, no reset received). */
  closedCleanly(): boolean;
  /** Whether the stream has failed: an error, a reset received, an aborted HTTP/2 stream. */
  failed(): boolean;
  /** Set when the stream is a socket reading into reused buffers (read-buffers.ts): no 'data' events. */
  reads?: PooledReads;
}

export interface RelayResult {
  /** Bytes read from `a` and written to `b`. */
  aToB: number;
  bToA: number;
  /** Which side ended abnormally first, if any. */
  abortedBy?: 'a' | 'b';
  error?: Error;
  /** Nothing flowed either way for the idle timeout: the agent reset both ends. */
  idleMs?: number;
}

/**
 * Relays a connection that policy let through, counting its bytes into its record, and closes the
 * record with how it ended. Every route ends here.
 */
export async function relayConnection(conn: ConnectionHandle, client: RelayEnd, upstream: RelayEnd, idleMs: number | undefined): Promise<void> {
  conn.established();
  // A re-check that now refuses the connection ends it like an abort on both sides.
  conn.onTerminate(() => { client.reset(); upstream.reset(); });
  const result = await relay(client, upstream, (sent, received, woke) => {
    conn.info.bytesSent += sent;
    conn.info.bytesReceived += received;
    // A chunk after a pause woke the agent for this connection (telemetry/overhead.ts prices it).
    if (woke) conn.info.wakeups++;
  }, { idleMs });
  conn.close(outcomeOf(result));
}

/** How a relayed connection ended, for its record: an idle timeout is a typed error, an abort a reset. */
export function outcomeOf(result: RelayResult): { error?: Error; reset?: boolean } {
  if (result.idleMs !== undefined) return { error: new IdleTimeoutError(result.idleMs) };
  return { reset: result.abortedBy !== undefined };
}

export function socketEnd(socket: Socket): RelayEnd {
  let errored = false;
  socket.on('error', () => { errored = true; });
  return {
    stream: socket,
    reads: findPooledReads(socket),
    reset: () => resetSocket(socket),
    closedCleanly: () => !errored && socket.readableEnded && socket.writableFinished,
    failed: () => errored,
  };
}

export function h2StreamEnd(stream: http2.Http2Stream): RelayEnd {
  let errored = false;
  stream.on('error', () => { errored = true; });
  stream.on('aborted', () => { errored = true; });
  return {
    stream,
    reset: () => { if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_CANCEL); },
    closedCleanly: () => !errored && (stream.rstCode === undefined || stream.rstCode === http2.constants.NGHTTP2_NO_ERROR) &&
      stream.readableEnded && stream.writableFinished,
    failed: () => errored,
  };
}

/**
 * Copies `from`'s bytes into `to` with backpressure, counting them. Its end is not forwarded here:
 * an end is forwarded as a half-close only when it is a real one (relay). An HTTP/2 stream whose
 * session died emits 'aborted' and then 'end'; forwarding that as FIN would tell the application
 * its peer finished cleanly.
 */
function forward(from: RelayEnd, to: RelayEnd, count: (bytes: number) => void): void {
  // A full `to` stops reading until 'drain'.
  let waiting = false;
  const resume = () => { waiting = false; from.stream.resume(); };
  const write = (chunk: Buffer, release?: () => void): boolean => {
    count(chunk.length);
    if (to.stream.write(chunk, release)) return true;
    if (!waiting) { waiting = true; to.stream.once('drain', resume); }
    return false;
  };
  const reads = from.reads;
  if (!reads) {
    // One 'data' listener, not pipe's and a counter's: a chunk's turn is most of a request's CPU at
    // keep-alive rates (bench/README.md, "CPU per request"). Each chunk is a buffer of its own,
    // dead once written: young-collection.ts frees them every few MiB.
    from.stream.on('data', (chunk: Buffer) => { freshChunks.note(chunk.length); if (!write(chunk)) from.stream.pause(); });
    return;
  }
  // A pooled socket hands over each chunk with the buffer's release, which the write's callback
  // calls once the bytes have left (or the write failed).
  reads.attach(write);
  if (!waiting) from.stream.resume();
}

/** `onBytes` is told each chunk's bytes and whether it came after a pause of a millisecond or more (a wake-up). */
export function relay(a: RelayEnd, b: RelayEnd, onBytes?: (aToB: number, bToA: number, woke: boolean) => void, opts: { idleMs?: number } = {}): Promise<RelayResult> {
  return new Promise((resolve) => {
    const result: RelayResult = { aToB: 0, bToA: 0 };
    let closedA = false;
    let closedB = false;
    // Idle timeout: one coarse timer per connection, checking a timestamp the data handlers move,
    // instead of re-arming a timer on every chunk.
    let lastActivity = Date.now();
    let idleTimer: NodeJS.Timeout | undefined;
    if (opts.idleMs) {
      const idleMs = opts.idleMs;
      idleTimer = setInterval(() => {
        if (Date.now() - lastActivity < idleMs) return;
        clearInterval(idleTimer);
        result.idleMs = idleMs;
        a.reset();
        b.reset();
      }, Math.max(250, Math.floor(idleMs / 4))).unref();
    }

    // One clock read per chunk serves the idle timer and the wake-up count.
    let lastChunk = 0;
    const chunk = (aToB: number, bToA: number) => {
      const now = Date.now();
      const woke = now - lastChunk >= 1;
      lastChunk = lastActivity = now;
      result.aToB += aToB;
      result.bToA += bToA;
      onBytes?.(aToB, bToA, woke);
    };
    forward(a, b, (n) => chunk(n, 0));
    forward(b, a, (n) => chunk(0, n));
    a.stream.once('end', () => { if (!a.failed() && !b.stream.writableEnded) b.stream.end(); });
    b.stream.once('end', () => { if (!b.failed() && !a.stream.writableEnded) a.stream.end(); });

    const onError = (err: Error) => { result.error ??= err; };
    a.stream.on('error', onError);
    b.stream.on('error', onError);

    const onClose = (side: 'a' | 'b') => () => {
      const self = side === 'a' ? a : b;
      const other = side === 'a' ? b : a;
      if (side === 'a' ? closedA : closedB) return;
      if (side === 'a') closedA = true; else closedB = true;
      // A clean close already forwarded its end (the 'end' handlers above); only aborts remain.
      if (!self.closedCleanly()) {
        result.abortedBy ??= side;
        other.reset();
      }
      if (closedA && closedB) {
        if (idleTimer) clearInterval(idleTimer);
        resolve(result);
      }
    };
    a.stream.once('close', onClose('a'));
    b.stream.once('close', onClose('b'));
    // An end that left while the other was being set up (a client that reset while the agent
    // connected upstream, a CONNECT cancelled while the pod answered) may have closed already: its
    // 'close' will not come again, and the other end would stay open until the idle timeout.
    if (a.stream.destroyed) onClose('a')();
    if (b.stream.destroyed) onClose('b')();
  });
}
