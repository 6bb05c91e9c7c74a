// When to start another data plane, for an agent that runs fewer than its --workers until the
// traffic needs them (--min-workers). Each extra worker thread costs about 20 MiB at rest
// (bench/README.md, "Data-plane workers"), most nodes' traffic keeps one event loop mostly idle,
// and a busy one is what a second would relieve: so the sign is the event-loop utilization of the
// data planes serving (the share of the time each loop spent running rather than waiting), their
// mean over a sampling interval. Busy for `sustainMs` in a row starts one; the next waits at least
// `settleMs`, the time connections take to reach the new one. Pure: the caller samples and starts.

export interface DemandOptions {
  /** Mean utilization, 0-1, from which the data planes count as busy. */
  busyAbove: number;
  /** How long they must stay busy before another starts. */
  sustainMs: number;
  /** How long after a start the next one waits, whatever the load. */
  settleMs: number;
  now: () => number;
}

/** The agent's defaults: busy at half a core for 5 s; 15 s between starts. */
export const DEMAND_DEFAULTS = { busyAbove: 0.5, sustainMs: 5_000, settleMs: 15_000 } as const;

export type Demand = { state: 'quiet' } | { state: 'busy'; since: number };

export class WorkerDemand {
  readonly #opts: DemandOptions;
  #demand: Demand = { state: 'quiet' };
  #lastStart = Number.NEGATIVE_INFINITY;

  constructor(opts: DemandOptions) {
    this.#opts = opts;
  }

  get demand(): Demand {
    return this.#demand;
  }

  /**
   * Takes the utilization of each data plane serving over the last interval; true when one more
   * should start now (the caller starts it: the settling time counts from here).
   */
  shouldStart(utilizations: readonly number[]): boolean {
    const now = this.#opts.now();
    const mean = utilizations.length === 0 ? 0 : utilizations.reduce((a, b) => a + b, 0) / utilizations.length;
    if (!(mean >= this.#opts.busyAbove)) {
      this.#demand = { state: 'quiet' };
      return false;
    }
    if (this.#demand.state === 'quiet') this.#demand = { state: 'busy', since: now };
    if (now - this.#demand.since < this.#opts.sustainMs || now - this.#lastStart < this.#opts.settleMs) return false;
    this.#lastStart = now;
    this.#demand = { state: 'quiet' };
    return true;
  }
}
