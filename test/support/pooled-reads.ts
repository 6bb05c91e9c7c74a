// Sockets the agent makes read into reused buffers and emit no 'data' (src/proxy/read-buffers.ts):
// tests that read such a socket directly take its bytes through this.
import type net from 'node:net';
import { findPooledReads } from '../../src/proxy/read-buffers.ts';

/** Calls `onData` with a copy of each chunk `socket` reads, pooled or not. */
export function onSocketData(socket: net.Socket, onData: (chunk: Buffer) => void): void {
  const reads = findPooledReads(socket);
  if (!reads) { socket.on('data', onData); return; }
  reads.attach((chunk, release) => { onData(Buffer.from(chunk)); release(); return true; });
  socket.resume();
}

/** Everything `socket` reads until its end. */
export async function readToEnd(socket: net.Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const ended = new Promise<void>((resolve, reject) => { socket.once('end', resolve); socket.once('error', reject); });
  onSocketData(socket, (c) => chunks.push(c));
  await ended;
  return Buffer.concat(chunks);
}
