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
import { SharedCells, SKETCH_ROW, sketchCells } from './shared-cells.ts';

/** The memory a SharedSlotCounts works in: the total, then two rows. 256 KiB. */
export function sharedSlotMemory(): SharedArrayBuffer {
  return new SharedArrayBuffer(4 * (1 + 2 * SKETCH_ROW));
}

export class SharedSlotCounts implements SlotCounts {
  readonly #cells: SharedCells;
  readonly #between: () => void;

  /**
   * `own`: this worker's mirror of what it holds (shared-cells.ts); `between`, for tests: runs
   * between a take's two increments, where another worker's take may.
   */
  constructor(memory: SharedArrayBuffer, opts: { own?: SharedArrayBuffer | undefined; between?: () => void } = {}) {
    this.#cells = new SharedCells(memory, opts.own);
    this.#between = opts.between ?? (() => undefined);
  }

  get total(): number {
    return this.#cells.load(0);
  }

  take(source: string, limits: Limits): 'total' | 'source' | undefined {
    const c = this.#cells;
    if (c.add(0, 1) >= limits.maxConnections) {
      c.add(0, -1);
      return 'total';
    }
    const [i, j] = sketchCells(source, 1);
    c.add(i, 1);
    this.#between();
    c.add(j, 1);
    // What the source holds besides this take, as both counters say now (see above).
    const held = Math.min(c.load(i), c.load(j)) - 1;
    if (held >= limits.maxPerSource) {
      this.give(source);
      return 'source';
    }
    return undefined;
  }

  give(source: string): void {
    const [i, j] = sketchCells(source, 1);
    const c = this.#cells;
    c.add(0, -1);
    c.add(i, -1);
    c.add(j, -1);
  }
}
