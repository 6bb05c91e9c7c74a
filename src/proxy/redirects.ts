// The redirected connections this agent holds open (ports 15001 and 15006), by their original
// 4-tuple. Each has a NAT entry in the kernel. A source-preserving delivery must not reuse one of
// those 4-tuples: its SYN would be taken for a packet of the redirected connection and redirected
// back to the agent (see openTransparentSocket). Entries of closed connections need no tracking: a
// SYN that meets a closed or TIME_WAIT conntrack entry starts a new connection. Deliveries' ports
// lie outside the pods' ephemeral range (--source-ports): this is the check for clients whose
// ports fall inside it anyway (a pod that widened its range), and it cannot see connections still
// in the kernel's accept queue.
//
// Kept as a counting filter in memory every data-plane worker shares (the kernel hands a pod's
// connections to any worker, and any worker may deliver for it): two rows of counters, each tuple
// adding to one counter per row under two hashes; a tuple is open while both its counters are
// above zero. A false "open" costs a delivery another port, never a wrong connection.
import { SharedCells, SKETCH_ROW, sketchCells } from './shared-cells.ts';

const BYTES = 4 * 2 * SKETCH_ROW;

/** The memory OpenRedirects instances of several workers share: 256 KiB. */
export function sharedRedirectMemory(): SharedArrayBuffer {
  return new SharedArrayBuffer(BYTES);
}

export class OpenRedirects {
  readonly #a: SharedCells;

  /**
   * `memory`: shared with other workers (sharedRedirectMemory), by default this instance's own;
   * `own`: this worker's mirror of what it added (shared-cells.ts).
   */
  constructor(memory: ArrayBufferLike = new ArrayBuffer(BYTES), own?: ArrayBufferLike | undefined) {
    this.#a = new SharedCells(memory, own);
  }

  /** Records an open redirected connection; call the returned function when it closes. */
  add(srcIp: string, srcPort: number, dstIp: string, dstPort: number): () => void {
    const [i, j] = cells(srcIp, srcPort, dstIp, dstPort);
    this.#a.add(i, 1);
    this.#a.add(j, 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#a.add(i, -1);
      this.#a.add(j, -1);
    };
  }

  has(srcIp: string, srcPort: number, dstIp: string, dstPort: number): boolean {
    const [i, j] = cells(srcIp, srcPort, dstIp, dstPort);
    return this.#a.load(i) > 0 && this.#a.load(j) > 0;
  }
}

function cells(srcIp: string, srcPort: number, dstIp: string, dstPort: number): [number, number] {
  return sketchCells(`${srcIp}:${srcPort}>${dstIp}:${dstPort}`, 0);
}
