// The pods' TCP sockets are read into buffers the agent reuses, not into a fresh one per read.
//
// Why: Node reads a socket by allocating a new 64 KiB buffer outside V8's heap for every read. On a
// bulk transfer those arrive much faster than the young generation fills, so scavenges are rare
// and V8 answers the growing external memory with full mark-compacts of the whole heap, which cost
// the sending agent of a bulk transfer a large share of its CPU (bench/README.md, "What these say",
// bulk).
//
// How: a socket made with Node's `onread` option reads into whatever buffer it is handed and calls
// back with the byte count, instead of emitting 'data'. Node asks for the next buffer as soon as a
// read is done, so every socket always holds one; a quiet socket must not pin 64 KiB of its own.
// Sockets therefore read into one shared scratch buffer, and what lands there is copied out at
// once; only a read that filled a whole buffer (more is surely queued) earns its socket a pooled
// buffer for the next read, which then goes on without a copy. A pooled buffer comes back when the
// write that carried it is done (`release`), never earlier: until then the kernel or HTTP/2 may
// still read from it.
import net from 'node:net';

export const READ_BUFFER_BYTES = 64 * 1024;
/** Free buffers kept for reuse; beyond this they are left to the GC (2 MiB). */
const KEEP_FREE = 32;
/** Reads up to this size are copied into Node's shared 8 KiB slabs rather than a pooled buffer. */
const SMALL_READ_BYTES = 4 * 1024;

const free: Buffer[] = [];
let allocated = 0;
// One buffer every quiet socket reads into. Sharing it is safe: libuv allocates, reads and calls
// back for one socket at a time, and the callback copies out what arrived before it returns.
const scratch = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);

function take(): Buffer {
  const buf = free.pop();
  if (buf) return buf;
  allocated++;
  return Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
}

/** How many pooled buffers were ever allocated, and how many wait for reuse now. */
export function readBufferStats(): { allocated: number; free: number } {
  return { allocated, free: free.length };
}

/** Hands `buf` back once; a second call is ignored (one buffer in the free list twice would be shared). */
function releaser(buf: Buffer): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    if (free.length < KEEP_FREE) free.push(buf);
  };
}

const noop = () => {};

/**
 * Where a socket's bytes go. `release` must be called once nothing refers to `chunk` any more (a
 * write's callback); returning false stops reading until the socket is resumed.
 */
export type ReadSink = (chunk: Buffer, release: () => void) => boolean;

/** One socket's reads: chunks wait here (and reading pauses) until a sink is attached. */
export class PooledReads {
  #sink: ReadSink | undefined;
  #early: Array<[Buffer, () => void]> = [];
  #streaming = false;

  /** The `onread` option for `new net.Socket` / `net.connect`. */
  readonly onread = {
    buffer: (): Buffer => (this.#streaming ? take() : scratch),
    callback: (n: number, buf: Buffer): boolean => this.#read(n, buf),
  };

  #read(n: number, buf: Buffer): boolean {
    let chunk: Buffer;
    let release = noop;
    if (buf !== scratch) {
      chunk = buf.subarray(0, n);
      release = releaser(buf);
    } else if (n <= SMALL_READ_BYTES) {
      chunk = Buffer.from(scratch.subarray(0, n));
    } else {
      const own = take();
      scratch.copy(own, 0, 0, n);
      chunk = own.subarray(0, n);
      release = releaser(own);
    }
    this.#streaming = n === buf.length;
    const sink = this.#sink;
    if (!sink) {
      this.#early.push([chunk, release]);
      return false;
    }
    return sink(chunk, release);
  }

  /**
   * Sends what was read so far to `sink`, then everything from now on. Reading stays paused until
   * the caller resumes the socket (once `sink` wants more).
   */
  attach(sink: ReadSink): void {
    this.#sink = sink;
    for (const [chunk, release] of this.#early.splice(0)) sink(chunk, release);
  }
}

const readsOf = new WeakMap<net.Socket, PooledReads>();

/** The pooled reads of `socket`, if it was made by this module. */
export function findPooledReads(socket: net.Socket): PooledReads | undefined {
  return readsOf.get(socket);
}

/** A socket made by `make` with the `onread` option of new pooled reads, registered. */
function withPooledReads(make: (onread: PooledReads['onread']) => net.Socket): net.Socket {
  const reads = new PooledReads();
  const socket = make(reads.onread);
  readsOf.set(socket, reads);
  return socket;
}

/** A new TCP socket on `fd` (unconnected) that reads through the pool. */
export function pooledSocketOnFd(fd: number): net.Socket {
  return withPooledReads((onread) => new net.Socket({ fd, allowHalfOpen: true, readable: true, writable: true, onread }));
}

/** An outgoing TCP connection that reads through the pool. */
export function pooledConnect(host: string, port: number): net.Socket {
  return withPooledReads((onread) => net.connect({ host, port, allowHalfOpen: true, noDelay: true, onread }));
}

/**
 * An accepted connection moved into a socket that reads through the pool. The server must have
 * been made with `pauseOnConnect`, so the socket Node accepted never read. Node has no option for
 * `onread` on accepted sockets; moving the handle into a new Socket is how Node itself hands
 * connections on (child_process), and test/proxy/read-buffers.test.ts checks that it still works.
 * Should the handle be missing, the accepted socket is returned as it is (reads as usual).
 */
export function adoptForPooledReads(accepted: net.Socket): net.Socket {
  const holder = accepted as unknown as { _handle: unknown };
  const handle = holder._handle;
  if (!handle) return accepted;
  const socket = withPooledReads((onread) => new net.Socket({ handle, allowHalfOpen: true, readable: true, writable: true, noDelay: true, onread } as unknown as net.SocketConstructorOpts));
  holder._handle = null;
  // The old wrapper goes without its handle: the server's connection count drops, the connection
  // stays open in the new socket.
  accepted.destroy();
  return socket;
}
