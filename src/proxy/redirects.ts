// The redirected connections this agent holds open (ports 15001 and 15006), by their original
// 4-tuple. Each has a NAT entry in the kernel. A source-preserving delivery must not reuse one of
// those 4-tuples: its SYN would be taken for a packet of the redirected connection and redirected
// back to the agent (see openTransparentSocket). Entries of closed connections need no tracking: a
// SYN that meets a closed or TIME_WAIT conntrack entry starts a new connection. Each data plane
// knows its own only, and not the connections still in the kernel's accept queue: deliveries'
// ports lie outside the pods' ephemeral range (--source-ports), and this is the check for
// clients whose ports fall inside it anyway.

export class OpenRedirects {
  readonly #open = new Map<string, number>();

  /** Records an open redirected connection; call the returned function when it closes. */
  add(srcIp: string, srcPort: number, dstIp: string, dstPort: number): () => void {
    const key = tupleKey(srcIp, srcPort, dstIp, dstPort);
    this.#open.set(key, (this.#open.get(key) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.#open.get(key) ?? 1) - 1;
      if (n > 0) this.#open.set(key, n); else this.#open.delete(key);
    };
  }

  has(srcIp: string, srcPort: number, dstIp: string, dstPort: number): boolean {
    return this.#open.has(tupleKey(srcIp, srcPort, dstIp, dstPort));
  }

  get size(): number {
    return this.#open.size;
  }
}

function tupleKey(srcIp: string, srcPort: number, dstIp: string, dstPort: number): string {
  return `${srcIp}:${srcPort}>${dstIp}:${dstPort}`;
}
