// Slot counts every data-plane worker of the node shares (rate-limit.ts SlotCounts), so that
// --max-connections and the per-source limits hold for the node, whichever worker the kernel
// handed a connection to. Memory a SharedArrayBuffer holds: the total, and per source a count-min
// sketch (two rows of counters, each source adding to one counter per row under two hashes). A
// source's count is the smaller of its two counters: never below the truth, above it only when
// both counters are shared with other busy sources, which refuses early and never lets through
// more than the limit. Atomics throughout: a slot is taken first and given back if over the limit,
// so two workers racing for the last slot may both refuse, never both succeed. A take decides on
// both counters read after both its own increments, not on what each increment returned: the
// two increments are not one step, and a take that ran whole between them (another worker's)
// would see the first counter without it and the second with it, and each would let itself in.
import type { Limits, SlotCounts } from '../rate-limit.ts';

const ROW = 1 << 15;

/** The memory a SharedSlotCounts works in: the total, then two rows. 256 KiB. */
export function sharedSlotMemory(): SharedArrayBuffer {
  return new SharedArrayBuffer(4 * (1 + 2 * ROW));
}

/** FNV-1a, 32 bits, from `seed`. */
export function hash(s: string, seed: number): number {
  let h = seed;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

export class SharedSlotCounts implements SlotCounts {
  readonly #a: Int32Array;
  readonly #between: () => void;

  /** `between`, for tests: runs between a take's two increments, where another worker's take may. */
  constructor(memory: SharedArrayBuffer, between: () => void = () => undefined) {
    this.#a = new Int32Array(memory);
    this.#between = between;
  }

  get total(): number {
    return Atomics.load(this.#a, 0);
  }

  #cells(source: string): [number, number] {
    return [1 + (hash(source, 2166136261) % ROW), 1 + ROW + (hash(source, 374761393) % ROW)];
  }

  take(source: string, limits: Limits): 'total' | 'source' | undefined {
    const a = this.#a;
    if (Atomics.add(a, 0, 1) >= limits.maxConnections) {
      Atomics.sub(a, 0, 1);
      return 'total';
    }
    const [i, j] = this.#cells(source);
    Atomics.add(a, i, 1);
    this.#between();
    Atomics.add(a, j, 1);
    // What the source holds besides this take, as both counters say now (see above).
    const held = Math.min(Atomics.load(a, i), Atomics.load(a, j)) - 1;
    if (held >= limits.maxPerSource) {
      this.give(source);
      return 'source';
    }
    return undefined;
  }

  give(source: string): void {
    const [i, j] = this.#cells(source);
    Atomics.sub(this.#a, 0, 1);
    Atomics.sub(this.#a, i, 1);
    Atomics.sub(this.#a, j, 1);
  }
}
