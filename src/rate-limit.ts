// Limits shared by the CA and the data path. A token bucket per client: `rate` requests a second on
// average, bursts up to `burst`; the map is bounded: a flood from many addresses evicts the oldest
// idle buckets instead of growing the heap. Slots in all and per source. A log throttle.
export class RateLimiter {
  #rate: number;
  #burst: number;
  readonly #maxKeys: number;
  readonly #now: () => number;
  readonly #buckets = new Map<string, { tokens: number; at: number }>();

  constructor(opts: { ratePerSecond: number; burst: number; maxKeys?: number; now?: () => number }) {
    this.#rate = opts.ratePerSecond;
    this.#burst = opts.burst;
    this.#maxKeys = opts.maxKeys ?? 10_000;
    this.#now = opts.now ?? Date.now;
  }

  /** A new rate and burst from now on (buckets keep their tokens, capped at the new burst on their next take). */
  setRate(ratePerSecond: number, burst: number): void {
    this.#rate = ratePerSecond;
    this.#burst = burst;
  }

  /** Takes one token for `key`: 0 when allowed, else the seconds until one is available. */
  take(key: string): number {
    const now = this.#now();
    let b = this.#buckets.get(key);
    if (b) {
      b.tokens = Math.min(this.#burst, b.tokens + ((now - b.at) / 1000) * this.#rate);
      b.at = now;
      // Re-insert so that Map order is least-recently-used first.
      this.#buckets.delete(key);
    } else {
      b = { tokens: this.#burst, at: now };
      if (this.#buckets.size >= this.#maxKeys) {
        const oldest = this.#buckets.keys().next().value;
        if (oldest !== undefined) this.#buckets.delete(oldest);
      }
    }
    this.#buckets.set(key, b);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return (1 - b.tokens) / this.#rate;
  }
}

/** At most one log line a second per key: a flood must not flood the log. The map is bounded. */
export class LogThrottle {
  readonly #last = new Map<string, number>();
  readonly #everyMs: number;
  constructor(everyMs = 1000) {
    this.#everyMs = everyMs;
  }

  ready(key: string, now = Date.now()): boolean {
    if (now - (this.#last.get(key) ?? 0) < this.#everyMs) return false;
    if (this.#last.size > 10_000) this.#last.clear();
    this.#last.set(key, now);
    return true;
  }
}

export interface Limits {
  maxConnections: number;
  maxPerSource: number;
}

/** Where a SlotLimiter counts: in this thread (a Map), or in memory threads share (proxy/shared-slots.ts). */
export interface SlotCounts {
  /** Takes a slot for `source`, or says which limit is reached (and takes nothing). */
  take(source: string, limits: Limits): 'total' | 'source' | undefined;
  give(source: string): void;
  /** Slots held in all. */
  readonly total: number;
}

class LocalSlotCounts implements SlotCounts {
  readonly #bySource = new Map<string, number>();
  #total = 0;

  get total(): number {
    return this.#total;
  }

  take(source: string, limits: Limits): 'total' | 'source' | undefined {
    const held = this.#bySource.get(source) ?? 0;
    if (this.#total >= limits.maxConnections) return 'total';
    if (held >= limits.maxPerSource) return 'source';
    this.#total++;
    this.#bySource.set(source, held + 1);
    return undefined;
  }

  give(source: string): void {
    this.#total--;
    const n = (this.#bySource.get(source) ?? 1) - 1;
    if (n <= 0) this.#bySource.delete(source); else this.#bySource.set(source, n);
  }
}

/**
 * Slots in all and per source (an address, a node, a tunnel peer's identity): one per thing in
 * progress, released exactly once. Over a limit, the refusal says why, and whether to log it now.
 */
export class SlotLimiter {
  readonly #limits: Limits;
  readonly #counts: SlotCounts;
  readonly #throttle = new LogThrottle();

  constructor(limits: Limits, counts: SlotCounts = new LocalSlotCounts()) {
    this.#limits = limits;
    this.#counts = counts;
  }

  get total(): number {
    return this.#counts.total;
  }

  /**
   * One share for `source` (an address, or a tunnel peer's identity: each tunnel stream holds an
   * upstream socket of its own), or why there is none. Release exactly once.
   */
  acquire(source: string): { release: () => void } | { refused: string; log: boolean } {
    const full = this.#counts.take(source, this.#limits);
    if (full) {
      const refused = full === 'total' ? `the agent holds its maximum of ${this.#limits.maxConnections} connections`
        : `${source} holds its maximum of ${this.#limits.maxPerSource} connections`;
      return { refused, log: this.#throttle.ready(source) };
    }
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.#counts.give(source);
      },
    };
  }
}
