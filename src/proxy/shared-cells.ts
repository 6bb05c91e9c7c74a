// Counters in memory every data-plane worker shares (shared-slots.ts, redirects.ts), each worker's
// own part mirrored in memory of its own. A worker that dies (a bug; workers.ts replaces it) ends
// its connections without giving back what they held: without the mirror, the node's connection
// budget and its sources' counts would stay short of those slots for good, and a source could be
// refused by its limit with nothing open. The control plane subtracts the dead worker's mirror
// from the shared counters (reclaim) before its replacement starts on the same, now empty, mirror.
//
// The shared counters are written by every worker (Atomics); a mirror by its worker alone while it
// runs, and by the control plane once it has exited.

/** Counters per row of a two-row count-min sketch (shared-slots.ts, redirects.ts). */
export const SKETCH_ROW = 1 << 15;

/** FNV-1a, 32 bits, from `seed`. */
function hash(s: string, seed: number): number {
  let h = seed;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** `key`'s counter in each row of a sketch whose rows start at cell `base`: one under each of two hashes. */
export function sketchCells(key: string, base: number): [number, number] {
  return [base + (hash(key, 2166136261) % SKETCH_ROW), base + SKETCH_ROW + (hash(key, 374761393) % SKETCH_ROW)];
}

/** A worker's view of shared counters: what it adds goes to both the shared and its own. */
export class SharedCells {
  readonly #shared: Int32Array;
  readonly #own: Int32Array | undefined;

  /** `own`: the worker's mirror, the same size; none for a data plane that cannot die alone. */
  constructor(shared: ArrayBufferLike, own?: ArrayBufferLike | undefined) {
    this.#shared = new Int32Array(shared);
    this.#own = own ? new Int32Array(own) : undefined;
  }

  /** Adds `delta` to cell `i`; the shared value before. */
  add(i: number, delta: number): number {
    if (this.#own) Atomics.add(this.#own, i, delta);
    return Atomics.add(this.#shared, i, delta);
  }

  load(i: number): number {
    return Atomics.load(this.#shared, i);
  }
}

/** Takes what a worker that exited held out of the shared counters, and empties its mirror. */
export function reclaim(shared: ArrayBufferLike, own: ArrayBufferLike): void {
  const s = new Int32Array(shared);
  const o = new Int32Array(own);
  for (let i = 0; i < o.length; i++) {
    const held = Atomics.exchange(o, i, 0);
    if (held !== 0) Atomics.sub(s, i, held);
  }
}
