// A tunnel framer of our own, for measurement only (the `framed-relay` path of `npm run bench`):
// application connections as streams on one mutual-TLS connection, each chunk one frame with
// HTTP/2's 9-byte header (length, type, flags, stream id). No HPACK (a stream opens with its target
// port), no SETTINGS or PING, and no per-stream windows: a target that stops reading pauses the
// whole connection. What it answers: how much of node:http2's cost per request a framer written in
// JavaScript on the TLS socket would save meshlet's tunnel (bench/README.md, "Which layer costs
// what"). Payload is cut through: a frame split across TLS reads is forwarded as it comes.
import type net from 'node:net';
import type tls from 'node:tls';

const DATA = 0;
const OPEN = 1;
const RESET = 3;
const END_STREAM = 1;
const HEADER_BYTES = 9;
const EMPTY = Buffer.alloc(0);

interface Stream { app: net.Socket; sentEnd: boolean; gotEnd: boolean }

export class FramedTunnel {
  readonly #socket: tls.TLSSocket;
  readonly #onOpen: ((port: number) => net.Socket) | undefined;
  readonly #streams = new Map<number, Stream>();
  #nextId = 1;
  // The frame being read: its header (assembled when split across reads) and what is left of it.
  readonly #header = Buffer.alloc(HEADER_BYTES);
  #headerHave = 0;
  #left = 0;
  #type = 0;
  #flags = 0;
  #id = 0;
  #control: Buffer[] = [];
  // Application sockets waiting for the tunnel to drain, and how many targets the tunnel waits on.
  readonly #waiting = new Set<net.Socket>();
  #blocked = 0;

  /** `onOpen` (the exit's side) connects a stream the peer opened to its target port. */
  constructor(socket: tls.TLSSocket, onOpen?: (port: number) => net.Socket) {
    this.#socket = socket;
    this.#onOpen = onOpen;
    socket.on('data', (chunk: Buffer) => this.#read(chunk));
    socket.on('drain', () => {
      for (const app of this.#waiting) app.resume();
      this.#waiting.clear();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      for (const s of this.#streams.values()) s.app.destroy();
      this.#streams.clear();
    });
  }

  get closed(): boolean {
    return this.#socket.destroyed;
  }

  /** Carries `app` to the peer's target `port` on a new stream. */
  open(port: number, app: net.Socket): void {
    const id = this.#nextId;
    this.#nextId += 2;
    const preamble = Buffer.allocUnsafe(2);
    preamble.writeUInt16BE(port);
    this.#send(OPEN, 0, id, preamble);
    this.#attach(id, app);
  }

  #attach(id: number, app: net.Socket): void {
    const stream: Stream = { app, sentEnd: false, gotEnd: false };
    this.#streams.set(id, stream);
    app.on('data', (chunk: Buffer) => {
      if (!this.#send(DATA, 0, id, chunk)) {
        app.pause();
        this.#waiting.add(app);
      }
    });
    app.on('end', () => {
      stream.sentEnd = true;
      this.#send(DATA, END_STREAM, id, EMPTY);
    });
    app.on('error', () => undefined);
    app.on('close', () => {
      this.#waiting.delete(app);
      if (this.#streams.get(id) !== stream) return;
      this.#streams.delete(id);
      if (!(stream.sentEnd && stream.gotEnd)) this.#send(RESET, 0, id, EMPTY);
    });
  }

  #send(type: number, flags: number, id: number, payload: Buffer): boolean {
    if (this.#socket.destroyed) return true;
    const frame = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
    frame.writeUIntBE(payload.length, 0, 3);
    frame[3] = type;
    frame[4] = flags;
    frame.writeUInt32BE(id, 5);
    payload.copy(frame, HEADER_BYTES);
    return this.#socket.write(frame);
  }

  #read(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      if (this.#left === 0) {
        const n = Math.min(HEADER_BYTES - this.#headerHave, chunk.length - off);
        chunk.copy(this.#header, this.#headerHave, off, off + n);
        this.#headerHave += n;
        off += n;
        if (this.#headerHave < HEADER_BYTES) return;
        this.#headerHave = 0;
        this.#left = this.#header.readUIntBE(0, 3);
        this.#type = this.#header[3]!;
        this.#flags = this.#header[4]!;
        this.#id = this.#header.readUInt32BE(5);
        if (this.#left === 0) this.#frameEnd();
        continue;
      }
      const n = Math.min(this.#left, chunk.length - off);
      const part = chunk.subarray(off, off + n);
      off += n;
      this.#left -= n;
      if (this.#type === DATA) this.#data(part);
      else this.#control.push(part);
      if (this.#left === 0) this.#frameEnd();
    }
  }

  #data(part: Buffer): void {
    const stream = this.#streams.get(this.#id);
    if (!stream || stream.app.write(part)) return;
    this.#blocked += 1;
    this.#socket.pause();
    stream.app.once('drain', () => {
      this.#blocked -= 1;
      if (this.#blocked === 0) this.#socket.resume();
    });
  }

  #frameEnd(): void {
    const id = this.#id;
    if (this.#type === OPEN && this.#onOpen) {
      const port = Buffer.concat(this.#control).readUInt16BE(0);
      this.#attach(id, this.#onOpen(port));
    } else if (this.#type === RESET) {
      const stream = this.#streams.get(id);
      this.#streams.delete(id);
      stream?.app.destroy();
    }
    this.#control = [];
    const stream = this.#streams.get(id);
    if (stream && this.#type === DATA && this.#flags & END_STREAM) {
      stream.gotEnd = true;
      stream.app.end();
    }
  }
}
